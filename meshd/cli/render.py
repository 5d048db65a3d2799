"""What the CLI shows: tables that fit the terminal, and following jobs live with bars.

Tables are *fitted* (:func:`fit_table`): ids, states and column titles are never cut
or wrapped; free text (a path, a reason, an error) is cut with an ellipsis to what the
terminal has left; and below what even the cut text needs, the least useful columns
are dropped (each column says how early it goes). ``meshd show`` prints a job whole,
its error included. Every cell goes through :func:`meshd.cli.sanitize.clean`: peer
names, receivers' reasons and errors, addresses and log lines are a peer's words, and
cleaning here, in one place, means no table forgets it.

A new table (the fleet's devices, say) is a tuple of :class:`Col` and
``fit_table(columns, rows, width)``; a new field of ``meshd show`` is one more entry
in :data:`JOB_FIELDS`.

Following is built on the events websocket: the CLI connects *before* it submits, so
every event of the new jobs arrives, in order, with nothing to poll. Tool output is
printed above the bars as it arrives. If the stream ends early (the daemon stopped,
or the client fell behind and was dropped), the follower reconnects and re-reads the
jobs, so it never reports a stale state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from meshd.api.client import Client, DaemonUnreachable, EventStream
from meshd.cli.sanitize import clean

if TYPE_CHECKING:  # rich.progress (and rich.live with it) loads only when a job is followed
    from rich.progress import Progress, TaskID

TERMINAL = frozenset({"completed", "failed", "cancelled"})
# Between two events the follower re-reads its jobs this often: a safety net for a
# missed event, not the way it learns about progress.
REFRESH_SECONDS = 5.0
RECONNECT_ATTEMPTS = 5

STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}

# A fingerprint in a table: the 16 hex characters `meshd identity` calls short.
SHORT_FINGERPRINT = 16
# Two spaces between columns (rich's padding (0, 1)), none at the edges.
_GAP = 2


def status_text(status: str) -> Text:
    return Text(clean(status), style=STATUS_STYLE.get(status, ""))


# -- fitted tables -----------------------------------------------------------------------

Cell = str | Text


@dataclass(frozen=True)
class Col:
    """One column of a fitted table.

    ``free`` text (paths, reasons, errors, names) is cut with an ellipsis to fit, never
    narrower than ``min_width``; any other column keeps its full width. ``drop`` orders
    the columns a narrow terminal loses, lowest first; ``None`` is never dropped.
    """

    title: str
    free: bool = False
    min_width: int = 10
    drop: int | None = None
    justify: str = "left"


def _fit(columns: Sequence[Col], natural: Sequence[int], width: int) -> dict[int, int]:
    """Which columns to show at ``width``, and how wide: index → content width."""
    kept = list(range(len(columns)))

    def floor(i: int) -> int:
        col = columns[i]
        if not col.free:
            return natural[i]
        return min(natural[i], max(col.min_width, cell_len(col.title)))

    while True:
        need = sum(floor(i) for i in kept) + _GAP * (len(kept) - 1)
        droppable = [i for i in kept if columns[i].drop is not None]
        if need <= width or not droppable:
            break
        kept.remove(min(droppable, key=lambda i: (columns[i].drop, -i)))
    widths = {i: natural[i] for i in kept if not columns[i].free}
    free = sorted((i for i in kept if columns[i].free), key=lambda i: natural[i])
    # Every free column gets its floor, then what is left is shared out, the narrowest
    # first, so a short column takes only what it needs and the rest goes to the long.
    spare = width - sum(widths.values()) - _GAP * (len(kept) - 1) - sum(map(floor, free))
    for count, i in enumerate(free):
        extra = min(natural[i] - floor(i), max(0, spare) // (len(free) - count))
        widths[i] = floor(i) + extra
        spare -= extra
    return widths


def fit_table(
    columns: Sequence[Col],
    rows: Sequence[Sequence[Cell]],
    width: int | None = None,
    *,
    title: str | None = None,
) -> Table:
    """A borderless table of ``rows`` that fits ``width`` cells (see :class:`Col`);
    without ``width``, the terminal's (``COLUMNS``, else what the terminal says)."""
    if width is None:
        width = Console().width
    cells = [[_cleaned(value) for value in row] for row in rows]
    natural = [
        max([cell_len(col.title)] + [row[i].cell_len for row in cells])
        for i, col in enumerate(columns)
    ]
    widths = _fit(columns, natural, width)
    table = Table(
        box=None,
        header_style="bold",
        pad_edge=False,
        title=title,
        title_justify="left",
        title_style="bold",
    )
    kept = sorted(widths)
    for i in kept:
        col = columns[i]
        table.add_column(
            col.title,
            no_wrap=True,
            overflow="ellipsis",
            justify=col.justify,  # type: ignore[arg-type]
            min_width=widths[i],
            max_width=widths[i],
        )
    for row in cells:
        table.add_row(*(row[i] for i in kept))
    return table


def fields_table(rows: Sequence[tuple[str, Cell]], *, title: str | None = None) -> Table:
    """Label: value lines; values wrap (``meshd show`` prints a job whole)."""
    table = Table(
        box=None,
        show_header=False,
        pad_edge=False,
        title=title,
        title_justify="left",
        title_style="bold",
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, _cleaned(value, multiline=True))
    return table


def _cleaned(value: Cell, *, multiline: bool = False) -> Text:
    """A cell as rich ``Text``, cleaned: peer text never reaches the terminal raw."""
    if isinstance(value, Text):
        cleaned = clean(value.plain, multiline=multiline)
        return value.copy() if cleaned == value.plain else Text(cleaned, style=value.style)
    return Text(clean(value, multiline=multiline))


def _short_config(path: str) -> str:
    return Path(path).name or path


def _age(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    seconds = max(0, int(time.time() - timestamp))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _runner(runner: str | None) -> str:
    """``local``, or a receiver's fingerprint cut to its short form."""
    if not runner or runner == "local":
        return runner or ""
    return runner[:SHORT_FINGERPRINT]


def _yes(value: object) -> str:
    return "yes" if value else "no"


def describe(job: dict[str, Any]) -> str:
    """``compile host.yaml``, ``upload host.yaml → 192.168.1.20`` (cleaned)."""
    text = f"{job['type']} {_short_config(job['configuration'])}"
    if job.get("device") and job["type"] == "upload":
        text += f" → {job['device']}"
    return clean(text)


def job_note(job: dict[str, Any]) -> str:
    """The one line a jobs table has for what a job is doing or why it ended."""
    if job["status"] == "running" and job.get("progress") is not None:
        return f"{job['progress'] * 100:.0f}%"
    if job.get("error"):
        lines = str(job["error"]).strip().splitlines()
        return lines[0] if lines else ""
    if job["status"] == "queued" and job.get("waiting") == "device":
        return "waiting for device " + str((job.get("args") or {}).get("device_name", ""))
    if job["status"] == "queued" and job.get("depends_on"):
        return f"after {job['depends_on']}"
    return ""


JOB_COLUMNS = (
    Col("ID"),
    Col("TYPE", drop=6),
    Col("STATUS"),
    Col("CONFIGURATION", free=True, min_width=12, drop=7),
    Col("DEVICE", free=True, min_width=8, drop=4),
    Col("RUNNER", drop=2),
    Col("CREATED", drop=3),
    # Wide enough for the start of an error ("Failed config", "Timeout uploading").
    Col("NOTE", free=True, min_width=16, drop=5),
)


# A type as the command that submits it is called: narrower, and what the user typed.
_TYPE_LABEL = {"reset_build_env": "reset"}


# Below this many columns `meshd jobs` puts type, configuration and device into one
# column (what `describe` says: "upload kitchen.yaml → 192.168.1.20"), cut to fit,
# so the note (why it failed) still has room at 60.
NARROW = 70
NARROW_JOB_COLUMNS = (
    Col("ID"),
    Col("STATUS"),
    Col("JOB", free=True, min_width=14),
    Col("CREATED", drop=3),
    Col("NOTE", free=True, min_width=14, drop=5),
)


def jobs_table(jobs: Sequence[dict[str, Any]], width: int | None = None) -> Table:
    """``meshd jobs``: one line per job, fitted to ``width`` (narrow layout below NARROW)."""
    if width is None:
        width = Console().width
    if width < NARROW:
        narrow = [
            (
                job["id"],
                status_text(job["status"]),
                describe(job),
                _age(job.get("created_at")),
                job_note(job),
            )
            for job in jobs
        ]
        return fit_table(NARROW_JOB_COLUMNS, narrow, width)
    rows = [
        (
            job["id"],
            _TYPE_LABEL.get(job["type"], job["type"]),
            status_text(job["status"]),
            _short_config(job["configuration"]),
            job.get("device") or "",
            _runner(job.get("runner")),
            _age(job.get("created_at")),
            job_note(job),
        )
        for job in jobs
    ]
    return fit_table(JOB_COLUMNS, rows, width)


# `meshd show`: (key, label, how to show its value). Append to extend; a key the job
# lacks (or holds None) is skipped.
JobField = tuple[str, str, Callable[[Any], Cell]]
JOB_FIELDS: list[JobField] = [
    ("id", "ID", str),
    ("type", "Type", str),
    ("status", "Status", lambda value: status_text(str(value))),
    ("configuration", "Configuration", str),
    ("device", "Device", str),
    ("depends_on", "After", str),
    ("lane", "Lane", str),
    ("runner", "Ran on", str),
    ("reason", "Why there", str),
    ("reason_code", "Reason code", str),
    ("progress", "Progress", lambda value: f"{float(value) * 100:.0f}%"),
    ("waiting", "Waiting for", str),
    ("waiting_until", "Waiting until", _clock),
    ("created_at", "Created", _clock),
    ("started_at", "Started", _clock),
    ("finished_at", "Finished", _clock),
]


def built_line(build: dict[str, Any]) -> Text:
    """Who built a job, with which esphome, and whether its provenance was verified.

    ``built by desktop (ab12…) with esphome 2026.6.5 on host; provenance signature
    verified``. Every value came from the daemon (a receiver's name from its advert):
    cleaned before it reaches the terminal.
    """
    if build.get("unreadable"):
        return Text(clean(f"unreadable build record: {build.get('error') or '?'}"), style="yellow")
    version = build.get("esphome_version")
    esphome = f"esphome {version}" if version else "an esphome that did not say its version"
    platform = build.get("platform")
    on = f" on {str(platform).lower()}" if platform else ""
    if build.get("where") != "remote":
        return Text(clean(f"built locally with {esphome}{on}"))
    fingerprint = str(build.get("builder_fingerprint") or "")
    who = f"{build.get('builder') or fingerprint[:SHORT_FINGERPRINT]} ({fingerprint[:4]}…)"
    if build.get("verified") is True:
        return Text(clean(f"built by {who} with {esphome}{on}; provenance signature verified"))
    return Text(
        clean(f"built by {who} with {esphome}{on}; no signed provenance (the receiver signs none)"),
        style="yellow",
    )


def _provenance_line(provenance: dict[str, Any]) -> str:
    """The signed record in one line: when, which bundle, how many artifacts."""
    artifacts = provenance.get("artifacts") or []
    signed_at = provenance.get("signed_at")
    when = _clock(float(signed_at)) if isinstance(signed_at, int | float) else "?"
    bundle = str(provenance.get("bundle") or "")[:SHORT_FINGERPRINT]
    return clean(
        f"signed {when} for job {provenance.get('job_id')}, bundle {bundle}…, "
        f"{len(artifacts)} artifact digests"
    )


def job_table(job: dict[str, Any]) -> Table:
    """One job, whole: every field, its options, and the complete error."""
    rows: list[tuple[str, Cell]] = [
        (label, show(job[key])) for key, label, show in JOB_FIELDS if job.get(key) is not None
    ]
    build = job.get("build")
    if isinstance(build, dict):
        rows.append(("Built", built_line(build)))
        provenance = build.get("provenance")
        if isinstance(provenance, dict):
            rows.append(("Provenance", _provenance_line(provenance)))
    rows += [(f"args.{key}", str(value)) for key, value in sorted((job.get("args") or {}).items())]
    args = job.get("args") or {}
    hits, misses = args.get("cache_hits"), args.get("cache_misses")
    if isinstance(hits, int) and isinstance(misses, int):
        rate = f" ({hits / (hits + misses):.0%} hit rate)" if hits + misses else ""
        rows.insert(len(rows) - len(args), ("compile cache", f"{hits} hits, {misses} misses{rate}"))
    if job.get("error"):
        rows.append(("Error", Text(str(job["error"]), style="red")))
    return fields_table(rows)


def _cache_line(cache: dict[str, Any]) -> str:
    """``meshd status``'s one line about the compile cache."""
    if not cache.get("enabled"):
        return "off"
    rate = cache.get("hit_rate")
    size = float(cache.get("size_bytes") or 0) / 1024**2
    return f"{size:.1f} MiB, {cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses" + (
        f" ({rate:.0%} hit rate)" if isinstance(rate, int | float) else ""
    )


# -- this node ---------------------------------------------------------------------------

# `meshd status`'s node fields: (key, label, how to show it). Keys not listed here
# (a newer daemon's) are shown under a label made from their name; these are hidden.
_HIDDEN_NODE_KEYS = frozenset({"warnings", "fingerprint", "short", "esphome"})
NODE_FIELDS: list[tuple[str, str, Callable[[dict[str, Any]], Cell]]] = [
    ("name", "Name", lambda node: str(node["name"])),
    ("version", "meshd version", lambda node: str(node["version"])),
    ("fingerprint_display", "Fingerprint", lambda node: str(node["fingerprint_display"])),
    ("peer_port", "Peer port", lambda node: str(node["peer_port"])),
    ("esphome_version", "ESPHome", lambda node: _esphome(node)),
    ("receiver", "Builds for peers", lambda node: _yes(node["receiver"])),
    ("offload", "Sends compiles to peers", lambda node: _yes(node["offload"])),
    ("include_local", "Builds here while peers are busy", lambda node: _yes(node["include_local"])),
    ("version_policy", "ESPHome version policy", lambda node: str(node["version_policy"])),
    (
        "pairing_open",
        "Pairing window",
        lambda node: Text("open", style="yellow") if node["pairing_open"] else "closed",
    ),
    ("data_dir", "Data directory", lambda node: str(node["data_dir"])),
    ("compile_cache", "Compile cache", lambda node: _cache_line(node["compile_cache"])),
]


def _esphome(node: dict[str, Any]) -> Cell:
    version, command = node.get("esphome_version"), node.get("esphome")
    if version is None:
        return Text("not found" if not command else f"not answering ({command})", style="red")
    return f"{version} ({command})" if command else str(version)


def node_table(node: dict[str, Any]) -> Table:
    rows: list[tuple[str, Cell]] = []
    shown = set(_HIDDEN_NODE_KEYS)
    for key, label, show in NODE_FIELDS:
        shown.add(key)
        if key in node:
            # esphome_version is None when esphome is missing: its shower says so.
            missing = node[key] is None and key != "esphome_version"
            rows.append((label, "—" if missing else show(node)))
    for key, value in node.items():
        if key not in shown:
            rows.append((key.replace("_", " ").capitalize(), "—" if value is None else str(value)))
    return fields_table(rows, title="This node")


def warning_lines(node: dict[str, Any]) -> list[Text]:
    """The daemon's warnings (esphome not found, ...), as lines that stand out."""
    return [
        Text("warning: ", style="bold yellow") + Text(clean(warning), style="bold")
        for warning in node.get("warnings") or []
    ]


LANE_COLUMNS = (
    Col("LANE"),
    Col("STATE"),
    Col("RUNNING", free=True, min_width=12, drop=5),
    Col("QUEUED"),
    Col("WAITING", drop=2),
    Col("SLOTS", drop=3),
    Col("IDLE SINCE", drop=4),
)


def lanes_table(lanes: dict[str, Any], width: int | None = None) -> Table:
    rows = []
    for name, lane in lanes.items():
        since = lane.get("idle_since")
        rows.append(
            (
                name,
                Text("idle", style="green") if lane["idle"] else Text("busy", style="cyan"),
                ", ".join(lane["running"]) or "—",
                str(lane["queued"]),
                str(lane.get("waiting", "")),
                str(lane.get("slots", "")),
                time.strftime("%H:%M:%S", time.localtime(since)) if since else "—",
            )
        )
    return fit_table(LANE_COLUMNS, rows, width, title="Lanes")


def status_tables(status: dict[str, Any], width: int | None = None) -> list[Table]:
    """``meshd status``: this node, its lanes, its peers (warnings: :func:`warning_lines`)."""
    return [
        node_table(status["node"]),
        lanes_table(status["lanes"], width),
        peers_table(status.get("peers", []), width),
    ]


# -- the mesh ----------------------------------------------------------------------------

PEER_COLUMNS = (
    Col("NAME", free=True, min_width=8),
    Col("FINGERPRINT", drop=5),
    Col("ADDRESS", free=True, min_width=10, drop=4),
    Col("ESPHOME", drop=2),
    Col("TRUSTED", drop=3),
    Col("LINK", free=True, min_width=10, drop=6),
    Col("LAST SEEN", drop=1),
    Col("LANE", free=True, min_width=8, drop=7),
)


def _peer_lane(peer: dict[str, Any]) -> str:
    if not peer.get("accepts_builds"):
        return "no builds"
    if peer.get("idle"):
        return "idle"
    return f"busy ({peer.get('running', 0)} running, {peer.get('queued', 0)} queued)"


def peers_table(peers: Sequence[dict[str, Any]], width: int | None = None) -> Table:
    """One row per peer: who, where, whether it can build for us now, and why not."""
    if not peers:
        return fit_table([Col("PEERS")], [("none",)], width, title="Peers")
    rows = []
    for peer in peers:
        link = "connected" if peer.get("connected") else (peer.get("last_error") or "-")
        addresses = peer.get("addresses") or []
        rows.append(
            (
                str(peer.get("name") or "?"),
                str(peer.get("fingerprint", ""))[:SHORT_FINGERPRINT],
                str(addresses[0]) if addresses else "-",
                str(peer.get("esphome_version") or "?"),
                _yes(peer.get("trusted")),
                str(link),
                _age(peer.get("last_seen")) if peer.get("last_seen") else "never",
                _peer_lane(peer),
            )
        )
    return fit_table(PEER_COLUMNS, rows, width, title="Peers")


TRUSTED_COLUMNS = (
    Col("NAME", free=True, min_width=8),
    Col("FINGERPRINT"),
    Col("SEND WORK", drop=3),
    Col("BUILD FOR ME", drop=4),
    Col("ADDRESSES", free=True, min_width=10, drop=2),
)


def trusted_table(peers: Sequence[dict[str, Any]], width: int | None = None) -> Table:
    rows = [
        (
            peer.get("name") or "-",
            str(peer["fingerprint"])[:SHORT_FINGERPRINT],
            _yes(peer.get("may_send_work")),
            _yes(peer.get("may_build_for_me")),
            ", ".join(str(a) for a in peer.get("addresses") or []) or "-",
        )
        for peer in peers
    ]
    return fit_table(TRUSTED_COLUMNS, rows, width)


def identity_table(info: dict[str, Any]) -> Table:
    return fields_table(
        [
            ("Name", str(info["name"])),
            ("Fingerprint", str(info["fingerprint_display"])),
            ("Short fingerprint", str(info["short"])),
            ("Peer port", str(info["peer_port"])),
        ]
    )


class Follower:
    """Follow jobs to their end over the events websocket, drawing bars (or quietly).

    ``jobs`` maps id → the latest job object; ``on_change`` hooks let the caller draw.
    """

    def __init__(
        self,
        client: Client,
        console: Console | None,
        *,
        show_output: bool = True,
    ) -> None:
        self.client = client
        self.console = console
        self.show_output = show_output
        self.jobs: dict[str, dict[str, Any]] = {}
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def done(self) -> bool:
        return bool(self.jobs) and all(j["status"] in TERMINAL for j in self.jobs.values())

    async def submit_and_follow(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Open the stream, submit, follow; returns the final job objects in order."""
        stream = await self.client.events()
        try:
            created = await self.client.create(body)
            return await self._follow([job["id"] for job in created], stream, created)
        finally:
            await stream.close()

    async def follow(self, job_ids: Sequence[str]) -> list[dict[str, Any]]:
        stream = await self.client.events()
        try:
            current = [await self.client.job(job_id) for job_id in job_ids]
            return await self._follow(list(job_ids), stream, current)
        finally:
            await stream.close()

    async def _follow(
        self, ids: list[str], stream: EventStream, current: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        with self._bars():
            for job in current:
                self._update(job)
            attempts = 0
            while not self.done():
                ended = await self._consume(stream)
                if self.done():
                    break
                if ended:
                    # The daemon closed the stream: reconnect and re-read the truth.
                    await stream.close()
                    attempts += 1
                    if attempts > RECONNECT_ATTEMPTS:
                        raise DaemonUnreachable("lost the events stream of meshd repeatedly")
                    await asyncio.sleep(min(2.0**attempts / 4, 5.0))
                    stream = await self.client.events()
                for job_id in ids:
                    self._update(await self.client.job(job_id))
        return [self.jobs[job_id] for job_id in ids]

    async def _consume(self, stream: EventStream) -> bool:
        """Handle events until done (False), a quiet spell (False), or the stream ends (True)."""
        iterator = aiter(stream)
        while not self.done():
            try:
                event = await asyncio.wait_for(anext(iterator), REFRESH_SECONDS)
            except StopAsyncIteration:
                return True
            except TimeoutError:
                return False
            self._handle(event)
        return False

    def _handle(self, event: dict[str, Any]) -> None:
        job = event.get("job")
        if not isinstance(job, dict) or job.get("id") not in self.jobs:
            return
        if event["type"] == "job_output" and self.show_output:
            self._print(Text(clean(event.get("line", "")), style="dim"))
        self._update(job)

    def _print(self, text: Text) -> None:
        if self._progress is not None:
            # soft_wrap: tool output keeps its own lines; a terminal wraps, rich does not.
            self._progress.console.print(text, highlight=False, markup=False, soft_wrap=True)
        elif self.console is not None:
            self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    # -- bars ---------------------------------------------------------------------

    def _bars(self) -> Progress | _Null:
        if self.console is None:
            return _Null()
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.table import Column

        self._progress = Progress(
            # A long description is cut, not wrapped: one line per job keeps bars aligned.
            TextColumn(
                "{task.description}",
                markup=False,
                table_column=Column(no_wrap=True, overflow="ellipsis"),
            ),
            BarColumn(bar_width=24),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        return self._progress

    def _update(self, job: dict[str, Any]) -> None:
        previous = self.jobs.get(job["id"])
        self.jobs[job["id"]] = job
        if self._progress is None:
            return
        task = self._tasks.get(job["id"])
        if task is None:
            task = self._progress.add_task(describe(job), total=1.0, state="")
            self._tasks[job["id"]] = task
        status = job["status"]
        completed = 1.0 if status == "completed" else (job.get("progress") or 0.0)
        self._progress.update(task, completed=completed, state=status_text(status))
        if status in TERMINAL and (previous is None or previous["status"] not in TERMINAL):
            self._progress.stop_task(task)
            if job.get("error") and status != "completed":
                self._print(
                    Text(
                        f"{describe(job)} {status}: {clean(job['error'], multiline=True)}",
                        style="red",
                    )
                )


class _Null:
    """Stands in for the Progress context manager when nothing is drawn."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None
