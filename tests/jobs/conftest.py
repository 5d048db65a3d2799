from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshd.jobs import events
from meshd.jobs.engine import Engine
from meshd.jobs.events import Event, JobEvent
from meshd.jobs.model import Job, JobStatus, JobType
from tests.jobs.gated import GatedRunner
from tests.support.pids import gone

WAIT = 20.0  # a safety net against hangs, not a speed assertion


@pytest.fixture
def gate(tmp_path: Path) -> GatedRunner:
    return GatedRunner(tmp_path / "gate", kill_grace=1.0)


class Harness:
    """An engine plus the recorded event stream and helpers to wait on it."""

    def __init__(self, engine: Engine, gate: GatedRunner) -> None:
        self.engine = engine
        self.gate = gate
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        engine.bus.add_listener(self._record)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def status(self, job: Job, status: JobStatus) -> None:
        await self.until(lambda: self.engine.get(job.id).status is status)

    async def started(self, job: Job) -> None:
        await self.status(job, JobStatus.RUNNING)
        await self.gate.wait_started(job.id)

    def types_for(self, job: Job) -> list[str]:
        return [e.type for e in self.events if isinstance(e, JobEvent) and e.job.id == job.id]


def all_runners(gate: GatedRunner) -> dict[JobType, GatedRunner]:
    return dict.fromkeys(JobType, gate)


@pytest.fixture
async def harness(tmp_path: Path, gate: GatedRunner) -> AsyncIterator[Harness]:
    engine = Engine(tmp_path / "data", all_runners(gate), upload_slots=4)
    h = Harness(engine, gate)
    await engine.start()
    try:
        yield h
    finally:
        await engine.stop()
        # No test may leak a process: every job's child and grandchild must be gone.
        for marker in gate.directory.glob("*.started"):
            _pid, child = (int(x) for x in marker.read_text().split())
            assert await gone(child), f"grandchild {child} of {marker.stem} survived"


__all__ = ["WAIT", "Harness", "events"]
