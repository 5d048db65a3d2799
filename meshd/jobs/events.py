"""In-process publish/subscribe for job and lane events.

Two kinds of consumers: in-process listeners (plain callbacks, called synchronously
in publish order, e.g. the mesh pushing compile-lane status) and subscribers with a
bounded queue (e.g. a websocket client). A subscriber that falls more than its queue
size behind is dropped rather than allowed to stall the engine or grow memory; it
learns so from ``Subscription.overflowed`` and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

_LOGGER = logging.getLogger(__name__)

JOB_QUEUED = "job_queued"
JOB_STARTED = "job_started"
JOB_OUTPUT = "job_output"
JOB_PROGRESS = "job_progress"
JOB_COMPLETED = "job_completed"
JOB_FAILED = "job_failed"
JOB_CANCELLED = "job_cancelled"
LANE_STATUS = "lane_status"

# Enough for a burst of compile output between two websocket writes.
DEFAULT_SUBSCRIBER_QUEUE = 4096


@dataclass(frozen=True)
class Event:
    type: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.data}


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

    def publish(self, type_: str, **data: Any) -> None:
        event = Event(type_, data)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                # A broken observer must not break job bookkeeping.
                _LOGGER.exception("event listener failed on %s", type_)
        for sub in list(self._subscriptions):
            sub._offer(event)
