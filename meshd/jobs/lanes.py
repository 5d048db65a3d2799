"""A lane: a FIFO queue, a fixed number of local slots, and the task that fills them.

The lane knows nothing about job rules; the engine gives it callables:
``can_start(job)`` (device exclusivity, the build gate), ``execute(job, placement)``
(runs the job to an outcome) and, for the compile lane, a ``Placer`` that may send
jobs to remote receivers beside the local slots (the dispatch pool). Remote jobs do
not occupy a local slot; the lane remembers which receiver each one occupies and
hands that set to the placer, so placing never has to ask anyone about the lane. The
lane calls ``on_finished(job, outcome)`` only after the job's slot is released, so
whoever reacts to a terminal status already sees the lane free (an offloader must
never see a stale "busy").

A lane can also *park* jobs: they belong to the lane (its ``waiting`` count, shown in
its status) but are outside the queue and never start until the engine moves them into
the queue. Armed uploads wait there for their device; they do not make the lane busy.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from meshd.jobs.model import Job, LaneName
from meshd.jobs.placement import Placement, Placer, Where


@dataclass(frozen=True)
class LaneSnapshot:
    """A lane's state at one moment (the ``lane_status`` event and ``/status`` lanes)."""

    lane: LaneName
    idle: bool
    """No local job running and nothing queued: this node could take a compile now."""
    running: tuple[str, ...]
    """Every running job, local and remote."""
    queued: int
    idle_since: float | None
    """Epoch seconds of the last transition to idle; None while busy."""
    slots: int
    remote: tuple[str, ...] = ()
    """The running jobs dispatched to receivers (compile lane only)."""
    waiting: int = 0
    """Parked jobs: armed uploads waiting for their device (not counted in ``queued``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "lane": self.lane.value,
            "idle": self.idle,
            "running": list(self.running),
            "remote": list(self.remote),
            "queued": self.queued,
            "idle_since": self.idle_since,
            "slots": self.slots,
            "waiting": self.waiting,
        }


class Lane:
    def __init__(
        self,
        name: LaneName,
        slots: int,
        *,
        execute: Callable[[Job, Placement], Awaitable[Any]],
        on_finished: Callable[[Job, Any], None],
        on_status: Callable[[LaneSnapshot], None],
        local: Placement,
        can_start: Callable[[Job], bool] = lambda _job: True,
        placer: Placer | None = None,
    ) -> None:
        """``local`` is the placement of every job when there is no ``placer``."""
        if slots < 1:
            raise ValueError(f"a lane needs at least one slot, got {slots}")
        self.name = name
        self.slots = slots
        self._execute = execute
        self._on_finished = on_finished
        self._on_status = on_status
        self._can_start = can_start
        self.placer = placer
        self._local = local
        self._queue: list[Job] = []
        self._parked: dict[str, Job] = {}
        self._running: dict[str, tuple[Job, asyncio.Task[Any]]] = {}
        self._remote: dict[str, str] = {}  # running remote job id -> its receiver
        self._wake = asyncio.Event()
        self._idle_since: float | None = time.time()
        self._last_status: LaneSnapshot | None = None
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

    def park(self, job: Job) -> None:
        """Keep ``job`` outside the queue until ``unpark``: it never starts while parked."""
        self._parked[job.id] = job
        self._status_changed()

    def unpark(self, job_id: str) -> Job | None:
        job = self._parked.pop(job_id, None)
        if job is not None:
            self._status_changed()
        return job

    def parked_jobs(self) -> list[Job]:
        """Parked jobs, oldest first."""
        return sorted(self._parked.values(), key=lambda j: j.seq)

    def running_jobs(self) -> list[Job]:
        return [job for job, _task in self._running.values()]

    def task_of(self, job_id: str) -> asyncio.Task[Any] | None:
        entry = self._running.get(job_id)
        return entry[1] if entry else None

    def wake(self) -> None:
        self._wake.set()

    # -- status ---------------------------------------------------------------

    def _local_running(self) -> int:
        return len(self._running) - len(self._remote)

    def _is_idle(self) -> bool:
        return self._local_running() == 0 and not self._queue

    def busy_receivers(self) -> frozenset[str]:
        """The receivers this lane's running remote jobs occupy."""
        return frozenset(self._remote.values())

    def status(self) -> LaneSnapshot:
        idle = self._is_idle()
        return LaneSnapshot(
            lane=self.name,
            idle=idle,
            running=tuple(self._running),
            queued=len(self._queue),
            idle_since=self._idle_since if idle else None,
            slots=self.slots,
            remote=tuple(job_id for job_id in self._running if job_id in self._remote),
            waiting=len(self._parked),
        )

    def _status_changed(self) -> None:
        idle_now = self._is_idle()
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
        if self.placer is not None:
            self._fill_placed(self.placer)
        else:
            for job in list(self._queue):
                if self._local_running() >= self.slots:
                    break
                if self._can_start(job):
                    self._start(job, self._local)
        self._status_changed()

    def _fill_placed(self, placer: Placer) -> None:
        queued = [job for job in self._queue if self._can_start(job)]
        if not queued:
            return
        placements = placer.place(
            queued,
            local_free=self._local_running() < self.slots,
            busy_receivers=self.busy_receivers(),
        )
        for job, placement in zip(queued, placements, strict=True):
            if placement.where is Where.WAIT:
                continue
            if placement.where is Where.LOCAL and self._local_running() >= self.slots:
                continue  # a placer that over-commits the local slot is not obeyed
            self._start(job, placement)

    def _start(self, job: Job, placement: Placement) -> None:
        self._queue.remove(job)
        if placement.receiver is not None:
            self._remote[job.id] = placement.receiver
        task = asyncio.create_task(self._run_job(job, placement), name=f"job-{job.id}")
        self._running[job.id] = (job, task)

    async def _run_job(self, job: Job, placement: Placement) -> None:
        outcome = await self._execute(job, placement)
        # Release the slot first, then report: see the module docstring.
        del self._running[job.id]
        self._remote.pop(job.id, None)
        self._status_changed()
        self._on_finished(job, outcome)
        self.wake()

    async def _drain(self) -> None:
        tasks = [task for _job, task in self._running.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
