"""Removes what a receiver keeps for warm rebuilds once it has gone unused for the TTL.

Work directories (one per offloader and configuration) and content blobs are kept so
a second compile of the same configuration sends and builds only what changed. The
pruner deletes those unused for ``ttl`` seconds: at start, then every ``interval``.
The file-system work runs in a thread so the event loop never waits on a big tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from meshd.mesh.content.bundle import prune_workdirs
from meshd.mesh.content.store import ContentStore

_LOGGER = logging.getLogger(__name__)

# Work directories a receiver keeps for warm rebuilds, and blobs, live this long unused.
DEFAULT_BUILD_TTL = 7 * 24 * 3600.0
# How often to look: the TTL is days, so hourly is prompt enough and costs nothing.
PRUNE_INTERVAL = 3600.0


class Pruner:
    def __init__(
        self,
        builds_root: Path,
        stores: Callable[[], list[ContentStore]],
        *,
        ttl: float = DEFAULT_BUILD_TTL,
        interval: float = PRUNE_INTERVAL,
    ) -> None:
        self.builds_root = builds_root
        self.stores = stores
        self.ttl = ttl
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="mesh-prune")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def prune_once(self) -> tuple[int, int]:
        """Remove what is unused for the TTL; return (work directories, blobs) removed."""
        removed = await asyncio.to_thread(prune_workdirs, self.builds_root, self.ttl)
        if removed:
            _LOGGER.info("removed %d build directories unused for the TTL", len(removed))
        blobs = size = 0
        for store in await asyncio.to_thread(self.stores):
            count, freed = await asyncio.to_thread(store.prune, self.ttl)
            blobs += count
            size += freed
        if blobs:
            _LOGGER.info("removed %d content blobs (%d bytes) unused for the TTL", blobs, size)
        return len(removed), blobs

    async def _loop(self) -> None:
        while True:
            try:
                await self.prune_once()
            except OSError as exc:
                # A directory that vanished or cannot be read: try again next round.
                _LOGGER.warning("pruning unused builds failed: %s", exc)
            await asyncio.sleep(self.interval)
