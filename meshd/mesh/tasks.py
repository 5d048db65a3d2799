"""Background tasks a mesh component starts and must neither lose nor leave behind.

The event loop keeps only a weak reference to a task, so one started with
``asyncio.create_task`` and never stored can be garbage-collected before it finishes
(the asyncio documentation warns about exactly this). A ``TaskSet`` holds every task
its owner spawns until it is done, logs a failure nobody else would see, and at stop
cancels (or, for work that must finish, awaits) whatever is still pending.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

_LOGGER = logging.getLogger(__name__)


class TaskSet:
    """Strong references to running tasks; a task leaves the set when it is done."""

    def __init__(self, owner: str) -> None:
        self._owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            _LOGGER.error(
                "%s: background task %s failed", self._owner, task.get_name(), exc_info=error
            )

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def _pending(self) -> list[asyncio.Task[Any]]:
        return [task for task in self._tasks if not task.done()]

    async def wait(self) -> None:
        """Wait for every task, including ones spawned while waiting."""
        while pending := self._pending():
            await asyncio.gather(*pending, return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task and wait until each has ended."""
        while pending := self._pending():
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
