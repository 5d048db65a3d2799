"""Armed uploads: wait for the device, release on its announcement, expire, restore.

Every job here runs a real child process (``GatedRunner``); the device monitor is the
one thing played by the test, through the hooks the fleet monitor will call
(``Engine.device_seen`` and ``Engine.devices_online``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from meshd.db import DB_FILENAME
from meshd.jobs import events
from meshd.jobs.engine import Engine, InvalidJob
from meshd.jobs.model import WAITING_DEVICE, Job, JobStatus, JobType, LaneName
from meshd.jobs.options import JobOptions
from meshd.jobs.placement import ReasonCode
from meshd.jobs.store import JobStore
from tests.jobs.conftest import Harness, all_runners
from tests.jobs.gated import GatedRunner

C, Q, R, F = JobStatus.COMPLETED, JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED
ARMED = JobOptions(when_online=True, device_name="kitchen")


@asynccontextmanager
async def running(data: Path, gate: GatedRunner, **kwargs: Any) -> AsyncIterator[Harness]:
    engine = Engine(data, all_runners(gate), **kwargs)
    harness = Harness(engine, gate)
    await engine.start()
    try:
        yield harness
    finally:
        await engine.stop()


async def _armed_chain(h: Harness, config: str = "kitchen.yaml", **kw: Any) -> tuple[Job, Job]:
    """An install whose upload waits for ``kitchen``; returns once it is armed."""
    compile_job, upload_job = h.engine.install(
        config, kw.pop("device", None), upload_options=kw.pop("upload_options", ARMED)
    )
    await h.started(compile_job)
    h.gate.release(compile_job.id)
    await h.until(lambda: h.engine.get(upload_job.id).waiting == WAITING_DEVICE)
    return compile_job, upload_job


def _armed_events(h: Harness, job: Job, kind: type[events.JobEvent]) -> list[events.JobEvent]:
    return [e for e in h.events if isinstance(e, kind) and e.job.id == job.id]


async def test_armed_upload_waits_then_starts_when_its_device_announces_itself(
    harness: Harness,
) -> None:
    eng, gate = harness.engine, harness.gate
    before = time.time()
    compile_job, upload_job = await _armed_chain(harness)

    armed = eng.get(upload_job.id)
    assert eng.get(compile_job.id).status is C
    assert armed.status is Q and armed.device is None
    assert armed.reason_code == ReasonCode.WAITING_FOR_DEVICE.value
    assert armed.waiting_until is not None
    assert armed.waiting_until >= before + eng.armed_upload_ttl - 1
    assert [e.to_wire()["device_name"] for e in _armed_events(harness, armed, events.JobArmed)] == [
        "kitchen"
    ]
    lane = eng.lane_status(LaneName.UPLOAD)
    assert (lane.waiting, lane.queued, lane.idle) == (1, 0, True)
    assert armed.to_dict()["waiting"] == "device"
    assert not gate.ever_started(upload_job.id)

    # Another device's announcement changes nothing.
    assert eng.device_seen("garage", "10.0.0.9") == []
    assert eng.get(upload_job.id).waiting == WAITING_DEVICE

    released = eng.device_seen("kitchen", "10.0.0.7")
    assert [job.id for job in released] == [upload_job.id]
    # Released synchronously: on the lane when device_seen returns, and running after
    # a few turns of the event loop (no poll interval, no timer between them).
    assert eng.get(upload_job.id).waiting is None
    assert eng.lane_status(LaneName.UPLOAD).waiting == 0
    for _ in range(5):
        await asyncio.sleep(0)
    assert eng.get(upload_job.id).status is JobStatus.RUNNING
    await harness.started(upload_job)
    assert eng.get(upload_job.id).device == "10.0.0.7"
    [event] = _armed_events(harness, upload_job, events.JobReleased)
    assert event.to_wire()["address"] == "10.0.0.7"
    gate.release(upload_job.id)
    await harness.status(upload_job, C)
    log = "\n".join(eng.logs.read_lines(upload_job.id))
    assert "armed: waiting for device kitchen" in log
    assert "device kitchen announced itself at 10.0.0.7" in log
    # A second announcement after the flash starts nothing new.
    assert eng.device_seen("kitchen", "10.0.0.7") == []


async def test_device_already_online_when_the_compile_completes_uploads_at_once(
    harness: Harness,
) -> None:
    eng, gate = harness.engine, harness.gate
    asked: list[str] = []

    def online(name: str) -> str | None:
        asked.append(name)
        return "10.0.0.8" if name == "kitchen" else None

    eng.devices_online = online
    compile_job, upload_job = eng.install("kitchen.yaml", None, upload_options=ARMED)
    await harness.started(compile_job)
    assert asked == []  # not asked before the firmware exists
    gate.release(compile_job.id)
    await harness.started(upload_job)
    assert asked == ["kitchen"]
    job = eng.get(upload_job.id)
    assert job.device == "10.0.0.8" and job.waiting is None
    assert not _armed_events(harness, upload_job, events.JobArmed)
    gate.release(upload_job.id)
    await harness.status(upload_job, C)


async def test_a_fixed_device_is_kept_and_a_missing_address_falls_back_to_mdns_name(
    harness: Harness,
) -> None:
    eng, gate = harness.engine, harness.gate
    _c1, fixed = await _armed_chain(harness, "kitchen.yaml", device="192.168.1.9")
    other = JobOptions(when_online=True, device_name="porch")
    _c2, by_name = await _armed_chain(harness, "porch.yaml", upload_options=other)
    eng.device_seen("kitchen", "10.0.0.7")
    eng.device_seen("porch", None)
    await harness.started(fixed)
    await harness.started(by_name)
    assert eng.get(fixed.id).device == "192.168.1.9"
    assert eng.get(by_name.id).device == "porch.local"
    gate.release(fixed.id)
    gate.release(by_name.id)
    await harness.status(fixed, C)
    await harness.status(by_name, C)


async def test_an_armed_upload_expires_failed_with_the_reason(
    tmp_path: Path, gate: GatedRunner
) -> None:
    async with running(tmp_path / "data", gate, armed_upload_ttl=0.5) as h:
        _compile, upload_job = await _armed_chain(h)
        await h.status(upload_job, F)
        job = h.engine.get(upload_job.id)
        assert job.error == "device kitchen did not come online within 1 second"
        assert job.reason_code == ReasonCode.DEVICE_NOT_SEEN.value
        assert job.waiting is None
        assert h.engine.lane_status(LaneName.UPLOAD).waiting == 0
        assert h.engine.device_seen("kitchen", "10.0.0.7") == []
        assert not gate.ever_started(upload_job.id)


async def test_a_newer_install_supersedes_the_armed_upload(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    _old_compile, old_upload = await _armed_chain(harness)
    new_compile, new_upload = eng.install("kitchen.yaml", None, upload_options=ARMED)
    old = eng.get(old_upload.id)
    assert old.status is R
    assert old.error == f"superseded by newer job {new_compile.id}"
    assert old.waiting is None
    assert eng.lane_status(LaneName.UPLOAD).waiting == 0
    # The announcement now finds nothing to release: the new chain is still compiling.
    assert eng.device_seen("kitchen", "10.0.0.7") == []
    await harness.started(new_compile)
    gate.release(new_compile.id)
    await harness.until(lambda: eng.get(new_upload.id).waiting == WAITING_DEVICE)
    assert not gate.ever_started(old_upload.id)


async def test_cancel_an_armed_upload(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    _compile, upload_job = await _armed_chain(harness)
    cancelled = await eng.cancel(upload_job.id)
    assert cancelled.status is R
    assert cancelled.error == "cancelled by request"
    assert eng.armed_uploads() == []
    assert eng.device_seen("kitchen", "10.0.0.7") == []
    assert not gate.ever_started(upload_job.id)


async def test_reset_build_env_cancels_armed_uploads(harness: Harness) -> None:
    eng = harness.engine
    _compile, upload_job = await _armed_chain(harness)
    reset = eng.submit(JobType.RESET_BUILD_ENV, "/cfg")
    assert eng.get(upload_job.id).status is R
    assert reset.id in (eng.get(upload_job.id).error or "")


async def test_armed_upload_survives_a_restart_with_its_deadline(
    tmp_path: Path, gate: GatedRunner
) -> None:
    data = tmp_path / "data"
    async with running(data, gate) as h:
        compile_job, upload_job = await _armed_chain(h)
        deadline = h.engine.get(upload_job.id).waiting_until
    reader = JobStore(data / DB_FILENAME)
    row = reader.get(upload_job.id)
    reader.close()
    assert row is not None
    assert (row.status, row.waiting, row.waiting_until) == (Q, WAITING_DEVICE, deadline)

    async with running(data, gate) as h:
        job = h.engine.get(upload_job.id)
        assert job.waiting == WAITING_DEVICE and job.waiting_until == deadline
        assert [j.id for j in h.engine.armed_uploads()] == [upload_job.id]
        assert h.engine.lane_status(LaneName.UPLOAD).waiting == 1
        h.engine.device_seen("kitchen", "10.0.0.7")
        await h.started(upload_job)
        h.gate.release(upload_job.id)
        await h.status(upload_job, C)
        assert h.engine.get(compile_job.id).status is C


async def test_an_upload_interrupted_after_release_is_armed_again_on_restart(
    tmp_path: Path, gate: GatedRunner
) -> None:
    """The device was awake when meshd stopped; after the restart it may be asleep again."""
    data = tmp_path / "data"
    async with running(data, gate) as h:
        _compile, upload_job = await _armed_chain(h)
        since = h.engine.get(upload_job.id).waiting_since
        h.engine.device_seen("kitchen", "10.0.0.7")
        await h.started(upload_job)
    async with running(data, gate) as h:
        job = h.engine.get(upload_job.id)
        assert (job.status, job.waiting) == (Q, WAITING_DEVICE)
        assert job.waiting_since == since and job.device == "10.0.0.7"
        h.gate.started_marker(upload_job.id).unlink()
        h.engine.device_seen("kitchen", "10.0.0.8")
        await h.started(upload_job)
        # Where the device is now, not where it was: the address was not the request's.
        assert h.engine.get(upload_job.id).device == "10.0.0.8"
        h.gate.release(upload_job.id)
        await h.status(upload_job, C)


async def test_expiry_survives_a_restart(tmp_path: Path, gate: GatedRunner) -> None:
    """The deadline is stored: a restart with the default week still expires it."""
    data = tmp_path / "data"
    async with running(data, gate, armed_upload_ttl=1.0) as h:
        _compile, upload_job = await _armed_chain(h)
        deadline = h.engine.get(upload_job.id).waiting_until
    assert deadline is not None
    while time.time() <= deadline:  # the daemon is down while the deadline passes
        await asyncio.sleep(0.05)
    async with running(data, gate) as h:
        job = h.engine.get(upload_job.id)
        assert job.status is F
        assert job.error == "device kitchen did not come online within 1 second"
        assert h.engine.armed_uploads() == []
        assert not gate.ever_started(upload_job.id)


async def test_name_from_the_build_record_when_not_given(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    eng.device_name_of = lambda config: "from-record" if config == "k.yaml" else None
    _c, upload_job = await _armed_chain(
        harness, "k.yaml", upload_options=JobOptions(when_online=True)
    )
    job = eng.get(upload_job.id)
    assert job.options.device_name == "from-record"
    eng.device_seen("from-record", "10.0.0.3")
    await harness.started(upload_job)
    gate.release(upload_job.id)
    await harness.status(upload_job, C)


async def test_no_name_anywhere_fails_the_upload_clearly(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    compile_job, upload_job = eng.install(
        "k.yaml", None, upload_options=JobOptions(when_online=True)
    )
    await harness.started(compile_job)
    gate.release(compile_job.id)
    await harness.status(upload_job, F)
    assert "its name is not known" in (eng.get(upload_job.id).error or "")


async def test_a_broken_monitor_hook_means_offline_not_a_broken_engine(
    harness: Harness,
) -> None:
    def broken(_name: str) -> str | None:
        raise RuntimeError("monitor bug")

    harness.engine.devices_online = broken
    _c, upload_job = await _armed_chain(harness)
    assert harness.engine.get(upload_job.id).waiting == WAITING_DEVICE


async def test_standalone_upload_of_the_last_build_can_be_armed(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    job = eng.submit(JobType.UPLOAD, "kitchen.yaml", options=ARMED)
    assert eng.get(job.id).waiting == WAITING_DEVICE
    eng.device_seen("kitchen", "10.0.0.7")
    await harness.started(job)
    gate.release(job.id)
    await harness.status(job, C)


async def test_two_devices_release_independently_and_in_parallel(harness: Harness) -> None:
    eng, gate = harness.engine, harness.gate
    _c1, kitchen = await _armed_chain(harness, "kitchen.yaml")
    porch_opts = JobOptions(when_online=True, device_name="porch")
    _c2, porch = await _armed_chain(harness, "porch.yaml", upload_options=porch_opts)
    eng.device_seen("porch", "10.0.0.2")
    await harness.started(porch)
    assert eng.get(kitchen.id).waiting == WAITING_DEVICE
    eng.device_seen("kitchen", "10.0.0.1")
    await harness.started(kitchen)  # both uploads run at once (two slots)
    gate.release(porch.id)
    gate.release(kitchen.id)
    await harness.status(porch, C)
    await harness.status(kitchen, C)


@pytest.mark.parametrize(
    ("job_type", "device", "options", "message"),
    [
        (JobType.COMPILE, None, JobOptions(when_online=True), "only an upload"),
        (JobType.UPLOAD, None, JobOptions(), "needs a device"),
        (JobType.UPLOAD, None, JobOptions(when_online=True, device_name=""), "empty device"),
    ],
)
async def test_invalid_armed_requests(
    harness: Harness,
    job_type: JobType,
    device: str | None,
    options: JobOptions,
    message: str,
) -> None:
    with pytest.raises(InvalidJob, match=message):
        harness.engine.submit(job_type, "a.yaml", device, options=options)
    assert harness.engine.active_jobs() == []
