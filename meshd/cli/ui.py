"""``meshd ui``: a one-time login link for the status page (and ``--open`` opens it).

The link carries a login ticket, not the API token: the daemon spends the ticket
once, sets an HttpOnly session cookie and redirects to ``/``, so the browser's address
bar and history never hold the token (docs/OPERATIONS.md, "The status page").
"""

from __future__ import annotations

import webbrowser
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from meshd.api.client import Client
from meshd.cli.app import EXIT_OK, cli, client_options, console, json_option, print_json, run_client

# A wildcard bind is no address a browser can open; loopback reaches it from here.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}  # noqa: S104


def page_base(api_url: str, host: str | None = None) -> str:
    """The page's origin: the API URL, with ``host`` (a LAN name or address for a phone)
    in place of its host, and a wildcard bind replaced by loopback."""
    parts = urlsplit(api_url)
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    if host:
        hostname = f"[{host}]" if ":" in host and not host.startswith("[") else host
    hostname = _WILDCARDS.get(hostname, hostname)
    netloc = f"{hostname}:{parts.port}" if parts.port else hostname
    return urlunsplit((parts.scheme or "http", netloc, "", "", ""))


@cli.command()
@click.option("--open", "open_browser", is_flag=True, help="Open the link in a web browser.")
@click.option(
    "--host",
    metavar="NAME",
    help="Use this host in the link, e.g. the node's LAN address for a phone "
    "(the daemon must listen there: --api 0.0.0.0:6055).",
)
@json_option
@client_options
def ui(open_browser: bool, host: str | None, as_json: bool, **opts: Any) -> None:
    """Print a login link for the status page (good once, for two minutes)."""

    async def run(client: Client) -> int:
        ticket = await client.request("POST", "/ui/tickets")
        base = page_base(client.endpoint.url, host)
        url = f"{base}{ticket['login_path']}"
        if as_json:
            print_json({"url": url, "page": f"{base}/", "expires_in": ticket["expires_in"]})
        else:
            console.print(url, highlight=False, soft_wrap=True)
            console.print(
                f"[dim]good once, for {ticket['expires_in']:.0f} s; the page is {base}/[/dim]",
                highlight=False,
            )
        if open_browser and not webbrowser.open(url):
            console.print("[yellow]no browser found here; open the link yourself[/yellow]")
        return EXIT_OK

    run_client(opts, run)
