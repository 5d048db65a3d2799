"""Scenario 8: a large mesh simulated in-process (more receivers than this machine hosts).

The real registry, scheduler, placer, engine (SQLite store, logs, event bus) and
compile lane, in this process; only the receivers are simulated: ``SimReceivers`` is
the compile lane's remote runner. A "remote compile" pushes the receiver's lane
status (busy) into the registry as the link would, waits until the benchmark
finishes it, pushes idle, and returns, as the offloader's runner does after pulling
the artifacts. The registry's listener re-plans the lane on every change, as
MeshNode wires it. Include-local is off, so every compile goes to a receiver.

Measured with P = 50 and 200 receivers and 500 queued compiles (100 in ``--quick``):

* plan: one ``scheduler.plan`` over the whole queue, against the same rules read one
  job at a time (tests/mesh/test_scheduler_reference.py, the scheduler as first
  written) on the same snapshot;
* idle → dispatch: with every receiver busy and the queue still long, one receiver
  finishes; the time until the lane has started the next job there (two SQLite
  commits, events, a re-plan), one receiver at a time; the same with the database on
  tmpfs (what the commits cost); and with 10 event followers (each takes every event's
  wire text, as the websocket handler does before writing it), whose ratio is the
  fan-out cost;
* memory: what the registry and the queued jobs hold (tracemalloc);
* the dialer's pass over the trust store that every registry change triggers in a
  daemon (``Connections._targets``, one SQLite lookup per trusted peer).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from meshd.jobs.engine import Engine
from meshd.jobs.model import Job, JobType
from meshd.jobs.runner import JobContext
from meshd.link import Router, SessionConfig
from meshd.mesh.dispatch.placer import MeshPlacer, waiting_job
from meshd.mesh.dispatch.scheduler import plan
from meshd.mesh.peering.connections import Connections, SessionHooks
from meshd.mesh.peering.registry import MAX_PEERS, PeerSource, Registry
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.trust import TrustStore
from tests.bench.harness import Bench, Figure, Result, median, quantile
from tests.bench.scenarios import Scenario

RECEIVERS = (50, 200)
VERSION = "2026.6.5"
FOLLOWERS = 10
KEYS = tuple(
    f"p{p}.{what}"
    for p in RECEIVERS
    for what in (
        "plan",
        "idle_to_dispatch",
        "idle_to_dispatch_no_fsync",
        "fan_out",
        "memory",
        "dialer_pass",
    )
)


def _reference_plan() -> Any:
    """The scheduler as first written (one job and every receiver at a time)."""
    root = str(Path(__file__).resolve().parents[3])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.mesh.test_scheduler_reference import reference_plan

    return reference_plan


class SimReceivers:
    """The compile lane's remote runner for simulated receivers."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.running: dict[str, asyncio.Future[None]] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.dispatched = 0
        self.all_busy = asyncio.Event()
        self.receivers = 0

    async def run(self, ctx: JobContext) -> None:
        fingerprint = ctx.placement.receiver
        assert fingerprint is not None
        now = time.perf_counter()
        self.dispatched += 1
        waiter = self.waiters.pop(fingerprint, None)
        if waiter is not None:
            waiter.set_result(now)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.running[fingerprint] = done
        if len(self.running) >= self.receivers:
            self.all_busy.set()
        # What the receiver's lane_status push does when its lane takes our job.
        self.registry.link_status(fingerprint, idle=False, idle_since=None, running=1, queued=0)
        await done
        self.registry.link_status(
            fingerprint, idle=True, idle_since=time.time(), running=0, queued=0
        )

    def finish(self, fingerprint: str) -> asyncio.Future[float]:
        """End the job running on ``fingerprint``; resolves when its next job starts there."""
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[fingerprint] = waiter
        self.running.pop(fingerprint).set_result(None)
        return waiter


def _registry(fingerprints: list[str]) -> Registry:
    registry = Registry(is_trusted=lambda _fp: True)
    for index, fingerprint in enumerate(fingerprints):
        registry.link_up(fingerprint, source=PeerSource.INBOUND)
        registry.link_hello(
            fingerprint,
            name=f"rx{index:03d}",
            protocol=1,
            esphome_version=VERSION,
            accepts_builds=True,
        )
        registry.link_status(
            fingerprint, idle=True, idle_since=1_000.0 + index, running=0, queued=0
        )
    return registry


async def _follow(subscription: Any, counter: list[int], sizes: list[int]) -> None:
    # What each events websocket handler does per event, short of the socket write:
    # take the event's wire text (encoded once per event, shared by all followers).
    async for event in subscription:
        sizes.append(len(event.wire_text))
        counter[0] += 1


async def _dispatch_latency(
    root: Path, receivers: int, queued: int, finishes: int, followers: int
) -> dict[str, Any]:
    fingerprints = [secrets.token_hex(32) for _ in range(receivers)]
    registry = _registry(fingerprints)
    sim = SimReceivers(registry)
    sim.receivers = receivers
    engine = Engine(root, {})
    placer = MeshPlacer(registry.views, local_version=lambda: VERSION, include_local=False)
    placer.ready = True
    engine.use_mesh(placer, sim)
    remove = registry.add_listener(lambda _change: engine.reschedule())
    counter = [0]
    sizes: list[int] = []
    subscriptions = [engine.bus.subscribe(maxsize=100_000) for _ in range(followers)]
    tasks = [asyncio.create_task(_follow(s, counter, sizes)) for s in subscriptions]
    config = root / "sim.yaml"
    config.write_text("esphome:\n  name: sim\nhost:\n", encoding="utf-8")
    await engine.start()
    try:
        started = time.perf_counter()
        for index in range(queued):
            engine.submit(JobType.COMPILE, f"{root}/cfg{index:04d}.yaml")
        submitted = time.perf_counter()
        async with asyncio.timeout(120):
            await sim.all_busy.wait()
        filled = time.perf_counter()
        latencies = []
        order = [fingerprints[i % receivers] for i in range(finishes)]
        for fingerprint in order:
            if len(engine.compile_lane.status().running) == 0:
                break
            t0 = time.perf_counter()
            async with asyncio.timeout(60):
                dispatched = await sim.finish(fingerprint)
            latencies.append(dispatched - t0)
        saves = []
        job = engine.active_jobs()[-1]
        for _ in range(20):
            t0 = time.perf_counter()
            engine.store.save(job)
            saves.append(time.perf_counter() - t0)
        lane_event = json.dumps(
            {"type": "lane_status", **engine.compile_lane.status().to_dict()}
        ).encode()
    finally:
        remove()
        for sub in subscriptions:
            sub.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await engine.stop()  # cancels the simulated compiles still running
    return {
        "submit_ms_per_job": (submitted - started) / queued * 1000,
        "fill_all_receivers_s": filled - submitted,
        "latencies_ms": [v * 1000 for v in latencies],
        "store_save_ms_median": median(saves) * 1000,
        "lane_status_event_bytes": len(lane_event),
        "events_followed": counter[0],
        "bytes_per_follower": sum(sizes) // followers if followers else 0,
    }


def _plan_times(receivers: int, queued: int, repeats: int) -> dict[str, float]:
    fingerprints = [secrets.token_hex(32) for _ in range(receivers)]
    registry = _registry(fingerprints)
    # A realistic moment: a few receivers idle, the rest busy with our jobs.
    for fingerprint in fingerprints[5:]:
        registry.link_status(fingerprint, idle=False, idle_since=None, running=1, queued=0)
    jobs = [Job(JobType.COMPILE, f"cfg{i}.yaml") for i in range(queued)]
    waiting = [waiting_job(job) for job in jobs]
    peers = registry.views()
    kwargs: dict[str, Any] = {"local_version": VERSION, "local_free": False}
    reference = _reference_plan()

    def timed(call: Any, count: int) -> float:
        samples = []
        for _ in range(count):
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    placer = MeshPlacer(registry.views, local_version=lambda: VERSION, include_local=False)
    placer.ready = True
    new = timed(lambda: plan(waiting, peers, **kwargs), repeats)
    old = timed(
        lambda: reference(
            waiting,
            peers,
            include_local=True,
            policy=placer.policy,
            receivers_connecting=False,
            **kwargs,
        ),
        max(3, repeats // 10),
    )
    placed = timed(
        lambda: placer.place(jobs, local_free=False, busy_receivers=frozenset()), repeats
    )
    return {"plan_s": new, "reference_s": old, "placer_s": placed}


def _memory(root: Path, receivers: int, queued: int) -> dict[str, float]:
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        registry = _registry([secrets.token_hex(32) for _ in range(receivers)])
        after_registry = tracemalloc.get_traced_memory()[0]
        engine = Engine(root, {})
        before_jobs = tracemalloc.get_traced_memory()[0]
        for index in range(queued):
            engine.submit(JobType.COMPILE, f"{root}/cfg{index:04d}.yaml")
        after_jobs = tracemalloc.get_traced_memory()[0]
        engine.logs.close_all()
        engine.store.close()
        del registry
    finally:
        tracemalloc.stop()
    return {
        "registry_bytes": after_registry - base,
        "queued_jobs_bytes": after_jobs - before_jobs,
    }


def _memory_filesystem() -> str | None:
    """A tmpfs directory (``/dev/shm``) where SQLite's fsync costs nothing, if any."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _dialer_pass(root: Path, receivers: int, repeats: int) -> float | None:
    """One pass of the dialer's target scan over ``receivers`` trusted peers (seconds)."""
    trust = TrustStore.open(root)
    fingerprints = [secrets.token_hex(32) for _ in range(receivers)]
    for fingerprint in fingerprints:
        trust.add(fingerprint, name=fingerprint[:8], may_build_for_me=True)
    registry = _registry(fingerprints)
    connections = Connections(
        Identity.generate(),
        trust,
        registry,
        Router(),
        SessionHooks(opened=lambda _s: None, closed=lambda _s: None),
        session_config=SessionConfig(),
    )
    try:
        targets = getattr(connections, "_targets", None)
        if targets is None:
            return None
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            targets()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)
    finally:
        trust.close()


async def run(bench: Bench, result: Result) -> None:
    # More queued than receivers plus finishes, so the queue never runs dry.
    queued = 500
    finishes = 5 if bench.quick else 60
    repeats = 5 if bench.quick else 30
    limits: dict[str, Any] = {"registry_max_peers": MAX_PEERS}
    for receivers in RECEIVERS:
        key = f"p{receivers}"
        if bench.quick:
            queued = receivers + finishes + 5
        times = await asyncio.to_thread(_plan_times, receivers, queued, repeats)
        result.add(
            f"{key}.plan",
            Figure(
                f"P={receivers}: one plan over {queued} queued (scheduler.plan)",
                times["plan_s"] * 1000,
                unit="ms",
                reference=times["reference_s"] * 1000,
                reference_label="rules one job at a time (as first written)",
            ),
        )
        quiet = await _dispatch_latency(
            bench.path(f"sim-{key}-0"), receivers, queued, finishes, followers=0
        )
        loud = await _dispatch_latency(
            bench.path(f"sim-{key}-f"), receivers, queued, finishes, followers=FOLLOWERS
        )
        quiet_ms, loud_ms = median(quiet["latencies_ms"]), median(loud["latencies_ms"])
        memory_fs = await asyncio.to_thread(_memory_filesystem)
        if memory_fs is not None:
            with tempfile.TemporaryDirectory(dir=memory_fs) as tmp:
                nosync = await _dispatch_latency(Path(tmp), receivers, queued, finishes, 0)
            nosync_ms: float | None = median(nosync["latencies_ms"])
        else:
            nosync_ms = None
        result.add(
            f"{key}.idle_to_dispatch",
            Figure(
                f"P={receivers}: receiver idle → next dispatch there (median)",
                quiet_ms,
                unit="ms",
                target="< 10 ms",
                met=quiet_ms < 10,
                note=f"p90 {quantile(quiet['latencies_ms'], 0.9):.1f} ms",
            ),
        )
        result.add(
            f"{key}.idle_to_dispatch_no_fsync",
            Figure(
                f"P={receivers}: the same with the database on tmpfs (commits cost ~0)",
                nosync_ms,
                unit="ms",
                reference=quiet_ms,
                reference_label="on this machine's disk",
                note="" if nosync_ms is not None else "no writable /dev/shm",
            ),
        )
        result.add(
            f"{key}.fan_out",
            Figure(
                f"P={receivers}: idle → dispatch with {FOLLOWERS} event followers",
                loud_ms,
                unit="ms",
                reference=quiet_ms,
                reference_label="no followers",
            ),
        )
        memory = await asyncio.to_thread(_memory, bench.path(f"mem-{key}"), receivers, queued)
        total = memory["registry_bytes"] + memory["queued_jobs_bytes"]
        result.add(
            f"{key}.memory",
            Figure(
                f"P={receivers}: registry + {queued} queued jobs (tracemalloc)",
                total / 1024 / 1024,
                unit="MB",
                note=f"{memory['registry_bytes'] / receivers / 1024:.1f} KB per receiver, "
                f"{memory['queued_jobs_bytes'] / queued / 1024:.1f} KB per queued job",
            ),
        )
        dialer = await asyncio.to_thread(
            _dialer_pass, bench.path(f"trust-{key}"), receivers, repeats
        )
        result.add(
            f"{key}.dialer_pass",
            Figure(
                f"P={receivers}: dialer's target scan per registry change (daemon only)",
                None if dialer is None else dialer * 1000,
                unit="ms",
                note="" if dialer is not None else "Connections._targets is gone (renamed?)",
            ),
        )
        result.details[key] = {
            "plan_ms": round(times["plan_s"] * 1000, 3),
            "reference_plan_ms": round(times["reference_s"] * 1000, 3),
            "placer_place_ms": round(times["placer_s"] * 1000, 3),
            "plans_per_s": round(1 / times["plan_s"], 1),
            "placements_per_s": round(queued / times["plan_s"]),
            "idle_to_dispatch_tmpfs_ms": None if nosync_ms is None else round(nosync_ms, 2),
            "idle_to_dispatch_ms": {
                "median": round(quiet_ms, 2),
                "p90": round(quantile(quiet["latencies_ms"], 0.9), 2),
                "max": round(max(quiet["latencies_ms"]), 2),
                "samples": len(quiet["latencies_ms"]),
            },
            "with_followers_ms": {
                "median": round(loud_ms, 2),
                "p90": round(quantile(loud["latencies_ms"], 0.9), 2),
                "events_per_follower": loud["events_followed"] // FOLLOWERS,
                "bytes_per_follower": loud["bytes_per_follower"],
            },
            "submit_ms_per_job": round(quiet["submit_ms_per_job"], 3),
            "fill_all_receivers_s": round(quiet["fill_all_receivers_s"], 3),
            "sqlite_commit_ms_median": round(quiet["store_save_ms_median"], 3),
            "lane_status_event_bytes": quiet["lane_status_event_bytes"],
            "memory_bytes": memory,
            "dialer_pass_ms": None if dialer is None else round(dialer * 1000, 3),
        }
    result.details["limits"] = limits


SCENARIO = Scenario(8, "simulated-mesh", "A simulated large mesh, in-process", KEYS, run)
