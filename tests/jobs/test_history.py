"""The job history: pruned past its limits (never what an active job needs), read in pages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshd.db import DB_FILENAME
from meshd.jobs.engine import Engine
from meshd.jobs.history import HistoryLimits
from meshd.jobs.model import WAITING_DEVICE, Job, JobStatus, JobType
from meshd.jobs.options import JobOptions
from meshd.jobs.store import JobStore
from tests.jobs.conftest import Harness, all_runners
from tests.jobs.gated import GatedRunner

DAY = 86400.0
S = JobStatus


def _terminal(seq: int, *, age_days: float = 0.0, status: JobStatus = S.COMPLETED) -> Job:
    finished = time.time() - age_days * DAY
    return Job(
        id=f"{seq:012x}",
        seq=seq,
        type=JobType.COMPILE,
        status=status,
        configuration=f"/cfg/c{seq}.yaml",
        created_at=finished - 10,
        finished_at=finished,
    )


def _seed(data: Path, jobs: list[Job]) -> None:
    """Rows and log files as a long-running daemon would have left them."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "logs").mkdir(exist_ok=True)
    store = JobStore(data / DB_FILENAME)
    store.save_many(jobs)
    store.close()
    for job in jobs:
        (data / "logs" / f"{job.id}.log").write_text(f"queued compile for {job.configuration}\n")


def _ids(data: Path) -> set[str]:
    store = JobStore(data / DB_FILENAME)
    try:
        return {job.id for job in store.load_all()}
    finally:
        store.close()


def _logs(data: Path) -> set[str]:
    return {path.stem for path in (data / "logs").glob("*.log")}


async def _eventually(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll a condition on disk (the prune publishes no event), bounded."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_prune_keeps_the_newest_and_the_young_and_whatever_active_jobs_need(
    tmp_path: Path, gate: GatedRunner
) -> None:
    data = tmp_path / "data"
    old = [_terminal(seq, age_days=40) for seq in (1, 3, 4)]  # past the age limit
    recent = [_terminal(seq, age_days=1, status=S.FAILED) for seq in range(5, 13)]
    # An armed upload whose compile is 40 days old and past the count: the compile stays.
    needed = _terminal(2, age_days=40)
    armed = Job(
        id=f"{13:012x}",
        seq=13,
        type=JobType.UPLOAD,
        configuration=needed.configuration,
        depends_on=needed.id,
        options=JobOptions(when_online=True, device_name="kitchen"),
        waiting=WAITING_DEVICE,
        waiting_since=time.time(),
        waiting_until=time.time() + DAY,
    )
    queued = Job(id=f"{14:012x}", seq=14, type=JobType.CLEAN, configuration="/cfg/x.yaml")
    newest = [_terminal(seq) for seq in range(15, 18)]
    _seed(data, [*old, *recent, needed, armed, queued, *newest])

    engine = Engine(data, all_runners(gate), history=HistoryLimits(keep=5, max_age=30 * DAY))
    await engine.start()
    try:
        # The prune runs at start, in the background: wait for its effect.
        await _eventually(lambda: len(_ids(data)) <= 8)
        kept_terminal = {job.id for job in [*recent[-2:], *newest]}  # the newest five
        assert _ids(data) == kept_terminal | {needed.id, armed.id, queued.id}
        assert _logs(data) == _ids(data)
        assert engine.get(armed.id).waiting == WAITING_DEVICE
        # A second run finds nothing more to do.
        assert await engine.prune_history() == []
    finally:
        await engine.stop()

    # After a restart the armed upload is still armed: its prerequisite was not pruned.
    again = Engine(data, all_runners(gate), history=HistoryLimits(keep=5, max_age=30 * DAY))
    await again.start()
    try:
        assert [job.id for job in again.armed_uploads()] == [armed.id]
    finally:
        await again.stop()


async def test_age_alone_prunes_when_under_the_count(tmp_path: Path, gate: GatedRunner) -> None:
    data = tmp_path / "data"
    _seed(data, [_terminal(1, age_days=10), _terminal(2, age_days=2), _terminal(3)])
    engine = Engine(data, all_runners(gate), history=HistoryLimits(keep=100, max_age=5 * DAY))
    await engine.start()
    try:
        await _eventually(lambda: f"{1:012x}" not in _ids(data))
        assert _ids(data) == {f"{2:012x}", f"{3:012x}"}
    finally:
        await engine.stop()


async def test_prune_runs_periodically_on_jobs_that_finish_later(
    tmp_path: Path, gate: GatedRunner
) -> None:
    data = tmp_path / "data"
    engine = Engine(data, all_runners(gate), history=HistoryLimits(keep=2, interval=0.2))
    harness = Harness(engine, gate)
    await engine.start()
    try:
        finished = []
        for index in range(4):
            job = engine.submit(JobType.COMPILE, f"/cfg/p{index}.yaml")
            await harness.started(job)
            gate.release(job.id)
            await harness.status(job, S.COMPLETED)
            finished.append(job)
        newest = {finished[2].id, finished[3].id}
        await _eventually(lambda: _ids(data) == newest)
        assert _logs(data) == newest
    finally:
        await engine.stop()


async def test_the_prune_deletes_in_batches(
    tmp_path: Path, gate: GatedRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meshd.jobs.history.PRUNE_BATCH", 3)
    data = tmp_path / "data"
    _seed(data, [_terminal(seq, age_days=60) for seq in range(1, 11)])
    engine = Engine(data, all_runners(gate))
    await engine.start()
    try:
        await _eventually(lambda: not _ids(data))
        assert not _logs(data)
    finally:
        await engine.stop()


# -- pages --------------------------------------------------------------------------


async def test_pages_walk_the_history_newest_first_without_gaps(
    tmp_path: Path, gate: GatedRunner
) -> None:
    data = tmp_path / "data"
    _seed(
        data, [_terminal(seq, status=S.FAILED if seq % 3 else S.COMPLETED) for seq in range(1, 26)]
    )
    engine = Engine(data, all_runners(gate))
    await engine.start()
    try:
        first = engine.page(limit=10)
        assert [job.seq for job in first.jobs] == list(range(16, 26))  # oldest first
        assert first.next_before == 16
        second = engine.page(limit=10, before=first.next_before)
        assert [job.seq for job in second.jobs] == list(range(6, 16))
        last = engine.page(limit=10, before=second.next_before)
        assert [job.seq for job in last.jobs] == list(range(1, 6))
        assert last.next_before is None
        exact = engine.page(limit=25)
        assert len(exact.jobs) == 25 and exact.next_before is None

        completed = engine.page(limit=4, statuses={S.COMPLETED})
        assert [job.seq for job in completed.jobs] == [12, 15, 18, 21, 24][-4:]
        assert completed.next_before == 15
        rest = engine.page(limit=4, before=completed.next_before, statuses={S.COMPLETED})
        assert [job.seq for job in rest.jobs] == [3, 6, 9, 12]
    finally:
        await engine.stop()


async def test_a_page_shows_active_jobs_as_they_are_in_memory(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    job = eng.submit(JobType.COMPILE, "/cfg/a.yaml")
    await harness.started(job)
    await harness.until(lambda: eng.get(job.id).progress is not None)
    [shown] = eng.page(limit=5, statuses={S.RUNNING}).jobs
    assert shown is eng.get(job.id)  # the live job, progress included
    assert shown.progress == 0.5
    gate.release(job.id)
    await harness.status(job, S.COMPLETED)


def test_store_reads_pages_restore_and_prunes_through_indexes(tmp_path: Path) -> None:
    """The queries the store really runs: none of them scans the whole table."""
    store = JobStore(tmp_path / DB_FILENAME)
    store.save_many([_terminal(seq) for seq in range(1, 50)])
    conn = store._conn
    traced: list[str] = []
    conn.set_trace_callback(traced.append)
    store.page(limit=10)
    store.page(limit=10, before=20, statuses=["failed"])
    store.page(limit=10, statuses=["queued", "running"])
    store.load_active()
    store.prunable(keep=5, finished_before=time.time() - DAY, limit=100)
    store.max_seq()
    conn.set_trace_callback(None)
    selects = [sql for sql in traced if sql.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 7
    for sql in selects:
        plan = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        full_scans = [step for step in plan if step.startswith("SCAN jobs") and "INDEX" not in step]
        assert not full_scans, (sql, plan)
    unfiltered = [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {selects[0]}")]
    assert not any("TEMP B-TREE" in step for step in unfiltered), unfiltered
    store.close()
