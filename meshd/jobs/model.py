"""The job record and its vocabulary.

A job is the unit the lanes schedule and the store persists. It is a plain mutable
dataclass owned by the engine; everything outside the engine sees snapshots via
``to_dict()`` (the JSON shape documented in docs/API.md).
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from typing import Any


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


@dataclass
class Job:
    type: JobType
    configuration: str
    device: str | None = None
    depends_on: str | None = None
    # Extra, type-specific arguments (e.g. ``new_name`` for rename, ``force_local``).
    args: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_job_id)
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    runner: str | None = None
    reason: str | None = None
    progress: float | None = None
    # Monotonic submission order; the lanes are FIFO by this, not by wall clock.
    seq: int = 0

    @property
    def lane(self) -> LaneName:
        return lane_for(self.type)

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
            "progress": self.progress,
            "args": dict(self.args),
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
            args=dict(data.get("args") or {}),
            created_at=data["created_at"],
            started_at=data.get("started_at"),
            finished_at=data.get("finished_at"),
            error=data.get("error"),
            runner=data.get("runner"),
            reason=data.get("reason"),
            progress=data.get("progress"),
            seq=int(data.get("seq", 0)),
        )
