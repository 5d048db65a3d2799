"""A lane: a FIFO queue, a fixed number of slots, and the task that fills them.

The lane knows nothing about job rules; the engine gives it two callables:
``can_start(job)`` (device exclusivity, the build gate) and ``execute(job)`` (runs
the job to an outcome). The lane calls ``on_finished(job, outcome)`` only after the
job's slot is released, so whoever reacts to a terminal status already sees the lane
free (an offloader must never see a stale "busy").
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshd.jobs.model import Job, LaneName


@dataclass(frozen=True)
class LaneStatus:
    lane: LaneName
    idle: bool
    running: tuple[str, ...]
    queued: int
    idle_since: float | None
    """Epoch seconds of the last transition to idle; None while busy."""
    slots: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "lane": self.lane.value,
            "idle": self.idle,
            "running": list(self.running),
            "queued": self.queued,
            "idle_since": self.idle_since,
            "slots": self.slots,
        }


class Lane:
    def __init__(
        self,
        name: LaneName,
        slots: int,
        *,
        execute: Callable[[Job], Awaitable[Any]],
        on_finished: Callable[[Job, Any], None],
        on_status: Callable[[LaneStatus], None],
        can_start: Callable[[Job], bool] = lambda _job: True,
    ) -> None:
        if slots < 1:
            raise ValueError(f"a lane needs at least one slot, got {slots}")
        self.name = name
        self.slots = slots
        self._execute = execute
        self._on_finished = on_finished
        self._on_status = on_status
        self._can_start = can_start
        self._queue: list[Job] = []
        self._running: dict[str, tuple[Job, asyncio.Task[Any]]] = {}
        self._wake = asyncio.Event()
        self._idle_since: float | None = time.time()
        self._last_status: LaneStatus | None = None
        self._accepting = True

    # -- queue ----------------------------------------------------------------

    def enqueue(self, job: Job) -> None:
        bisect.insort(self._queue, job, key=lambda j: j.seq)
        self._status_changed()
        self.wake()

    def remove_queued(self, job_id: str) -> Job | None:
        for index, job in enumerate(self._queue):
            if job.id == job_id:
                del self._queue[index]
                self._status_changed()
                return job
        return None

    def is_queued(self, job_id: str) -> bool:
        return any(job.id == job_id for job in self._queue)

    def running_jobs(self) -> list[Job]:
        return [job for job, _task in self._running.values()]

    def task_of(self, job_id: str) -> asyncio.Task[Any] | None:
        entry = self._running.get(job_id)
        return entry[1] if entry else None

    def wake(self) -> None:
        self._wake.set()

    # -- status ---------------------------------------------------------------

    def status(self) -> LaneStatus:
        idle = not self._running and not self._queue
        return LaneStatus(
            lane=self.name,
            idle=idle,
            running=tuple(self._running),
            queued=len(self._queue),
            idle_since=self._idle_since if idle else None,
            slots=self.slots,
        )

    def _status_changed(self) -> None:
        idle_now = not self._running and not self._queue
        was_idle = self._last_status.idle if self._last_status else True
        if idle_now and not was_idle:
            self._idle_since = time.time()
        status = self.status()
        if status != self._last_status:
            self._last_status = status
            self._on_status(status)

    # -- running --------------------------------------------------------------

    async def run(self) -> None:
        """Fill free slots whenever woken; on cancellation, cancel and drain running jobs."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._fill()
        finally:
            self._accepting = False
            await self._drain()

    def _fill(self) -> None:
        if not self._accepting:
            return
        for job in list(self._queue):
            if len(self._running) >= self.slots:
                break
            if not self._can_start(job):
                continue
            self._queue.remove(job)
            task = asyncio.create_task(self._run_job(job), name=f"job-{job.id}")
            self._running[job.id] = (job, task)
        self._status_changed()

    async def _run_job(self, job: Job) -> None:
        outcome = await self._execute(job)
        # Release the slot first, then report: see the module docstring.
        del self._running[job.id]
        self._status_changed()
        self._on_finished(job, outcome)
        self.wake()

    async def _drain(self) -> None:
        tasks = [task for _job, task in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
