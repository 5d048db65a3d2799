"""In-process publish/subscribe for job and lane events, and the events themselves.

Events are frozen objects (``JobQueued``, ``JobOutput``, ``JobArmed``, ``JobFinished``,
``LaneStatusChanged``...): consumers match on the class and read typed fields. Each
one's ``to_wire()`` is its JSON object for the events websocket, exactly the shape
docs/API.md documents, so clients never see the classes.

Two kinds of consumers: in-process listeners (plain callbacks, called synchronously
in publish order, e.g. the mesh pushing compile-lane status) and subscribers with a
bounded queue (e.g. a websocket client). A subscriber that falls more than its queue
size behind is dropped rather than allowed to stall the engine or grow memory; it
learns so from ``Subscription.overflowed`` and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from meshd.jobs.lanes import LaneSnapshot
from meshd.jobs.model import Job, JobStatus

_LOGGER = logging.getLogger(__name__)

# The ``type`` of each event on the wire (docs/API.md, "Events").
JOB_QUEUED = "job_queued"
JOB_STARTED = "job_started"
JOB_OUTPUT = "job_output"
JOB_PROGRESS = "job_progress"
JOB_COMPLETED = "job_completed"
JOB_FAILED = "job_failed"
JOB_CANCELLED = "job_cancelled"
JOB_ARMED = "job_armed"
JOB_RELEASED = "job_released"
LANE_STATUS = "lane_status"

# Enough for a burst of compile output between two websocket writes.
DEFAULT_SUBSCRIBER_QUEUE = 4096


class _WireText:
    """``wire_text``: the event's JSON, encoded once however many clients follow."""

    def to_wire(self) -> dict[str, Any]:
        raise NotImplementedError

    @functools.cached_property
    def wire_text(self) -> str:
        """``json.dumps(to_wire())``, the websocket text frame; computed on first use.

        Each websocket follower sends every event; encoding it per follower made the
        events stream cost O(followers) in JSON work (docs/PERFORMANCE.md, scenario 7).
        """
        return json.dumps(self.to_wire())


@dataclass(frozen=True)
class JobEvent(_WireText):
    """Something happened to ``job``: a snapshot taken when it happened (do not mutate)."""

    job: Job
    TYPE: ClassVar[str]

    @property
    def type(self) -> str:
        return self.TYPE

    def to_wire(self) -> dict[str, Any]:
        """The event's JSON object for the events websocket."""
        return {"type": self.type, "job": self.job.to_dict()}


@dataclass(frozen=True)
class JobQueued(JobEvent):
    """Created (and persisted), or put back in the queue after a re-route."""

    TYPE = JOB_QUEUED


@dataclass(frozen=True)
class JobStarted(JobEvent):
    TYPE = JOB_STARTED


@dataclass(frozen=True)
class JobOutput(JobEvent):
    """One line of tool output, also appended to the job's log."""

    line: str
    TYPE = JOB_OUTPUT

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "line": self.line}


@dataclass(frozen=True)
class JobProgress(JobEvent):
    """Progress moved by at least ``engine.PROGRESS_STEP``."""

    progress: float
    TYPE = JOB_PROGRESS

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "progress": self.progress}


@dataclass(frozen=True)
class JobArmed(JobEvent):
    """An upload is armed: it waits for ``device_name`` until ``job.waiting_until``."""

    device_name: str
    TYPE = JOB_ARMED

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "device_name": self.device_name}


@dataclass(frozen=True)
class JobReleased(JobEvent):
    """An armed upload's device announced itself (at ``address``): it joined the upload lane."""

    device_name: str
    address: str | None
    TYPE = JOB_RELEASED

    def to_wire(self) -> dict[str, Any]:
        return {**super().to_wire(), "device_name": self.device_name, "address": self.address}


_FINISHED_TYPES = {
    JobStatus.COMPLETED: JOB_COMPLETED,
    JobStatus.FAILED: JOB_FAILED,
    JobStatus.CANCELLED: JOB_CANCELLED,
}


@dataclass(frozen=True)
class JobFinished(JobEvent):
    """Terminal: its wire type follows the status (completed, failed or cancelled)."""

    def __post_init__(self) -> None:
        if self.job.status not in _FINISHED_TYPES:
            raise ValueError(f"job {self.job.id} is {self.job.status.value}, not finished")

    @property
    def type(self) -> str:
        return _FINISHED_TYPES[self.job.status]


@dataclass(frozen=True)
class LaneStatusChanged(_WireText):
    """A lane's snapshot changed (running, queued, idle...)."""

    snapshot: LaneSnapshot
    TYPE: ClassVar[str] = LANE_STATUS

    @property
    def type(self) -> str:
        return self.TYPE

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, **self.snapshot.to_dict()}


PEER_CHANGED = "peer_changed"


@dataclass(frozen=True)
class PeerChanged(_WireText):
    """A peer of this node's registry was added, updated or removed (``peer`` is None).

    The bus carries it so the events websocket shows peers live; it is plain data (the
    record as ``/api/v1/peers`` lists it), so the jobs layer knows nothing of the mesh.
    """

    change: str
    fingerprint: str
    peer: dict[str, Any] | None
    TYPE: ClassVar[str] = PEER_CHANGED

    @property
    def type(self) -> str:
        return self.TYPE

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "change": self.change,
            "fingerprint": self.fingerprint,
            "peer": self.peer,
        }


Event: TypeAlias = (
    JobQueued
    | JobStarted
    | JobOutput
    | JobProgress
    | JobArmed
    | JobReleased
    | JobFinished
    | LaneStatusChanged
    | PeerChanged
)
"""Everything the bus carries; match on the class, not on ``type``."""


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False

    def _offer(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self._bus.unsubscribe(self)
            # Make room for the end marker so the reader wakes up and sees overflow.
            self._queue.get_nowait()
            self._queue.put_nowait(None)

    def close(self) -> None:
        self._bus.unsubscribe(self)
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        """The next event, or None once the subscription ended (closed or overflowed)."""
        return await self._queue.get()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while (event := await self.get()) is not None:
            yield event


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []
        self._subscriptions: list[Subscription] = []

    def add_listener(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Register a synchronous callback; returns a function that removes it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def subscribe(self, maxsize: int = DEFAULT_SUBSCRIBER_QUEUE) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                # A broken observer must not break job bookkeeping.
                _LOGGER.exception("event listener failed on %s", event.type)
        for sub in list(self._subscriptions):
            sub._offer(event)
