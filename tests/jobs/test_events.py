"""Typed events give exactly the JSON objects the events websocket always sent."""

from __future__ import annotations

import pytest

from meshd.jobs import events
from meshd.jobs.lanes import LaneSnapshot
from meshd.jobs.model import Job, JobStatus, JobType, LaneName
from meshd.jobs.options import JobOptions

# docs/API.md, "The job object" (plus ``reason_code``, ``seq`` and the ``waiting``
# fields of armed uploads, documented there too).
JOB_JSON = {
    "id": "3f9c0a1b2d4e",
    "type": "compile",
    "status": "running",
    "configuration": "/cfg/living-room.yaml",
    "device": "192.168.1.40",
    "depends_on": None,
    "lane": "compile",
    "created_at": 1767225600.12,
    "started_at": 1767225600.5,
    "finished_at": None,
    "error": None,
    "runner": "local",
    "reason": "local compile lane",
    "reason_code": "no_mesh",
    "progress": 0.42,
    "args": {"force_local": True},
    "seq": 7,
    "waiting": None,
    "waiting_since": None,
    "waiting_until": None,
    "build": None,
}


def _job(**changes: object) -> Job:
    job = Job(
        id="3f9c0a1b2d4e",
        type=JobType.COMPILE,
        status=JobStatus.RUNNING,
        configuration="/cfg/living-room.yaml",
        device="192.168.1.40",
        created_at=1767225600.12,
        started_at=1767225600.5,
        runner="local",
        reason="local compile lane",
        reason_code="no_mesh",
        progress=0.42,
        options=JobOptions(force_local=True),
        seq=7,
    )
    for name, value in changes.items():
        setattr(job, name, value)
    return job


def test_job_events_on_the_wire() -> None:
    job = _job()
    assert events.JobQueued(job).to_wire() == {"type": "job_queued", "job": JOB_JSON}
    assert events.JobStarted(job).to_wire() == {"type": "job_started", "job": JOB_JSON}
    assert events.JobOutput(job, "Compiling main.o").to_wire() == {
        "type": "job_output",
        "job": JOB_JSON,
        "line": "Compiling main.o",
    }
    assert events.JobProgress(job, 0.42).to_wire() == {
        "type": "job_progress",
        "job": JOB_JSON,
        "progress": 0.42,
    }


@pytest.mark.parametrize(
    ("status", "wire_type"),
    [
        (JobStatus.COMPLETED, "job_completed"),
        (JobStatus.FAILED, "job_failed"),
        (JobStatus.CANCELLED, "job_cancelled"),
    ],
)
def test_a_finished_job_is_announced_by_its_outcome(status: JobStatus, wire_type: str) -> None:
    job = _job(status=status, finished_at=1767225700.0, progress=None)
    event = events.JobFinished(job)
    assert event.type == wire_type
    expected_job = {**JOB_JSON, "status": status.value, "finished_at": 1767225700.0}
    assert event.to_wire() == {"type": wire_type, "job": {**expected_job, "progress": None}}


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING])
def test_an_active_job_cannot_be_announced_as_finished(status: JobStatus) -> None:
    with pytest.raises(ValueError, match="not finished"):
        events.JobFinished(_job(status=status))


def test_lane_status_on_the_wire() -> None:
    snapshot = LaneSnapshot(
        lane=LaneName.COMPILE,
        idle=False,
        running=("3f9c0a1b2d4e", "77aa01b2c3d4"),
        queued=1,
        idle_since=None,
        slots=1,
        remote=("77aa01b2c3d4",),
    )
    assert events.LaneStatusChanged(snapshot).to_wire() == {
        "type": "lane_status",
        "lane": "compile",
        "idle": False,
        "running": ["3f9c0a1b2d4e", "77aa01b2c3d4"],
        "remote": ["77aa01b2c3d4"],
        "queued": 1,
        "idle_since": None,
        "slots": 1,
        "waiting": 0,
    }


def test_armed_and_released_on_the_wire() -> None:
    job = _job(
        type=JobType.UPLOAD,
        status=JobStatus.QUEUED,
        waiting="device",
        waiting_since=1767225600.0,
        waiting_until=1767830400.0,
        options=JobOptions(when_online=True, device_name="kitchen"),
    )
    wire_job = {
        **JOB_JSON,
        "type": "upload",
        "lane": "upload",
        "status": "queued",
        "waiting": "device",
        "waiting_since": 1767225600.0,
        "waiting_until": 1767830400.0,
        "args": {"when_online": True, "device_name": "kitchen"},
    }
    assert events.JobArmed(job, "kitchen").to_wire() == {
        "type": "job_armed",
        "job": wire_job,
        "device_name": "kitchen",
    }
    assert events.JobReleased(job, "kitchen", "10.0.0.7").to_wire() == {
        "type": "job_released",
        "job": wire_job,
        "device_name": "kitchen",
        "address": "10.0.0.7",
    }


def test_an_event_keeps_the_job_as_it_was_when_published() -> None:
    job = _job()
    event = events.JobStarted(job.snapshot())
    job.status = JobStatus.COMPLETED
    job.options = JobOptions()
    assert event.job.status is JobStatus.RUNNING
    assert event.to_wire()["job"] == JOB_JSON


def test_a_broken_listener_does_not_stop_the_others() -> None:
    bus = events.EventBus()
    seen: list[events.Event] = []

    def broken(_event: events.Event) -> None:
        raise RuntimeError("listener bug")

    bus.add_listener(broken)
    bus.add_listener(seen.append)
    event = events.JobQueued(_job(status=JobStatus.QUEUED))
    bus.publish(event)
    assert seen == [event]
