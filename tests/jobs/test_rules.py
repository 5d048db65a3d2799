"""The queue rules of DESIGN.md, each pinned against real child processes."""

from __future__ import annotations

import asyncio

import pytest

from meshd.jobs import events
from meshd.jobs.engine import EngineStopped, InvalidJob, UnknownJob
from meshd.jobs.model import JobStatus, JobType, LaneName
from tests.jobs.conftest import Harness
from tests.support.pids import gone


async def test_install_chain_holds_upload_until_compile_completes(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    compile_job, upload_job = eng.install("a.yaml", "10.0.0.5")
    assert upload_job.depends_on == compile_job.id
    await harness.started(compile_job)
    assert eng.is_held(upload_job.id)
    assert eng.lane_status(LaneName.UPLOAD).queued == 0
    assert not gate.ever_started(upload_job.id)

    gate.release(compile_job.id)
    await harness.started(upload_job)
    gate.release(upload_job.id)
    await harness.status(upload_job, JobStatus.COMPLETED)
    assert eng.get(compile_job.id).status is JobStatus.COMPLETED
    assert harness.types_for(upload_job) == [
        events.JOB_QUEUED,
        events.JOB_STARTED,
        events.JOB_OUTPUT,
        events.JOB_OUTPUT,
        events.JOB_PROGRESS,
        events.JOB_OUTPUT,
        events.JOB_COMPLETED,
    ]


async def test_upload_runs_while_another_compile_runs_to_completion(harness: Harness) -> None:
    """The pipelining e2e: a re-serialised queue (one job at a time) fails this test."""
    eng, gate = harness.engine, harness.gate
    first_compile, first_upload = eng.install("a.yaml", "10.0.0.5")
    await harness.started(first_compile)
    gate.release(first_compile.id)
    await harness.started(first_upload)  # parked RUNNING on the upload lane

    second_compile, second_upload = eng.install("b.yaml", "10.0.0.6")
    await harness.started(second_compile)
    assert eng.get(first_upload.id).status is JobStatus.RUNNING
    gate.release(second_compile.id)
    await harness.status(second_compile, JobStatus.COMPLETED)
    assert eng.get(first_upload.id).status is JobStatus.RUNNING, (
        "the compile had to wait for the upload"
    )

    # The second upload (another device) runs alongside the first.
    await harness.started(second_upload)
    gate.release(first_upload.id)
    gate.release(second_upload.id)
    await harness.status(first_upload, JobStatus.COMPLETED)
    await harness.status(second_upload, JobStatus.COMPLETED)


async def test_cancel_queued_compile_cascades_and_no_upload_ever_starts(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    blocker = eng.submit(JobType.COMPILE, "other.yaml")
    await harness.started(blocker)
    compile_job, upload_job = eng.install("a.yaml", "10.0.0.5")
    assert eng.get(compile_job.id).status is JobStatus.QUEUED

    cancelled = await eng.cancel(compile_job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert eng.get(upload_job.id).status is JobStatus.CANCELLED
    assert "prerequisite" in (eng.get(upload_job.id).error or "")

    gate.release(blocker.id)
    await harness.status(blocker, JobStatus.COMPLETED)
    await asyncio.sleep(0.2)  # give a wrongly released upload the chance to start
    assert not gate.ever_started(compile_job.id)
    assert not gate.ever_started(upload_job.id)


async def test_cancel_running_compile_kills_process_group_and_cascades(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    compile_job, upload_job = eng.install("a.yaml", "10.0.0.5")
    await harness.started(compile_job)
    pid, grandchild = gate.pids(compile_job.id)

    await eng.cancel(compile_job.id)
    assert eng.get(compile_job.id).status is JobStatus.CANCELLED
    assert eng.get(upload_job.id).status is JobStatus.CANCELLED
    assert await gone(pid, grandchild)
    assert not gate.ever_started(upload_job.id)


async def test_cancel_escalates_to_sigkill_after_grace(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    job = eng.submit(JobType.COMPILE, "a.yaml")
    gate.ignore_term.add(job.id)
    await harness.started(job)
    pid, grandchild = gate.pids(job.id)
    await eng.cancel(job.id)
    assert eng.get(job.id).status is JobStatus.CANCELLED
    assert await gone(pid, grandchild)


async def test_failed_compile_cancels_its_upload(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    compile_job, upload_job = eng.install("a.yaml", "10.0.0.5")
    await harness.started(compile_job)
    gate.release(compile_job.id, code=3)
    await harness.status(upload_job, JobStatus.CANCELLED)
    assert eng.get(compile_job.id).status is JobStatus.FAILED
    assert eng.get(compile_job.id).error == "exit code 3"
    assert not gate.ever_started(upload_job.id)


async def test_supersede_cancels_both_halves_of_the_old_chain(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    old_compile, old_upload = eng.install("a.yaml", "10.0.0.5")
    await harness.started(old_compile)
    new_compile, new_upload = eng.install("a.yaml", "10.0.0.5")
    await harness.status(old_compile, JobStatus.CANCELLED)
    assert eng.get(old_upload.id).status is JobStatus.CANCELLED
    assert "superseded" in (eng.get(old_compile.id).error or "")

    await harness.started(new_compile)
    gate.release(new_compile.id)
    await harness.started(new_upload)
    gate.release(new_upload.id)
    await harness.status(new_upload, JobStatus.COMPLETED)
    assert not gate.ever_started(old_upload.id)


async def test_supersede_with_a_terminal_half_does_not_raise(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    compile_job, upload_job = eng.install("a.yaml", "10.0.0.5")
    await harness.started(compile_job)
    gate.release(compile_job.id)
    await harness.started(upload_job)
    # The compile is completed, the upload running: a new compile supersedes only it.
    newer = eng.submit(JobType.COMPILE, "a.yaml")
    await harness.status(upload_job, JobStatus.CANCELLED)
    assert eng.get(compile_job.id).status is JobStatus.COMPLETED
    await harness.started(newer)
    gate.release(newer.id)
    await harness.status(newer, JobStatus.COMPLETED)


async def test_supersede_leaves_other_configurations_alone(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    a = eng.submit(JobType.COMPILE, "a.yaml")
    await harness.started(a)
    b = eng.submit(JobType.COMPILE, "b.yaml")
    assert eng.get(a.id).status is JobStatus.RUNNING
    gate.release(a.id)
    await harness.started(b)
    gate.release(b.id)
    await harness.status(b, JobStatus.COMPLETED)


async def test_build_jobs_never_supersede_a_clean(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    clean = eng.submit(JobType.CLEAN, "a.yaml")
    await harness.started(clean)
    compile_job, upload_job = eng.install("a.yaml", "10.0.0.5")
    assert eng.get(clean.id).status is JobStatus.RUNNING
    gate.release(clean.id)
    await harness.started(compile_job)  # FIFO: the build runs after the clean
    gate.release(compile_job.id)
    await harness.started(upload_job)
    gate.release(upload_job.id)
    await harness.status(upload_job, JobStatus.COMPLETED)
    assert eng.get(clean.id).status is JobStatus.COMPLETED


async def test_clean_cancels_its_configuration_chain_only(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    a_compile, a_upload = eng.install("a.yaml", "10.0.0.5")
    await harness.started(a_compile)
    b_compile, b_upload = eng.install("b.yaml", "10.0.0.6")
    clean = eng.submit(JobType.CLEAN, "a.yaml")
    await harness.status(a_compile, JobStatus.CANCELLED)
    assert eng.get(a_upload.id).status is JobStatus.CANCELLED
    assert eng.get(b_compile.id).status is JobStatus.QUEUED
    await harness.started(b_compile)
    gate.release(b_compile.id)
    await harness.started(clean)
    gate.release(clean.id)
    await harness.started(b_upload)
    gate.release(b_upload.id)
    await harness.status(b_upload, JobStatus.COMPLETED)


async def test_reset_cancels_every_active_job_on_both_lanes(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    a_compile, a_upload = eng.install("a.yaml", "10.0.0.5")
    await harness.started(a_compile)
    gate.release(a_compile.id)
    await harness.started(a_upload)
    b_compile, b_upload = eng.install("b.yaml", "10.0.0.6")
    await harness.started(b_compile)
    c = eng.submit(JobType.COMPILE, "c.yaml")

    reset = eng.submit(JobType.RESET_BUILD_ENV, "/configs")
    for job in (a_upload, b_compile, b_upload, c):
        await harness.status(job, JobStatus.CANCELLED)
    await harness.started(reset)
    gate.release(reset.id)
    await harness.status(reset, JobStatus.COMPLETED)
    assert not gate.ever_started(c.id)


async def test_build_gate_holds_uploads_during_same_config_clean(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    clean = eng.submit(JobType.CLEAN, "a.yaml")
    await harness.started(clean)
    gated_upload = eng.submit(JobType.UPLOAD, "a.yaml", "10.0.0.5")
    free_upload = eng.submit(JobType.UPLOAD, "b.yaml", "10.0.0.6")
    await harness.started(free_upload)
    await asyncio.sleep(0.2)
    assert eng.get(gated_upload.id).status is JobStatus.QUEUED
    assert not gate.ever_started(gated_upload.id)
    gate.release(clean.id)
    await harness.started(gated_upload)
    gate.release(gated_upload.id)
    gate.release(free_upload.id)
    await harness.status(gated_upload, JobStatus.COMPLETED)


async def test_build_gate_holds_every_upload_during_reset(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    reset = eng.submit(JobType.RESET_BUILD_ENV, "/configs")
    await harness.started(reset)
    upload = eng.submit(JobType.UPLOAD, "b.yaml", "10.0.0.6")
    await asyncio.sleep(0.2)
    assert eng.get(upload.id).status is JobStatus.QUEUED
    gate.release(reset.id)
    await harness.started(upload)
    gate.release(upload.id)
    await harness.status(upload, JobStatus.COMPLETED)


async def test_never_two_uploads_to_one_device(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    first = eng.submit(JobType.UPLOAD, "a.yaml", "10.0.0.5")
    second = eng.submit(JobType.UPLOAD, "a2.yaml", "10.0.0.5")
    other = eng.submit(JobType.UPLOAD, "b.yaml", "10.0.0.6")
    await harness.started(first)
    await harness.started(other)
    await asyncio.sleep(0.2)
    assert eng.get(second.id).status is JobStatus.QUEUED
    gate.release(first.id)
    await harness.started(second)
    gate.release(second.id)
    gate.release(other.id)
    await harness.status(second, JobStatus.COMPLETED)


async def test_upload_slots_bound_concurrency(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    uploads = [eng.submit(JobType.UPLOAD, f"d{i}.yaml", f"10.0.0.{i}") for i in range(6)]
    for job in uploads[:4]:
        await harness.started(job)
    await asyncio.sleep(0.2)
    assert [eng.get(j.id).status for j in uploads[4:]] == [JobStatus.QUEUED, JobStatus.QUEUED]
    assert len(eng.lane_status(LaneName.UPLOAD).running) == 4
    gate.release(uploads[0].id)
    await harness.started(uploads[4])  # FIFO: the oldest waiting upload goes next
    assert eng.get(uploads[5].id).status is JobStatus.QUEUED
    for job in uploads:
        gate.release(job.id)
    for job in uploads:
        await harness.status(job, JobStatus.COMPLETED)


async def test_compile_lane_is_fifo_with_one_slot(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    jobs = [eng.submit(JobType.COMPILE, f"c{i}.yaml") for i in range(3)]
    order = []
    for job in jobs:
        await harness.started(job)
        assert sum(eng.get(j.id).status is JobStatus.RUNNING for j in jobs) == 1
        order.append(job.id)
        gate.release(job.id)
    assert order == [j.id for j in jobs]


async def test_cancel_of_terminal_job_is_a_no_op_and_unknown_ids_raise(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    job = eng.submit(JobType.COMPILE, "a.yaml")
    await harness.started(job)
    gate.release(job.id)
    await harness.status(job, JobStatus.COMPLETED)
    assert (await eng.cancel(job.id)).status is JobStatus.COMPLETED
    with pytest.raises(UnknownJob):
        await eng.cancel("0123456789ab")


async def test_invalid_jobs_are_refused_before_anything_changes(harness: Harness) -> None:
    eng = harness.engine
    running = eng.submit(JobType.COMPILE, "a.yaml")
    await harness.started(running)
    with pytest.raises(InvalidJob, match="device"):
        eng.submit(JobType.UPLOAD, "a.yaml")
    with pytest.raises(InvalidJob, match="new name"):
        eng.submit(JobType.RENAME, "a.yaml")
    assert eng.get(running.id).status is JobStatus.RUNNING  # nothing was superseded
    harness.gate.release(running.id)
    await harness.status(running, JobStatus.COMPLETED)


async def test_lane_is_released_before_terminal_event(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    seen = []

    def on_event(event: events.Event) -> None:
        if event.type == events.JOB_COMPLETED:
            seen.append(eng.lane_status(LaneName.COMPILE))

    eng.bus.add_listener(on_event)
    before = eng.lane_status(LaneName.COMPILE)
    assert before.idle
    job = eng.submit(JobType.COMPILE, "a.yaml")
    await harness.started(job)
    busy = eng.lane_status(LaneName.COMPILE)
    assert not busy.idle and busy.running == (job.id,) and busy.idle_since is None
    gate.release(job.id)
    await harness.status(job, JobStatus.COMPLETED)
    assert len(seen) == 1 and seen[0].idle
    assert seen[0].idle_since is not None and seen[0].idle_since >= (before.idle_since or 0)
    lane_events = [e for e in harness.events if isinstance(e, events.LaneStatusChanged)]
    idle_flags = [e.snapshot.idle for e in lane_events if e.snapshot.lane is LaneName.COMPILE]
    transitions = [flag for i, flag in enumerate(idle_flags) if i == 0 or flag != idle_flags[i - 1]]
    assert transitions == [False, True]


async def test_every_event_is_durable_before_it_is_announced(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    mismatches = []
    from meshd.jobs.store import JobStore

    reader = JobStore(eng.store.path)

    def check(event: events.Event) -> None:
        if not isinstance(event, events.JobQueued | events.JobStarted | events.JobFinished):
            return
        job = event.job
        row = {j.id: j for j in reader.load_all()}.get(job.id)
        if row is None or row.status is not job.status:
            mismatches.append((event.type, job.status, row and row.status))

    eng.bus.add_listener(check)
    compile_job, upload_job = eng.install("a.yaml", "10.0.0.5")
    await harness.started(compile_job)
    gate.release(compile_job.id)
    await harness.started(upload_job)
    gate.release(upload_job.id, code=1)
    await harness.status(upload_job, JobStatus.FAILED)
    reader.close()
    assert mismatches == []
    assert len([e for e in harness.events if e.type.startswith("job_")]) > 6


async def test_logs_go_to_one_file_per_job(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    job = eng.submit(JobType.COMPILE, "a.yaml")
    await harness.started(job)
    gate.release(job.id)
    await harness.status(job, JobStatus.COMPLETED)
    lines = list(eng.logs.read_lines(job.id))
    assert "building" in lines and "exit 0" in lines
    assert lines[-1] == "completed"
    assert eng.logs.path(job.id).parent == eng.data_dir / "logs"
    with pytest.raises(ValueError, match="not a job id"):
        eng.logs.path("../../etc/passwd")


async def test_progress_events_are_throttled(harness: Harness) -> None:
    eng = harness.engine
    job = eng.submit(JobType.COMPILE, "a.yaml")
    from meshd.jobs.runner import JobContext

    ctx = JobContext(job, eng._log_for(job), eng._progress_for(job))
    for step in range(1000):
        ctx.progress(step / 1000)
    ctx.progress(1.0)
    progress = [e.progress for e in harness.events if isinstance(e, events.JobProgress)]
    assert 90 <= len(progress) <= 102
    assert progress[-1] == 1.0
    await harness.started(job)
    harness.gate.release(job.id)
    await harness.status(job, JobStatus.COMPLETED)


async def test_stopped_engine_refuses_work(harness: Harness) -> None:
    eng = harness.engine
    job = eng.submit(JobType.COMPILE, "a.yaml")
    await harness.started(job)
    pid, grandchild = harness.gate.pids(job.id)
    await eng.stop()
    assert await gone(pid, grandchild)
    with pytest.raises(EngineStopped):
        eng.submit(JobType.COMPILE, "b.yaml")
