"""``meshd cache stats`` and ``meshd cache clear``: the daemon's compile cache.

The daemon owns the cache directories (``<data>/ccache``); these commands only ask
its control API (``/api/v1/cache``), like every client command.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from meshd.api.client import Client
from meshd.cli.app import EXIT_OK, cli, client_options, console, json_option, print_json, run_client


def _size(value: Any) -> str:
    number = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if number < 1024 or unit == "GiB":
            return f"{number:.0f} {unit}" if unit == "B" else f"{number:.1f} {unit}"
        number /= 1024
    return str(value)  # pragma: no cover


def _rate(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0%}"


def _show(report: dict[str, Any]) -> None:
    if not report.get("enabled"):
        console.print("the compile cache is off (meshd serve --no-compile-cache)")
        return
    console.print(f"directory: {report['directory']}")
    console.print(f"size:      {_size(report['size_bytes'])} of {_size(report['max_size'])} each")
    console.print(
        f"lookups:   {report['hits']} hits, {report['misses']} misses "
        f"({_rate(report['hit_rate'])} hit rate), {report['remote_hits']} from the mesh"
    )
    table = Table("cache", "size", "files", "hits", "misses", "hit rate", box=None)
    for entry in report.get("caches", []):
        table.add_row(
            entry["name"],
            _size(entry["size_bytes"]),
            str(entry["files"]),
            str(entry["hits"]),
            str(entry["misses"]),
            _rate(entry["hit_rate"]),
        )
    if report.get("caches"):
        console.print(table)


@cli.group()
def cache() -> None:
    """The compile cache (ccache under every compile)."""


@cache.command()
@json_option
@client_options
def stats(as_json: bool, **opts: Any) -> None:
    """Size, hits and misses of the compile cache (the node's own and per offloader)."""

    async def run(client: Client) -> int:
        report = await client.request("GET", "/cache")
        if as_json:
            print_json(report)
        else:
            _show(report)
        return EXIT_OK

    run_client(opts, run)


@cache.command()
@json_option
@client_options
def clear(as_json: bool, **opts: Any) -> None:
    """Empty every compile cache directory and zero its counters."""

    async def run(client: Client) -> int:
        report = await client.request("POST", "/cache/clear")
        if as_json:
            print_json(report)
        else:
            console.print("compile cache cleared")
        return EXIT_OK

    run_client(opts, run)
