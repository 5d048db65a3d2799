"""What the CLI shows: rich tables for humans, and following jobs live with progress bars.

Following is built on the events websocket: the CLI connects *before* it submits, so
every event of the new jobs arrives, in order, with nothing to poll. Tool output is
printed above the bars as it arrives. If the stream ends early (the daemon stopped,
or the client fell behind and was dropped), the follower reconnects and re-reads the
jobs, so it never reports a stale state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from meshd.api.client import Client, DaemonUnreachable, EventStream
from meshd.cli.sanitize import clean

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


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


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


def describe(job: dict[str, Any]) -> str:
    """``compile host.yaml``, ``upload host.yaml → 192.168.1.20``."""
    text = f"{job['type']} {_short_config(job['configuration'])}"
    if job.get("device") and job["type"] == "upload":
        text += f" → {job['device']}"
    return text


def jobs_table(jobs: Sequence[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("ID", "TYPE", "STATUS", "CONFIGURATION", "DEVICE", "RUNNER", "CREATED", ""):
        table.add_column(column, overflow="fold")
    for job in jobs:
        note = ""
        if job["status"] == "running" and job.get("progress") is not None:
            note = f"{job['progress'] * 100:.0f}%"
        elif job.get("error"):
            note = clean(job["error"].splitlines()[0])
        elif job["status"] == "queued" and job.get("waiting") == "device":
            note = "waiting for device " + str((job.get("args") or {}).get("device_name", ""))
        elif job["status"] == "queued" and job.get("depends_on"):
            note = f"after {job['depends_on']}"
        table.add_row(
            job["id"],
            job["type"],
            status_text(job["status"]),
            _short_config(job["configuration"]),
            job.get("device") or "",
            job.get("runner") or "",
            _age(job.get("created_at")),
            note,
        )
    return table


def job_table(job: dict[str, Any]) -> Table:
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key in (
        "id",
        "type",
        "status",
        "configuration",
        "device",
        "depends_on",
        "lane",
        "runner",
        "reason",
        "progress",
        "created_at",
        "started_at",
        "finished_at",
    ):
        value = job.get(key)
        if value is None:
            continue
        if key == "status":
            table.add_row(key, status_text(str(value)))
        elif key.endswith("_at"):
            table.add_row(key, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)))
        elif key == "progress":
            table.add_row(key, f"{float(value) * 100:.0f}%")
        else:
            table.add_row(key, clean(value))
    for key, value in sorted((job.get("args") or {}).items()):
        table.add_row(f"args.{key}", clean(value))
    if job.get("error"):
        table.add_row("error", Text(clean(job["error"], multiline=True), style="red"))
    return table


def status_tables(status: dict[str, Any]) -> list[Table]:
    node = Table(box=None, show_header=False, title="node", title_justify="left")
    node.add_column(style="bold")
    node.add_column()
    for key, value in status["node"].items():
        node.add_row(key, "—" if value is None else str(value))
    lanes = Table(box=None, header_style="bold", title="lanes", title_justify="left")
    for column in ("LANE", "STATE", "RUNNING", "QUEUED", "SLOTS", "IDLE SINCE"):
        lanes.add_column(column)
    for name, lane in status["lanes"].items():
        since = lane.get("idle_since")
        lanes.add_row(
            name,
            Text("idle", style="green") if lane["idle"] else Text("busy", style="cyan"),
            ", ".join(lane["running"]) or "—",
            str(lane["queued"]),
            str(lane.get("slots", "")),
            time.strftime("%H:%M:%S", time.localtime(since)) if since else "—",
        )
    return [node, lanes, peers_table(status.get("peers", []))]


def peers_table(peers: Sequence[dict[str, Any]]) -> Table:
    """One row per peer: who, where, whether it can build for us now, and why not."""
    table = Table(box=None, header_style="bold", title="peers", title_justify="left")
    if not peers:
        table.show_header = False
        table.add_column()
        table.add_row("none")
        return table
    for column in ("NAME", "FINGERPRINT", "ADDRESS", "ESPHOME", "TRUSTED", "LINK", "LANE"):
        table.add_column(column)
    for peer in peers:
        if not peer.get("accepts_builds"):
            lane = "no builds"
        elif peer.get("idle"):
            lane = "idle"
        else:
            lane = f"busy ({peer.get('running', 0)} running, {peer.get('queued', 0)} queued)"
        link = "connected" if peer.get("connected") else clean(peer.get("last_error") or "-")
        addresses = peer.get("addresses") or []
        table.add_row(
            clean(peer.get("name", "")),
            clean(peer.get("fingerprint", ""))[:16],
            clean(addresses[0]) if addresses else "-",
            clean(peer.get("esphome_version") or "?"),
            "yes" if peer.get("trusted") else "no",
            str(link),
            lane,
        )
    return table


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
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
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
                self._print(Text(f"{describe(job)} {status}: {clean(job['error'])}", style="red"))


class _Null:
    """Stands in for the Progress context manager when nothing is drawn."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_exc: object) -> None:
        return None
