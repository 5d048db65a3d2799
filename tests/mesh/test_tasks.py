"""TaskSet (meshd/mesh/tasks.py): background tasks are held, reported and ended."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from meshd.mesh.tasks import TaskSet


async def test_a_task_is_held_until_done_then_dropped() -> None:
    tasks = TaskSet("test")
    release = asyncio.Event()
    ran: list[str] = []

    async def work() -> None:
        await release.wait()
        ran.append("done")

    tasks.spawn(work(), name="work")
    gc.collect()  # the set's reference is the only one the caller kept
    assert len(tasks) == 1
    release.set()
    await tasks.wait()
    assert ran == ["done"] and len(tasks) == 0


async def test_a_failure_is_logged_not_lost(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("owner")

    async def boom() -> None:
        raise RuntimeError("kaput")

    tasks.spawn(boom(), name="boom")
    with caplog.at_level(logging.ERROR, logger="meshd.mesh.tasks"):
        await tasks.wait()
        await asyncio.sleep(0)  # the done callback runs on the next loop turn
    assert "owner: background task boom failed" in caplog.text
    assert "kaput" in caplog.text
    assert len(tasks) == 0


async def test_cancel_ends_everything_including_tasks_spawned_meanwhile() -> None:
    tasks = TaskSet("test")
    cancelled: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            if name == "first":
                tasks.spawn(forever("late"), name="late")  # cleanup that starts more work
            raise

    spawned = [tasks.spawn(forever(n), name=n) for n in ("first", "second")]
    await asyncio.sleep(0)
    await tasks.cancel()
    assert sorted(cancelled) == ["first", "late", "second"]
    assert all(t.done() for t in spawned) and len(tasks) == 0


async def test_wait_lets_work_finish() -> None:
    tasks = TaskSet("test")
    finished: list[int] = []

    async def step(n: int) -> None:
        await asyncio.sleep(0)
        finished.append(n)
        if n < 3:
            tasks.spawn(step(n + 1), name=f"step-{n + 1}")

    tasks.spawn(step(1), name="step-1")
    await tasks.wait()
    assert finished == [1, 2, 3]
