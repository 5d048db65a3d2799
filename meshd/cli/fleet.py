"""Fleet commands: ``devices``, ``update``, a many-configuration ``install``, ``artifacts``.

They talk to ``GET /api/v1/devices`` (the daemon's device monitor and config hashes)
and ``POST /api/v1/installs`` (a chain per configuration, one request). ``update``
prints one line each time a device's install moves on, then a summary table, and
exits 0 only if every selected device was flashed or deferred as asked (its upload
armed, waiting for the device to announce itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
from rich.table import Table
from rich.text import Text

from meshd.api.client import Client, DaemonUnreachable, EventStream
from meshd.cli.app import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    cli,
    client_options,
    console,
    json_option,
    print_json,
    run_client,
)
from meshd.cli.jobs import submit_install
from meshd.cli.sanitize import clean

POLL_INTERVAL = 0.25
"""Seconds between looks at the followed jobs when the events stream is not available."""
RESYNC_INTERVAL = 5.0
"""Seconds without a relevant event before a full look (a missed event costs no more)."""
# Events that never move an install from one phase to another.
_QUIET_EVENTS = frozenset({"job_output", "job_progress", "lane_status", "peer_changed"})

_TERMINAL = {"completed", "failed", "cancelled"}


def _abs(path: Path) -> str:
    # The daemon does not share our working directory: send absolute paths.
    return str(path.expanduser().absolute())


async def fetch_devices(client: Client, directories: tuple[Path, ...]) -> dict[str, Any]:
    query = urlencode([("dir", _abs(d)) for d in directories])
    result: dict[str, Any] = await client.request(
        "GET", "/devices" + (f"?{query}" if query else "")
    )
    return result


def _flashed(flash: object) -> Text:
    """The esphome of the build meshd last flashed, and who built it (``2026.6.5 by
    desktop``); ``?`` when that upload has no build record."""
    if not isinstance(flash, dict):
        return Text("—")
    version = flash.get("esphome_version") or "?"
    builder = flash.get("builder")
    if not builder or builder == "local":
        return Text(clean(str(version)))
    mark = " ✓" if flash.get("verified") is True else ""
    # A Text, not a str: a receiver's name must not be read as rich markup.
    return Text(clean(f"{version} by {builder}{mark}"))


def _devices_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    columns = ("configuration", "name", "address", "state", "running", "flashed", "hash", "built")
    for column in (*columns, "why"):
        table.add_column(column)
    for row in rows:
        online = row.get("online")
        style = {"up-to-date": "green", "outdated": "yellow", "offline": "dim"}.get(
            row["state"], "red" if row["state"] == "unknown" else ""
        )
        table.add_row(
            Path(row["configuration"]).name,
            row.get("name") or "—",
            (row.get("address") or "—") + ("" if online else " (offline)"),
            f"[{style}]{row['state']}[/{style}]" if style else row["state"],
            row.get("running_version") or "—",
            _flashed(row.get("last_flash")),
            row.get("running_config_hash") or "—",
            row.get("last_build_config_hash") or "—",
            "; ".join(row.get("reasons") or []),
        )
    return table


@cli.command(section="fleet")
@click.argument("directories", nargs=-1, type=click.Path(path_type=Path, file_okay=False))
@json_option
@client_options
def devices(directories: tuple[Path, ...], as_json: bool, **opts: Any) -> None:
    """The fleet: per configuration in DIRECTORIES (default: the daemon's --config-dir),
    its device, whether it is online, what it runs and whether it needs an update."""

    async def run(client: Client) -> int:
        result = await fetch_devices(client, directories)
        if as_json:
            print_json(result)
            return EXIT_OK
        console.print(_devices_table(result["devices"]))
        for problem in result.get("problems") or []:
            console.print(f"[yellow]note[/yellow]: {problem}", highlight=False, markup=True)
        return EXIT_OK

    run_client(opts, run)


# -- update / install many -----------------------------------------------------------------


def select_rows(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """One row per configuration that ``mode`` selects (the first device of each)."""
    chosen: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("name") is None or row["configuration"] in chosen:
            continue
        if mode == "all":
            pick = row["state"] != "unknown" or row.get("current_config_hash") is not None
        elif mode == "changed":
            built = row.get("last_build_config_hash")
            pick = built is None or built != row.get("current_config_hash")
        else:  # outdated: as `meshd devices` says, also for an offline device's last advert
            pick = row["state"] == "outdated" or (
                row["state"] == "offline" and row.get("needs_update") is True
            )
        if pick:
            chosen[row["configuration"]] = row
    return list(chosen.values())


def _phase(compile_job: dict[str, Any], upload_job: dict[str, Any]) -> str:
    status = upload_job["status"]
    if status == "completed":
        return "flashed"
    if status in _TERMINAL:
        return "failed"
    if upload_job.get("waiting") == "device":
        return "waiting for device"
    if status == "running":
        return "uploading"
    if compile_job["status"] == "running":
        return "compiling"
    if compile_job["status"] == "completed":
        return "upload queued"
    return "compile queued"


def _reason(compile_job: dict[str, Any], upload_job: dict[str, Any]) -> str:
    for job in (upload_job, compile_job):
        if job["status"] in ("failed", "cancelled"):
            return str(job.get("reason") or job.get("error") or job["status"])
    return str(upload_job.get("reason") or "")


class _InstallFollower:
    """Where each followed install stands, and the line printed when it moves on."""

    def __init__(
        self,
        installs: list[dict[str, Any]],
        names: dict[str, str],
        *,
        wait_online: bool,
        quiet: bool,
    ) -> None:
        self.order = [i["configuration"] for i in installs]
        self.state = {i["configuration"]: (i["compile"], i["upload"], "") for i in installs}
        self.by_job = {
            job["id"]: i["configuration"] for i in installs for job in (i["compile"], i["upload"])
        }
        self.names = names
        self.wait_online = wait_online
        self.quiet = quiet
        self.done: dict[str, dict[str, Any]] = {}

    @property
    def finished(self) -> bool:
        return len(self.done) == len(self.state)

    def outcomes(self) -> list[dict[str, Any]]:
        return [self.done[config] for config in self.order]

    async def refresh(self, client: Client, config: str) -> None:
        """Fetch both jobs of ``config``'s install and report what changed."""
        if config in self.done:
            return
        compile_job, upload_job, last = self.state[config]
        compile_job = await client.job(compile_job["id"])
        upload_job = await client.job(upload_job["id"])
        phase = _phase(compile_job, upload_job)
        name = self.names.get(config) or Path(config).stem
        if phase != last:
            self.state[config] = (compile_job, upload_job, phase)
            if not self.quiet:
                line = f"{name}: {phase}"
                if phase == "failed":
                    line += f": {_reason(compile_job, upload_job)}"
                elif phase == "flashed" and upload_job.get("device"):
                    line += f" ({upload_job['device']})"
                console.print(line, highlight=False, markup=False)
        deferred = phase == "waiting for device" and not self.wait_online
        if phase in ("flashed", "failed") or deferred:
            self.done[config] = {
                "configuration": config,
                "name": name,
                "outcome": "deferred" if deferred else phase,
                "reason": (
                    "armed: flashes when the device announces itself"
                    if deferred
                    else _reason(compile_job, upload_job)
                ),
                "compile": compile_job["id"],
                "upload": upload_job["id"],
                "device": upload_job.get("device"),
            }

    async def refresh_all(self, client: Client) -> None:
        for config in self.order:
            await self.refresh(client, config)


async def follow_installs(
    client: Client,
    installs: list[dict[str, Any]],
    names: dict[str, str],
    *,
    wait_online: bool,
    quiet: bool,
) -> list[dict[str, Any]]:
    """Print a line per device each time its install moves on; return the outcomes.

    The daemon's events say which job changed, so a fleet of 100 costs a request per
    change rather than 200 requests per look. A full look right after subscribing
    catches what changed before, and another every ``RESYNC_INTERVAL`` seconds guards
    against a missed event; without the events stream it falls back to polling.
    """
    follower = _InstallFollower(installs, names, wait_online=wait_online, quiet=quiet)
    try:
        stream = await client.events()
    except DaemonUnreachable:
        stream = None
    try:
        await follower.refresh_all(client)
        if stream is not None:
            await _follow_events(client, stream, follower)
        while not follower.finished:  # no stream, or it ended: poll the rest
            await asyncio.sleep(POLL_INTERVAL)
            await follower.refresh_all(client)
    finally:
        if stream is not None:
            await stream.close()
    return follower.outcomes()


async def _follow_events(client: Client, stream: EventStream, follower: _InstallFollower) -> None:
    """Refresh an install whenever an event names one of its jobs, until all are done."""
    events = aiter(stream)
    # One read stays pending across quiet spells: cancelling it would end the stream.
    pending: asyncio.Future[dict[str, Any]] = asyncio.ensure_future(anext(events))
    try:
        while not follower.finished:
            done, _ = await asyncio.wait({pending}, timeout=RESYNC_INTERVAL)
            if not done:
                await follower.refresh_all(client)
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:
                return
            pending = asyncio.ensure_future(anext(events))
            if event.get("type") in _QUIET_EVENTS:
                continue
            job = event.get("job")
            config = follower.by_job.get(job.get("id")) if isinstance(job, dict) else None
            if config is not None:
                await follower.refresh(client, config)
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending


def _summary(outcomes: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("device", "result", "reason", "upload job"):
        table.add_column(column)
    for out in outcomes:
        style = {"flashed": "green", "deferred": "yellow"}.get(out["outcome"], "red")
        table.add_row(
            out["name"], f"[{style}]{out['outcome']}[/{style}]", out["reason"], out["upload"]
        )
    return table


async def install_many(
    client: Client,
    entries: list[dict[str, Any]],
    names: dict[str, str],
    *,
    when_online: bool,
    wait_online: bool,
    local: bool,
    as_json: bool,
) -> int:
    body: dict[str, Any] = {"installs": entries, "when_online": when_online, "local": local}
    started = time.monotonic()
    created = await client.request("POST", "/installs", body)
    outcomes = await follow_installs(
        client, created["installs"], names, wait_online=wait_online, quiet=as_json
    )
    if as_json:
        print_json({"outcomes": outcomes, "seconds": round(time.monotonic() - started, 3)})
    else:
        console.print(_summary(outcomes))
    ok = all(o["outcome"] in ("flashed", "deferred") for o in outcomes)
    return EXIT_OK if ok else EXIT_JOB_FAILED


@cli.command(section="fleet")
@click.argument("directories", nargs=-1, type=click.Path(path_type=Path, file_okay=False))
@click.option("--outdated", "mode", flag_value="outdated", default=True, help="Only outdated.")
@click.option("--all", "mode", flag_value="all", help="Every configuration with a name.")
@click.option("--changed", "mode", flag_value="changed", help="YAML changed since last build.")
@click.option(
    "--wait-online/--no-wait-online",
    default=False,
    help="Keep following armed uploads until their devices come online and are flashed.",
)
@click.option("--local", is_flag=True, help="Compile on this node, never on a peer.")
@json_option
@client_options
def update(
    directories: tuple[Path, ...],
    mode: str,
    wait_online: bool,
    local: bool,
    as_json: bool,
    **opts: Any,
) -> None:
    """Update the fleet in DIRECTORIES: compile now, flash each device when it is online."""

    async def run(client: Client) -> int:
        rows = (await fetch_devices(client, directories))["devices"]
        chosen = select_rows(rows, mode)
        if not chosen:
            if as_json:
                print_json({"outcomes": []})
            else:
                console.print(f"nothing to update ({mode})", highlight=False)
            return EXIT_OK
        names = {r["configuration"]: str(r["name"]) for r in chosen}
        entries = [{"configuration": r["configuration"], "device_name": r["name"]} for r in chosen]
        return await install_many(
            client,
            entries,
            names,
            when_online=True,
            wait_online=wait_online,
            local=local,
            as_json=as_json,
        )

    run_client(opts, run)


@cli.command(section="jobs")
@click.argument(
    "configurations", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False)
)
@click.option(
    "--device",
    help="OTA address/hostname or serial port (one configuration) [OTA: resolved like "
    "esphome run: use_address, the address the device announces, NAME.local].",
)
@click.option(
    "--when-online",
    is_flag=True,
    help="Compile now; upload when the device announces itself (armed).",
)
@click.option("--wait-online", is_flag=True, help="With --when-online: wait for the flash too.")
@click.option("--local", is_flag=True, help="Compile on this node, never on a peer.")
@click.option("--detach", is_flag=True, help="Queue and return at once (with --device).")
@json_option
@client_options
def install(
    configurations: tuple[Path, ...],
    device: str | None,
    when_online: bool,
    wait_online: bool,
    local: bool,
    detach: bool,
    as_json: bool,
    **opts: Any,
) -> None:
    """Compile each CONFIGURATION, then upload it (a chain each, one request)."""
    if device is not None and len(configurations) > 1:
        raise click.UsageError("--device names one device: give one configuration with it")
    if device is None and not when_online and len(configurations) == 1:
        device = "OTA"  # resolved as `esphome run` would (use_address, mDNS, NAME.local)
    if device is not None and not when_online:
        submit_install(
            configurations[0], device, local=local, detach=detach, as_json=as_json, opts=opts
        )
    entries: list[dict[str, Any]] = []
    for config in configurations:
        entry: dict[str, Any] = {"configuration": _abs(config)}
        if device is not None:
            entry["device"] = device
        elif not when_online:
            entry["device"] = "OTA"
        entries.append(entry)
    names = {e["configuration"]: Path(e["configuration"]).stem for e in entries}

    async def run(client: Client) -> int:
        return await install_many(
            client,
            entries,
            names,
            when_online=when_online,
            wait_online=wait_online or not when_online,
            local=local,
            as_json=as_json,
        )

    run_client(opts, run)


@cli.command(section="fleet")
@click.argument("configuration", type=click.Path(path_type=Path, dir_okay=False))
@json_option
@client_options
def artifacts(configuration: Path, as_json: bool, **opts: Any) -> None:
    """The kept builds of CONFIGURATION (flash one with ``meshd upload --build ID``)."""

    async def run(client: Client) -> int:
        query = urlencode({"configuration": _abs(configuration)})
        result = await client.request("GET", f"/artifacts?{query}")
        if as_json:
            print_json(result)
            return EXIT_OK
        table = Table(box=None, header_style="bold")
        for column in ("build", "created", "esphome", "config hash", "size"):
            table.add_column(column)
        for build in result.get("builds") or []:
            created = build.get("created_at")
            table.add_row(
                str(build.get("build_id")),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else "—",
                str(build.get("esphome_version") or "—"),
                str(build.get("config_hash") or "—"),
                str(build.get("size") or "—"),
            )
        console.print(table)
        return EXIT_OK

    run_client(opts, run)
