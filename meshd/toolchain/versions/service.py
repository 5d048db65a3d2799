"""The daemon's toolchain sweeper: once at start, then hourly (docs/TOOLCHAIN.md).

A service in the daemon's shape (``start``/``stop``): it removes provisioned toolchains
unused for ``toolchain_max_idle`` or over ``toolchain_disk_budget``, never one a job
holds (``ToolchainStore.sweep`` checks the leases), and logs what it removed. A sweep
that fails is logged and tried again at the next interval; it never stops the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from meshd.toolchain.versions.store import SweepReport, ToolchainStore
from meshd.toolchain.versions.sweep import SweepPolicy

_LOGGER = logging.getLogger(__name__)

SWEEP_INTERVAL: Final = 3600.0


class ToolchainSweeper:
    name = "toolchain-sweeper"

    def __init__(
        self, store: ToolchainStore, policy: SweepPolicy, *, interval: float = SWEEP_INTERVAL
    ) -> None:
        self.store = store
        self.policy = policy
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.sweep_once()
        self._task = asyncio.create_task(self._loop(), name="toolchain-sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep_once(self) -> SweepReport | None:
        try:
            report = await self.store.sweep(self.policy)
        except OSError as exc:
            _LOGGER.warning("toolchain sweep failed: %s", exc)
            return None
        for version in report.removed:
            _LOGGER.info("removed the unused toolchain esphome %s", version)
        for leftover in report.leftovers:
            _LOGGER.info("removed an interrupted provisioning: %s", leftover)
        return report

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sweep_once()
