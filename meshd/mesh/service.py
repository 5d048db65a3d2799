"""The mesh as one daemon ``Service``: start after the engine, stop before it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from meshd.jobs.engine import Engine
from meshd.mesh.node import MeshNode, MeshSettings
from meshd.toolchain.tools import Toolchain

# The mesh advertises and schedules by esphome version; wait this long for the
# daemon's `esphome version` probe before starting without it (it fills in later for
# scheduling; the mDNS advert then says "unknown" until the next start).
VERSION_WAIT = 60.0


class MeshService:
    name = "mesh"

    def __init__(
        self,
        data_dir: Path,
        engine: Engine,
        toolchain: Toolchain,
        settings: MeshSettings,
        *,
        esphome_version: Callable[[], str | None],
        version_known: Callable[[], Awaitable[object]],
    ) -> None:
        self._version_known = version_known
        self.node = MeshNode(
            data_dir,
            engine,
            toolchain,
            settings,
            esphome_version=lambda: esphome_version() or "",
        )

    async def start(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._version_known(), VERSION_WAIT)
        await self.node.start()

    async def stop(self) -> None:
        await self.node.stop()
