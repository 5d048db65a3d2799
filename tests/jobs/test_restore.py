"""Restore after a stop or a crash: running jobs re-queue, dependents follow the rules."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

from meshd.db import DB_FILENAME
from meshd.jobs.engine import Engine
from meshd.jobs.model import WAITING_DEVICE, Job, JobStatus, JobType
from meshd.jobs.options import JobOptions
from meshd.jobs.store import JobStore
from tests.jobs.conftest import Harness, all_runners
from tests.jobs.gated import GatedRunner
from tests.support.pids import gone, pid_alive

REPO = Path(__file__).resolve().parents[2]


def _job(name: str, seq: int, job_type: JobType, status: JobStatus, dep: str | None = None) -> Job:
    return Job(
        id=f"{seq:012x}",
        seq=seq,
        type=job_type,
        status=status,
        configuration=f"{name}.yaml",
        device="10.0.0.1" if job_type is JobType.UPLOAD else None,
        depends_on=dep,
    )


def _scenario() -> dict[str, Job]:
    """A database as a crash might leave it, one job per restore rule."""
    cc, up = JobType.COMPILE, JobType.UPLOAD
    S = JobStatus
    jobs = {
        "a": _job("a", 1, cc, S.RUNNING),
        "b": _job("b", 3, cc, S.FAILED),
        "d": _job("d", 6, cc, S.COMPLETED),
        "e": _job("e", 8, cc, S.CANCELLED),
        "f_up": _job("f", 10, up, S.RUNNING),
        "g": _job("g", 11, cc, S.QUEUED),
    }
    jobs["a_up"] = _job("a", 2, up, S.QUEUED, jobs["a"].id)
    jobs["b_up"] = _job("b", 4, up, S.QUEUED, jobs["b"].id)
    jobs["missing_up"] = _job("c", 5, up, S.QUEUED, "0000deadbeef")
    jobs["d_up"] = _job("d", 7, up, S.QUEUED, jobs["d"].id)
    jobs["e_up"] = _job("e", 9, up, S.QUEUED, jobs["e"].id)
    # A dependent of a dependent whose prerequisite failed: cancelled transitively.
    jobs["b_up2"] = _job("b", 12, up, S.QUEUED, jobs["b_up"].id)
    # A dependent of a held dependent stays held.
    jobs["a_up2"] = _job("a", 13, up, S.QUEUED, jobs["a_up"].id)
    # Armed uploads: one still inside its deadline stays armed, one past it fails.
    jobs["h"] = _job("h", 14, cc, S.COMPLETED)
    jobs["h_up"] = _armed(_job("h", 15, up, S.QUEUED, jobs["h"].id), time.time() + 3600)
    jobs["i"] = _job("i", 16, cc, S.COMPLETED)
    jobs["i_up"] = _armed(_job("i", 17, up, S.QUEUED, jobs["i"].id), time.time() - 1)
    return jobs


def _armed(job: Job, deadline: float) -> Job:
    job.device = None
    job.options = JobOptions(when_online=True, device_name=f"dev-{job.seq}")
    job.waiting = WAITING_DEVICE
    job.waiting_since = deadline - 7200
    job.waiting_until = deadline
    return job


EXPECTED = {
    "a": "lane",
    "a_up": "held",
    "a_up2": "held",
    "b": "failed",
    "b_up": "cancelled",
    "b_up2": "cancelled",
    "missing_up": "cancelled",
    "d": "completed",
    "d_up": "lane",
    "e": "cancelled",
    "e_up": "cancelled",
    "f_up": "lane",
    "g": "lane",
    "h": "completed",
    "h_up": "armed",
    "i": "completed",
    "i_up": "failed",
}


def _placement(engine: Engine, job: Job) -> str:
    current = engine.get(job.id)
    if current.status.terminal:
        return current.status.value
    if engine.is_held(job.id):
        return "held"
    if any(armed.id == job.id for armed in engine.armed_uploads()):
        return "armed"
    assert engine.lane(current.lane).is_queued(job.id), f"{job.id} is active but nowhere"
    return "lane"


def _orders(names: list[str]) -> list[list[str]]:
    rng = random.Random(1234)
    shuffled = [rng.sample(names, len(names)) for _ in range(4)]
    return [sorted(names), sorted(names, reverse=True), *shuffled]


@pytest.mark.parametrize("order_index", range(6))
async def test_restore_is_the_same_in_any_row_order(
    tmp_path: Path, gate: GatedRunner, order_index: int
) -> None:
    jobs = _scenario()
    order = _orders(list(jobs))[order_index]
    data = tmp_path / "data"
    data.mkdir()
    store = JobStore(data / DB_FILENAME)
    for name in order:  # rowid order = read order
        store.save(jobs[name])
    store.close()

    engine = Engine(data, all_runners(gate))
    await engine.start()  # restore is synchronous: nothing has started yet
    try:
        placements = {name: _placement(engine, job) for name, job in jobs.items()}
        assert placements == EXPECTED
        restarted_log = list(engine.logs.read_lines(jobs["a"].id))
        assert any("restarted" in line for line in restarted_log)
        assert "failed" in (engine.get(jobs["b_up2"].id).error or "") or "cancelled" in (
            engine.get(jobs["b_up2"].id).error or ""
        )
    finally:
        await engine.stop()


async def test_restore_cancels_are_persisted_and_not_redone(
    tmp_path: Path, gate: GatedRunner
) -> None:
    jobs = _scenario()
    data = tmp_path / "data"
    data.mkdir()
    store = JobStore(data / DB_FILENAME)
    for job in jobs.values():
        store.save(job)
    store.close()

    first = Engine(data, all_runners(gate))
    await first.start()
    finished_at = first.get(jobs["missing_up"].id).finished_at
    await first.stop()

    second = Engine(data, all_runners(gate))
    await second.start()
    try:
        again = second.get(jobs["missing_up"].id)
        assert again.status is JobStatus.CANCELLED
        assert again.finished_at == finished_at
        cancel_lines = [
            line for line in second.logs.read_lines(again.id) if line.startswith("cancelled")
        ]
        assert len(cancel_lines) == 1
    finally:
        await second.stop()


async def test_shutdown_requeues_running_jobs_and_restart_finishes_them(
    tmp_path: Path, gate: GatedRunner
) -> None:
    data = tmp_path / "data"
    engine = Engine(data, all_runners(gate))
    harness = Harness(engine, gate)
    await engine.start()
    compile_job, upload_job = engine.install("a.yaml", "10.0.0.5")
    await harness.started(compile_job)
    pid, grandchild = gate.pids(compile_job.id)
    await engine.stop()
    assert await gone(pid, grandchild)
    reader = JobStore(data / DB_FILENAME)
    statuses = {job.id: job.status for job in reader.load_all()}
    reader.close()
    assert statuses == {compile_job.id: JobStatus.QUEUED, upload_job.id: JobStatus.QUEUED}

    gate.started_marker(compile_job.id).unlink()
    restarted = Engine(data, all_runners(gate))
    harness = Harness(restarted, gate)
    await restarted.start()
    try:
        assert restarted.is_held(upload_job.id)
        await harness.started(compile_job)
        gate.release(compile_job.id)
        await harness.started(upload_job)
        gate.release(upload_job.id)
        await harness.status(upload_job, JobStatus.COMPLETED)
    finally:
        await restarted.stop()


@pytest.mark.parametrize("phase", ["compile", "upload"])
async def test_sigkill_mid_chain_then_restart_loses_nothing(
    tmp_path: Path, gate: GatedRunner, phase: str
) -> None:
    data = tmp_path / "data"
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.jobs.crash_worker",
        str(data),
        str(gate.directory),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert worker.stdout is not None
        ids = json.loads(await asyncio.wait_for(worker.stdout.readline(), 30))
        await gate.wait_started(ids["compile"])
        await gate.wait_started(ids["other"])
        if phase == "upload":
            gate.release(ids["compile"])
            await gate.wait_started(ids["upload"])
        running = [ids["other"], ids["upload"] if phase == "upload" else ids["compile"]]
        orphans = [gate.pids(job_id) for job_id in running]
    finally:
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
    # The group leaders die with the daemon (PR_SET_PDEATHSIG); what they started is
    # left running in their groups, as PlatformIO's compilers would be.
    for pid, _child in orphans:
        assert await gone(pid)
    assert all(pid_alive(child) for _pid, child in orphans)
    for marker in gate.directory.glob("*.started"):
        marker.unlink()

    engine = Engine(data, all_runners(gate))
    harness = Harness(engine, gate)
    await engine.start()
    try:
        # The restore killed exactly the groups the dead daemon had started.
        for pid, child in orphans:
            assert await gone(pid, child)
        remaining = [ids["upload"], ids["other"]]
        if phase == "compile":
            remaining.insert(0, ids["compile"])
        else:
            assert engine.get(ids["compile"]).status is JobStatus.COMPLETED
        for job_id in remaining:
            job = engine.get(job_id)
            await harness.started(job)
            gate.release(job_id)
            await harness.status(job, JobStatus.COMPLETED)
        statuses = {job.id: job.status for job in engine.jobs()}
        assert statuses == dict.fromkeys(ids.values(), JobStatus.COMPLETED)
        logs = list(engine.logs.read_lines(ids["other"]))
        assert any("restarted" in line for line in logs)
    finally:
        await engine.stop()


async def test_a_crashing_lane_drains_its_sibling_before_the_error_propagates(
    tmp_path: Path, gate: GatedRunner
) -> None:
    engine = Engine(tmp_path / "data", all_runners(gate))
    harness = Harness(engine, gate)
    await engine.start()
    compile_job = engine.submit(JobType.COMPILE, "a.yaml")
    await harness.started(compile_job)
    pid, grandchild = gate.pids(compile_job.id)

    def broken(job: Job) -> bool:
        raise RuntimeError("bug in the upload lane")

    engine.upload_lane._can_start = broken
    engine.submit(JobType.UPLOAD, "b.yaml", "10.0.0.6")
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(engine.join(), 20)
    assert caught.group_contains(RuntimeError, match="bug in the upload lane")
    # The compile lane was cancelled and drained: its process is gone, its job re-queued.
    assert await gone(pid, grandchild)
    assert engine.get(compile_job.id).status is JobStatus.QUEUED
    await engine.stop()


def test_scenario_names_cover_every_rule() -> None:
    # Guards the table above from silently losing a case when edited.
    assert set(EXPECTED) == set(_scenario())
    assert {"lane", "held", "armed", "cancelled", "failed", "completed"} == set(EXPECTED.values())
