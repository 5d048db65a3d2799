"""The job record and its vocabulary.

A job is the unit the lanes schedule and the store persists. It is a plain mutable
dataclass owned by the engine; everything outside the engine sees snapshots via
``to_dict()`` (the JSON shape documented in docs/API.md).
"""

from __future__ import annotations

import copy
import enum
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from meshd.jobs.build import StoredBuild
from meshd.jobs.options import JobOptions


class JobType(enum.StrEnum):
    COMPILE = "compile"
    UPLOAD = "upload"
    CLEAN = "clean"
    RESET_BUILD_ENV = "reset_build_env"
    RENAME = "rename"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        return self in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def terminal(self) -> bool:
        return not self.active


class LaneName(enum.StrEnum):
    COMPILE = "compile"
    UPLOAD = "upload"


def lane_for(job_type: JobType) -> LaneName:
    """Uploads flash a device and are I/O bound; everything else uses the build tree."""
    return LaneName.UPLOAD if job_type is JobType.UPLOAD else LaneName.COMPILE


def new_job_id() -> str:
    # 48 random bits: short enough to type, and collisions are caught by the
    # store's primary key long before they are likely.
    return secrets.token_hex(6)


def now() -> float:
    return time.time()


LOCAL_RUNNER = "local"

WAITING_DEVICE = "device"
"""``Job.waiting`` of an armed upload: queued, but off every lane until its device
announces itself (``Engine.device_seen``). The status stays ``queued`` so clients that
know only the five statuses keep working."""


@dataclass
class Job:
    type: JobType
    configuration: str
    device: str | None = None
    depends_on: str | None = None
    options: JobOptions = field(default_factory=JobOptions)
    """Type-specific options (``new_name`` for rename, ``force_local``...); the API's ``args``."""
    id: str = field(default_factory=new_job_id)
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    runner: str | None = None
    reason: str | None = None
    reason_code: str | None = None
    """Machine-readable form of ``reason`` (a ``placement.ReasonCode`` value; kept as text
    so a code written by a newer meshd still loads)."""
    progress: float | None = None
    waiting: str | None = None
    """What a queued job waits for besides a slot: ``WAITING_DEVICE`` or None. Kept as
    text so a value written by a newer meshd still loads."""
    waiting_since: float | None = None
    """When the upload was armed (set with ``waiting``; kept after release for history)."""
    waiting_until: float | None = None
    """The armed upload's deadline: past it the job fails (``armed_upload_ttl``)."""
    build: StoredBuild | None = None
    """What built it (``meshd.jobs.build``): set by the runner of a completed compile,
    copied to the upload that flashes that compile; None when nothing says."""
    # Monotonic submission order; the lanes are FIFO by this, not by wall clock.
    seq: int = 0

    @property
    def lane(self) -> LaneName:
        return lane_for(self.type)

    def snapshot(self) -> Job:
        """A copy as the job is now, for events (every field is immutable, so shallow is enough)."""
        return copy.copy(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "status": self.status.value,
            "configuration": self.configuration,
            "device": self.device,
            "depends_on": self.depends_on,
            "lane": self.lane.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "runner": self.runner,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "progress": self.progress,
            "args": self.options.to_api(),
            "seq": self.seq,
            "waiting": self.waiting,
            "waiting_since": self.waiting_since,
            "waiting_until": self.waiting_until,
            "build": self.build.to_api() if self.build is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            type=JobType(data["type"]),
            status=JobStatus(data["status"]),
            configuration=data["configuration"],
            device=data.get("device"),
            depends_on=data.get("depends_on"),
            options=JobOptions.from_mapping(data.get("args") or {}),
            created_at=data["created_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            error=data.get("error"),
            runner=data.get("runner"),
            reason=data.get("reason"),
            reason_code=data.get("reason_code"),
            progress=data.get("progress"),
            waiting=data.get("waiting"),
            waiting_since=data.get("waiting_since"),
            waiting_until=data.get("waiting_until"),
            build=data.get("build"),
            seq=int(data.get("seq", 0)),
        )
