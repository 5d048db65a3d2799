"""The compile lane's dispatch pool: remote compiles beside the local slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.jobs.engine import Engine
from meshd.jobs.model import Job, JobStatus, JobType, LaneName
from meshd.jobs.options import JobOptions
from meshd.jobs.placement import ReasonCode
from meshd.jobs.runner import JobContext
from meshd.mesh.dispatch.placer import MeshPlacer
from meshd.mesh.dispatch.reroute import MAX_REROUTES, ReceiverLost, after_loss
from meshd.mesh.dispatch.scheduler import PeerView
from meshd.version_policy import VersionPolicy
from tests.jobs.conftest import Harness, all_runners
from tests.jobs.gated import GatedRunner

V = "2026.6.5"


def receiver(name: str, idle_since: float, **kw: object) -> PeerView:
    return PeerView(
        fingerprint=f"fp-{name}",
        name=name,
        trusted=True,
        connected=True,
        accepts_builds=True,
        esphome_version=str(kw.get("version", V)),
        idle=True,
        idle_since=idle_since,
    )


class FlakyRemote:
    """A remote runner (real processes) whose receiver can be 'lost' on demand.

    Like the real offloader, it reads its receiver from the placement and hands a
    loss to the mesh's re-route policy.
    """

    def __init__(self, gate: GatedRunner) -> None:
        self.gate = gate
        self.lose: set[str] = set()
        self.ran_on: dict[str, list[str]] = {}

    async def run(self, ctx: JobContext) -> None:
        receiver = ctx.placement.receiver
        assert receiver is not None and receiver == ctx.job.runner
        self.ran_on.setdefault(ctx.job.id, []).append(receiver)
        if receiver in self.lose:
            raise after_loss(
                ctx.job.options, ReceiverLost(f"receiver {receiver} vanished", receiver)
            )
        await self.gate.run(ctx)


MeshHarness = tuple[Harness, list[PeerView], FlakyRemote]


@pytest.fixture
async def mesh_harness(tmp_path: Path) -> AsyncIterator[MeshHarness]:
    local_gate = GatedRunner(tmp_path / "local")
    remote = FlakyRemote(GatedRunner(tmp_path / "remote"))
    engine = Engine(tmp_path / "data", all_runners(local_gate))
    peers: list[PeerView] = []
    # The peer views never change: that receivers are busy is known only from what the
    # lane tells the placer.
    placer = MeshPlacer(lambda: peers, local_version=lambda: V)
    placer.ready = True
    engine.use_mesh(placer, remote)
    harness = Harness(engine, local_gate)
    await engine.start()
    try:
        yield harness, peers, remote
    finally:
        await engine.stop()


def gate_of(job: Job, harness: Harness, remote: FlakyRemote) -> GatedRunner:
    current = harness.engine.get(job.id)
    return harness.gate if current.runner == "local" else remote.gate


async def test_one_compile_per_idle_receiver_plus_local_in_flight_at_once(
    mesh_harness: MeshHarness,
) -> None:
    harness, peers, remote = mesh_harness
    eng = harness.engine
    peers.extend([receiver("a", 300.0), receiver("b", 100.0), receiver("c", 200.0)])
    eng.reschedule()
    jobs = [eng.submit(JobType.COMPILE, f"d{i}.yaml") for i in range(6)]
    await harness.until(lambda: sum(eng.get(j.id).status is JobStatus.RUNNING for j in jobs) == 4)
    runners = [eng.get(j.id).runner for j in jobs[:4]]
    # FIFO order meets oldest-idle order: b (100) first, then c (200), then a (300).
    assert runners == ["fp-b", "fp-c", "fp-a", "local"]
    codes = [eng.get(j.id).reason_code for j in jobs[:4]]
    assert codes == [ReasonCode.IDLE_RECEIVER] * 3 + [ReasonCode.RECEIVERS_BUSY]
    assert eng.compile_lane.busy_receivers() == {"fp-a", "fp-b", "fp-c"}
    status = eng.lane_status(LaneName.COMPILE)
    assert len(status.remote) == 3 and len(status.running) == 4
    assert [eng.get(j.id).status for j in jobs[4:]] == [JobStatus.QUEUED] * 2
    for job in jobs[:3]:
        await remote.gate.wait_started(job.id)
    # When a receiver frees up, the next waiting job goes there.
    remote.gate.release(jobs[0].id)
    await harness.status(jobs[0], JobStatus.COMPLETED)
    await harness.until(lambda: eng.get(jobs[4].id).status is JobStatus.RUNNING)
    assert eng.get(jobs[4].id).runner == "fp-b"
    for job in jobs:
        await harness.until(
            lambda job=job: (
                eng.get(job.id).status is JobStatus.RUNNING or eng.get(job.id).status.terminal
            )
        )
        if eng.get(job.id).status is JobStatus.RUNNING:
            g = gate_of(job, harness, remote)
            await g.wait_started(job.id)
            g.release(job.id)
        await harness.status(job, JobStatus.COMPLETED)


async def test_lost_receiver_reroutes_then_builds_locally_as_last_resort(
    mesh_harness: MeshHarness,
) -> None:
    harness, peers, remote = mesh_harness
    eng = harness.engine
    names = ["a", "b", "c", "d"]
    peers.extend(receiver(n, float(i)) for i, n in enumerate(names))
    remote.lose.update(f"fp-{n}" for n in names)
    eng.reschedule()
    job = eng.submit(JobType.COMPILE, "x.yaml")
    await harness.started(job)  # the local gate: it ended up local
    assert remote.ran_on[job.id] == [f"fp-{n}" for n in names[:MAX_REROUTES]]
    current = eng.get(job.id)
    assert current.runner == "local"
    assert current.reason_code == ReasonCode.REROUTE_LIMIT
    assert current.options.excluded_receivers == tuple(f"fp-{n}" for n in names[:MAX_REROUTES])
    assert current.options.reroutes == MAX_REROUTES and current.options.force_local
    # What the engine persisted is what the policy decided.
    stored = eng.store.get(job.id)
    assert stored is not None and stored.options == current.options
    log = "\n".join(eng.logs.read_lines(job.id))
    assert log.count("re-routing") == MAX_REROUTES and "last resort" in log
    harness.gate.release(job.id)
    await harness.status(job, JobStatus.COMPLETED)


async def test_version_policy_skips_other_release(mesh_harness: MeshHarness) -> None:
    harness, peers, remote = mesh_harness
    eng = harness.engine
    peers.extend([receiver("old", 1.0, version="2026.5.0"), receiver("new", 50.0)])
    eng.reschedule()
    job = eng.submit(JobType.COMPILE, "x.yaml")
    await harness.status(job, JobStatus.RUNNING)
    assert eng.get(job.id).runner == "fp-new"
    await remote.gate.wait_started(job.id)
    remote.gate.release(job.id)
    await harness.status(job, JobStatus.COMPLETED)


async def test_exact_required_fails_the_job_and_cancels_its_upload(
    mesh_harness: MeshHarness,
) -> None:
    harness, peers, remote = mesh_harness
    eng = harness.engine
    eng.compile_lane.placer.policy = VersionPolicy.EXACT_REQUIRED  # type: ignore[union-attr]
    peers.append(receiver("old", 1.0, version="2026.6.4"))
    compile_job, upload_job = eng.install("x.yaml", "10.0.0.9")
    await harness.status(upload_job, JobStatus.CANCELLED)
    failed = eng.get(compile_job.id)
    assert failed.status is JobStatus.FAILED and failed.reason_code == ReasonCode.NO_EXACT_RECEIVER
    assert not remote.gate.ever_started(compile_job.id)


async def test_cancel_of_a_remote_compile_never_flashes(mesh_harness: MeshHarness) -> None:
    harness, peers, remote = mesh_harness
    eng = harness.engine
    peers.append(receiver("a", 1.0))
    compile_job, upload_job = eng.install("x.yaml", "10.0.0.9")
    await remote.gate.wait_started(compile_job.id)
    await eng.cancel(compile_job.id)
    assert eng.get(upload_job.id).status is JobStatus.CANCELLED
    await asyncio.sleep(0.1)
    assert not harness.gate.ever_started(upload_job.id)


async def test_forced_local_job_stays_local(mesh_harness: MeshHarness) -> None:
    harness, peers, _remote = mesh_harness
    eng = harness.engine
    peers.append(receiver("a", 1.0))
    job = eng.submit(JobType.COMPILE, "x.yaml", options=JobOptions(force_local=True))
    await harness.started(job)
    assert eng.get(job.id).runner == "local"
    assert eng.get(job.id).reason_code == ReasonCode.FORCED_LOCAL
    harness.gate.release(job.id)
    await harness.status(job, JobStatus.COMPLETED)


async def test_nothing_but_forced_local_runs_before_the_mesh_is_ready(tmp_path: Path) -> None:
    gate = GatedRunner(tmp_path / "gate")
    engine = Engine(tmp_path / "data", all_runners(gate))
    placer = MeshPlacer(lambda: [], local_version=lambda: V)
    engine.use_mesh(placer, FlakyRemote(GatedRunner(tmp_path / "remote")))
    harness = Harness(engine, gate)
    await engine.start()
    try:
        waiting = engine.submit(JobType.COMPILE, "a.yaml")
        forced = engine.submit(JobType.COMPILE, "b.yaml", options=JobOptions(force_local=True))
        await harness.started(forced)
        assert engine.get(waiting.id).status is JobStatus.QUEUED
        assert engine.get(forced.id).reason_code == ReasonCode.FORCED_LOCAL
        gate.release(forced.id)
        await harness.status(forced, JobStatus.COMPLETED)
        assert engine.get(waiting.id).status is JobStatus.QUEUED
        placer.ready = True
        engine.reschedule()
        await harness.started(waiting)  # no receivers at all: local
        assert engine.get(waiting.id).reason_code == ReasonCode.NO_ELIGIBLE_RECEIVER
        gate.release(waiting.id)
        await harness.status(waiting, JobStatus.COMPLETED)
    finally:
        await engine.stop()
