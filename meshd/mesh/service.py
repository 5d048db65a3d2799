"""The mesh as one daemon ``Service``: start after the engine, stop before it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from meshd.jobs.engine import Engine
from meshd.mesh.node import MeshNode, MeshSettings
from meshd.mesh.peering.advert import ToolchainWatch
from meshd.toolchain.tools import Toolchain

# The mesh advertises and schedules by esphome version; wait this long for the
# daemon's `esphome version` probe before starting without it. A receiver must not be
# invisible because esphome is slow to import: it advertises "unknown" meanwhile, and
# the advert is updated when the probe answers (scheduling reads the version live).
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
        toolchains: Callable[[], Sequence[str]] = tuple,
        recent_toolchains: Callable[[], Sequence[str]] | None = None,
        watch_toolchains: ToolchainWatch | None = None,
    ) -> None:
        self._version_known = version_known
        self._esphome_version = esphome_version
        self._late_version: asyncio.Task[None] | None = None
        self.node = MeshNode(
            data_dir,
            engine,
            toolchain,
            settings,
            esphome_version=lambda: esphome_version() or "",
            toolchains=toolchains,
            recent_toolchains=recent_toolchains,
            watch_toolchains=watch_toolchains,
        )

    async def start(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._version_known(), VERSION_WAIT)
        await self.node.start()
        if not self._esphome_version():
            self._late_version = asyncio.create_task(
                self._advertise_version_when_known(), name="mesh-late-esphome-version"
            )

    async def _advertise_version_when_known(self) -> None:
        await self._version_known()
        version = self._esphome_version()
        if version and self.node.discovery is not None:
            self.node.discovery.update_advert(esphome_version=version)

    async def stop(self) -> None:
        if self._late_version is not None:
            self._late_version.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._late_version
        await self.node.stop()
