"""What every benchmark scenario shares: real daemons, OTA devices, the machine, figures.

* :class:`Node`: one real ``meshd serve`` process (``tests/daemon/conftest.py``'s
  ``Meshd``) driven over its HTTP API with aiohttp, and its events websocket;
* :class:`Bench`: the run's context: a scratch directory, ``--quick``, the daemons and
  OTA emulators it started (all stopped at the end, also on failure);
* :class:`LoadSampler` and :func:`machine`: what else the machine was doing, and what it is;
* :class:`Figure`: one measured number next to the reference it is a ratio of, with
  the issue's target, so every table and JSON file has the same shape;
* :func:`pipeline_bound`: the exact lower bound of N compile-then-upload chains.

Everything listens on loopback only: daemons bind their API and peer link to
127.0.0.1, zeroconf is pinned to 127.0.0.1, OTA emulators sit on 127.0.0.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.daemon.conftest import STANDIN, Meshd
from tests.support.ota_emulator import OtaEmulator

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "tests" / "bench" / "results"
ESPHOME_VERSION = "2026.6.5"
# Safety nets against hangs, never measurements.
WAIT = 300.0
# Daemons starting at once across scenarios (``--quick`` runs them all together):
# a storm of a dozen Python start-ups on two cores can outlast Meshd's start timeout.
CONCURRENT_STARTS = 3


class BenchError(RuntimeError):
    """A scenario could not measure what it set out to (a daemon refused, a job failed)."""


# -- figures --------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured value beside the reference it is compared with, in the same run.

    ``ratio`` is measured / reference. ``target`` is the issue's target as text and
    ``met`` whether this run met it (None when the figure has no target). Nothing
    asserts on either: the table reports them.
    """

    label: str
    measured: float | None
    unit: str = "s"
    reference: float | None = None
    reference_label: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.reference:
            return None
        return self.measured / self.reference

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "measured": _round(self.measured),
            "unit": self.unit,
            "reference": _round(self.reference),
            "reference_label": self.reference_label,
            "ratio": _round(self.ratio, 3),
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Result:
    """What a scenario returns: its figures by key, and details for the JSON file."""

    figures: dict[str, Figure] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Parts not run in this mode (key → why), e.g. the real compile in ``--quick``."""

    def add(self, key: str, figure: Figure) -> Figure:
        self.figures[key] = figure
        return figure


def median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise BenchError("median of nothing")
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def quantile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        raise BenchError("quantile of nothing")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- bounds ---------------------------------------------------------------------------


def pipeline_bound(compile_ends: Sequence[float], upload: float, slots: int) -> float:
    """The earliest the last upload can end, given when each compile can end at best.

    Uploads are identical (``upload`` seconds), each may start once its own compile has
    ended, and at most ``slots`` run at once. Starting every upload as early as
    possible, oldest compile first, on the slot that frees first is optimal for
    identical jobs with release times, so this list schedule *is* the bound.
    """
    free = [0.0] * slots
    end = 0.0
    for ready in sorted(compile_ends):
        start = max(ready, heapq.heappop(free))
        heapq.heappush(free, start + upload)
        end = max(end, start + upload)
    return end


def compile_ends(jobs: int, compile_s: float, builders: int) -> list[float]:
    """When ``jobs`` compiles of ``compile_s`` each end at best on ``builders`` slots."""
    return [(index // builders + 1) * compile_s for index in range(jobs)]


# -- machine --------------------------------------------------------------------------


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class LoadSampler:
    """Samples the 1-minute load average and machine CPU use every second in a thread."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-sampler", daemon=True)
        self._cpu_start = _cpu_times()
        self.cpu_busy: float | None = None

    def __enter__(self) -> LoadSampler:
        self._cpu_start = _cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        busy, total = _cpu_times()
        spent = total - self._cpu_start[1]
        self.cpu_busy = (busy - self._cpu_start[0]) / spent if spent else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, Any]:
        samples = self.samples or [os.getloadavg()[0]]
        return {
            "load1_min": round(min(samples), 2),
            "load1_median": round(median(samples), 2),
            "load1_max": round(max(samples), 2),
            "samples": len(self.samples),
            "machine_cpu_busy": _round(self.cpu_busy, 3),
        }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def machine() -> dict[str, Any]:
    """What ran the benchmark (versions by package metadata: nothing heavy is imported)."""
    import meshd

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "esphome": _version("esphome"),
        "platformio": _version("platformio"),
        "meshd": meshd.__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "load_before": [round(v, 2) for v in os.getloadavg()],
    }


# -- processes ------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (children not included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of one process now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def standin_argv(*args: str) -> list[str]:
    return [sys.executable, str(STANDIN), *args]


async def run_tool(argv: Sequence[str], *, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one command run directly (not through meshd); raises on failure."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    out, _ = await proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {out.decode()[-1500:]}")
    return elapsed


# -- daemons --------------------------------------------------------------------------


class Node:
    """One ``meshd serve`` process, driven over its control API."""

    def __init__(self, name: str, daemon: Meshd, http: aiohttp.ClientSession) -> None:
        self.name = name
        self.daemon = daemon
        self.http = http
        self.fingerprint = ""
        self.peer_port = 0

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.peer_port}"

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.daemon.token}"}
        url = f"{self.daemon.url}/api/v1{path}"
        async with self.http.request(method, url, json=body, headers=headers) as response:
            text = await response.text()
            if response.status >= 400:
                raise BenchError(f"{self.name}: {method} {path} → {response.status}: {text}")
            return json.loads(text) if text else None

    async def identify(self) -> None:
        found = await self.call("GET", "/identity")
        self.fingerprint, self.peer_port = found["fingerprint"], found["peer_port"]

    async def install(self, config: Path, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
        body = {"type": "install", "configuration": str(config), "device": device}
        compiled, uploaded = (await self.call("POST", "/jobs", body))["jobs"]
        return compiled, uploaded

    async def compile(self, config: Path, *, local: bool = False) -> dict[str, Any]:
        body = {"type": "compile", "configuration": str(config), "local": local}
        job: dict[str, Any] = (await self.call("POST", "/jobs", body))["jobs"][0]
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.call("GET", f"/jobs/{job_id}")
        return found

    async def log(self, job_id: str) -> str:
        headers = {"Authorization": f"Bearer {self.daemon.token}"}
        url = f"{self.daemon.url}/api/v1/jobs/{job_id}/log"
        async with self.http.get(url, headers=headers) as response:
            return await response.text()

    async def peers(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await self.call("GET", "/peers"))["peers"]
        return found

    async def wait_peer(self, fingerprint: str, timeout: float = WAIT, **fields: Any) -> float:
        """Poll until a peer record matches ``fields``; returns the perf_counter it did."""
        async with asyncio.timeout(timeout):
            while True:
                for peer in await self.peers():
                    if peer["fingerprint"] == fingerprint and all(
                        peer.get(k) == v for k, v in fields.items()
                    ):
                        return time.perf_counter()
                await asyncio.sleep(0.02)

    @contextlib.asynccontextmanager
    async def events(self, *, parse: bool = True) -> AsyncIterator[EventFollower]:
        """The events websocket, opened (and subscribed) before the body runs.

        ``parse=False`` only counts messages (a load generator that costs this process
        as little as possible); ``until_terminal`` needs parsing.
        """
        headers = {"Authorization": f"Bearer {self.daemon.token}"}
        ws = await self.http.ws_connect(f"{self.daemon.url}/api/v1/events", headers=headers)
        follower = EventFollower(ws, parse=parse)
        try:
            yield follower
        finally:
            await follower.close()


class EventFollower:
    """Collects job events from a websocket; ``until_terminal`` waits for a set of jobs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, parse: bool = True) -> None:
        self.ws = ws
        self.parse = parse
        self.jobs: dict[str, dict[str, Any]] = {}
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            now = time.perf_counter()
            self.count += 1
            self.first = self.first or now
            self.last = now
            if not self.parse:
                continue
            event = json.loads(message.data)
            job = event.get("job")
            if job is not None:
                self.jobs[job["id"]] = job
            if self.on_event is not None:
                self.on_event(event)
            self._changed.set()
        self._changed.set()

    async def until_terminal(
        self, ids: Iterable[str], timeout: float = WAIT
    ) -> dict[str, dict[str, Any]]:
        wanted = list(ids)
        terminal = ("completed", "failed", "cancelled")
        async with asyncio.timeout(timeout):
            while True:
                done = {
                    i: self.jobs[i]
                    for i in wanted
                    if self.jobs.get(i, {}).get("status") in terminal
                }
                if len(done) == len(wanted):
                    return done
                if self._reader.done():
                    raise BenchError("the events websocket closed")
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def ensure_all_completed(jobs: dict[str, dict[str, Any]], node: Node) -> None:
    bad = {i: (j["status"], j.get("error")) for i, j in jobs.items() if j["status"] != "completed"}
    if bad:
        raise BenchError(f"{node.name}: jobs did not complete: {bad}\n{node.daemon.log()}")


_SLOTS: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _start_slots() -> asyncio.Semaphore:
    """One start-up semaphore per event loop, shared by every scenario on it."""
    loop = asyncio.get_running_loop()
    return _SLOTS.setdefault(loop, asyncio.Semaphore(CONCURRENT_STARTS))


class Bench:
    """One benchmark run: scratch space, mode, and everything started (stopped at the end)."""

    def __init__(self, root: Path, *, quick: bool) -> None:
        self.root = root
        self.quick = quick
        self.nodes: list[Node] = []
        self.devices: list[OtaEmulator] = []
        self._http: aiohttp.ClientSession | None = None
        self._next_device = 10
        self._starts = _start_slots()

    async def __aenter__(self) -> Bench:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cleanup()
        if self._http is not None:
            await self._http.close()

    async def cleanup(self) -> None:
        """Kill every daemon (and its process group) and stop every device started so far."""
        for node in self.nodes:
            await asyncio.to_thread(node.daemon.kill)
        self.nodes.clear()
        for device in self.devices:
            await device.stop()
        self.devices.clear()

    def path(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def start_nodes(
        self,
        specs: Sequence[tuple[str, Sequence[str]]],
        *,
        esphome: str | None = None,
        env: dict[str, str] | None = None,
    ) -> list[Node]:
        """Start daemons concurrently; ``specs`` are (name, extra ``meshd serve`` flags).

        The peer link and API are on 127.0.0.1 and mDNS (when on) is pinned to
        127.0.0.1 by ``Meshd`` itself.
        """
        assert self._http is not None
        nodes = []
        for name, args in specs:
            kwargs: dict[str, Any] = {"args": ("--name", name, *args), "env": env}
            if esphome is not None:
                kwargs["esphome"] = esphome
            daemon = Meshd(self.path("nodes") / name, **kwargs)
            node = Node(name, daemon, self._http)
            self.nodes.append(node)
            nodes.append(node)

        async def start(node: Node) -> None:
            async with self._starts:
                starting = asyncio.ensure_future(asyncio.to_thread(node.daemon.start))
                try:
                    await asyncio.shield(starting)
                except asyncio.CancelledError:
                    # The thread cannot be stopped: let it finish starting (bounded by
                    # Meshd's own timeout) so cleanup() finds the process and kills it.
                    with contextlib.suppress(Exception):
                        await starting
                    raise
            await node.identify()

        await asyncio.gather(*(start(n) for n in nodes))
        return nodes

    async def stop_node(self, node: Node) -> None:
        await asyncio.to_thread(node.daemon.kill)
        if node in self.nodes:
            self.nodes.remove(node)

    async def device(self, rate: float | None) -> tuple[str, OtaEmulator]:
        """An OTA device on its own loopback address (uploads to one address never overlap)."""
        host = f"127.0.0.{self._next_device}"
        self._next_device += 1
        emulator = await OtaEmulator(host=host, rate=rate).start()
        self.devices.append(emulator)
        return host, emulator


async def trust_receiver(offloader: Node, receiver: Node) -> None:
    """On the offloader: ``meshd trust RECEIVER --no-send-work --address ...``."""
    await offloader.call(
        "POST",
        "/trust",
        {
            "fingerprint": receiver.fingerprint,
            "name": receiver.name,
            "address": receiver.address,
            "may_send_work": False,
        },
    )


async def trust_offloader(receiver: Node, offloader: Node) -> None:
    """On the receiver: ``meshd trust OFFLOADER --no-build-for-me``."""
    await receiver.call(
        "POST",
        "/trust",
        {"fingerprint": offloader.fingerprint, "name": offloader.name, "may_build_for_me": False},
    )


async def link(offloader: Node, receiver: Node, *, wait: bool = True) -> float:
    """Both trusts, the receiver's first (so the offloader's first dial is accepted);
    returns seconds from the first until the receiver is usable at the offloader."""
    started = time.perf_counter()
    await trust_offloader(receiver, offloader)
    await trust_receiver(offloader, receiver)
    if not wait:
        return 0.0
    usable = await offloader.wait_peer(receiver.fingerprint, connected=True, idle=True)
    return usable - started


def write_config(directory: Path, name: str, **directives: Any) -> Path:
    """A host configuration for the stand-in with ``# standin:`` directives."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"# standin: {key}={value}\n" for key, value in directives.items()]
    lines.append(f"esphome:\n  name: {name}\nhost:\nlogger:\n")
    path = directory / f"{name}.yaml"
    path.write_text("".join(lines), encoding="utf-8")
    return path
