"""Mesh commands of the ``meshd`` CLI: peers, identity, trust, untrust, trusted, pair.

Like every client command they only talk to the daemon's control API; the daemon
owns the identity key and the trust store.
"""

from __future__ import annotations

from typing import Any

import click
from rich.text import Text

from meshd.api.client import Client
from meshd.api.wire import DEFAULT_PAIRING_TTL
from meshd.cli.app import EXIT_OK, cli, client_options, console, json_option, print_json, run_client
from meshd.cli.render import identity_table, peers_table, trusted_table
from meshd.cli.sanitize import clean


@cli.command(section="mesh")
@json_option
@client_options
def peers(as_json: bool, **opts: Any) -> None:
    """The peers this node knows."""

    async def run(client: Client) -> int:
        found = await client.peers()
        if as_json:
            print_json({"peers": found})
        elif not found:
            console.print("no peers")
        else:
            console.print(peers_table(found, console.width))
        return EXIT_OK

    run_client(opts, run)


@cli.command(section="mesh")
@json_option
@client_options
def identity(as_json: bool, **opts: Any) -> None:
    """This node's identity: the fingerprint peers trust it by."""

    async def run(client: Client) -> int:
        info = await client.request("GET", "/identity")
        if as_json:
            print_json(info)
        else:
            console.print(identity_table(info))
        return EXIT_OK

    run_client(opts, run)


@cli.command(section="mesh")
@click.argument("fingerprint")
@click.option("--address", metavar="HOST:PORT", help="Where to reach it (else mDNS finds it).")
@click.option("--name", default="", help="A name to show for it.")
@click.option(
    "--send-work/--no-send-work",
    default=True,
    help="It may send compiles to this node [yes].",
)
@click.option(
    "--build-for-me/--no-build-for-me",
    default=True,
    help="This node may send it compiles (with your configurations and secrets) [yes].",
)
@json_option
@client_options
def trust(
    fingerprint: str,
    address: str | None,
    name: str,
    send_work: bool,
    build_for_me: bool,
    as_json: bool,
    **opts: Any,
) -> None:
    """Trust a peer by FINGERPRINT (as `meshd identity` shows it there), like SSH known hosts."""

    async def run(client: Client) -> int:
        body = {
            "fingerprint": fingerprint,
            "address": address,
            "name": name,
            "may_send_work": send_work,
            "may_build_for_me": build_for_me,
        }
        peer = (await client.request("POST", "/trust", body))["trusted"]
        if as_json:
            print_json(peer)
        else:
            roles = [
                r for r, on in (("send work", send_work), ("build for me", build_for_me)) if on
            ]
            console.print(
                Text(
                    f"trusted {clean(peer['fingerprint'][:16])} ({', '.join(roles) or 'no roles'})"
                )
            )
            for line in role_lines(send_work=send_work, build_for_me=build_for_me):
                console.print(line, markup=False, highlight=False)
        return EXIT_OK

    run_client(opts, run)


@cli.command(section="mesh")
@click.argument("fingerprint")
@client_options
def untrust(fingerprint: str, **opts: Any) -> None:
    """Stop trusting a peer; its open session is closed."""

    async def run(client: Client) -> int:
        removed = (await client.request("DELETE", f"/trust/{fingerprint.replace(' ', '')}"))[
            "removed"
        ]
        console.print(Text(f"no longer trusting {clean(removed[:16])}"))
        return EXIT_OK

    run_client(opts, run)


@cli.command(name="trusted", section="mesh")
@json_option
@client_options
def trusted(as_json: bool, **opts: Any) -> None:
    """The trust store: peers this node trusts, and for what."""

    async def run(client: Client) -> int:
        peers = (await client.request("GET", "/trust"))["trusted"]
        if as_json:
            print_json({"trusted": peers})
            return EXIT_OK
        console.print(trusted_table(peers, console.width) if peers else "no trusted peers")
        return EXIT_OK

    run_client(opts, run)


def role_lines(*, send_work: bool, build_for_me: bool) -> list[str]:
    """What a trust role really grants, one line each (docs/SECURITY.md)."""
    lines = []
    if send_work:
        lines.append(
            "note: sending work here lets that peer run code on this node (in the build "
            "sandbox: its own tree, the network, resource limits); see docs/SECURITY.md"
        )
    if build_for_me:
        lines.append(
            "note: building for you gives that peer your configurations with their secrets, "
            "and you flash what it returns; see docs/SECURITY.md"
        )
    return lines


@cli.group(section="mesh")
def pair() -> None:
    """Pair two nodes with a one-time code (for headless machines)."""


@pair.command(name="open")
@click.option(
    "--ttl", type=float, default=DEFAULT_PAIRING_TTL, show_default=True, help="Window in seconds."
)
@json_option
@client_options
def pair_open(ttl: float, as_json: bool, **opts: Any) -> None:
    """On the receiver: open a pairing window and print its one-time code."""

    async def run(client: Client) -> int:
        window = await client.request("POST", "/pair/open", {"ttl": ttl})
        if as_json:
            print_json(window)
        else:
            console.print(Text("pairing code: ") + Text(clean(window["code"]), style="bold"))
            console.print(
                f"on the offloader, within {window['expires_in']:.0f} s: "
                f"meshd pair join THIS-HOST:{window['peer_port']} {window['code']}",
                highlight=False,
            )
            for line in role_lines(send_work=True, build_for_me=False):
                console.print(line, markup=False, highlight=False)
        return EXIT_OK

    run_client(opts, run)


@pair.command(name="join")
@click.argument("address", metavar="HOST:PORT")
@click.argument("code")
@json_option
@client_options
def pair_join(address: str, code: str, as_json: bool, **opts: Any) -> None:
    """On the offloader: pair with the receiver at HOST:PORT using its CODE."""

    async def run(client: Client) -> int:
        peer = (await client.request("POST", "/pair/join", {"address": address, "code": code}))[
            "trusted"
        ]
        if as_json:
            print_json(peer)
        else:
            name = clean(peer["name"] or "?")
            console.print(Text(f"paired: now trusting {name} ({clean(peer['fingerprint'][:16])})"))
            for line in role_lines(send_work=False, build_for_me=True):
                console.print(line, markup=False, highlight=False)
        return EXIT_OK

    run_client(opts, run)
