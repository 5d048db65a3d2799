"""Fleet fixtures: a device monitor and an ESPHome advertiser, both pinned to 127.0.0.1.

Device names carry a random suffix, so adverts of another test (or a suite running on
the same loopback) cannot be mistaken for this test's devices.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.fleet.model import DeviceEvent
from meshd.fleet.monitor import DeviceMonitor
from meshd.fleet.store import FleetStore
from tests.support.esphome_advert import LOOPBACK, EsphomeAdvertiser
from tests.support.mesh_netns import loopback_multicast_works

WAIT = 20.0  # a safety net against hangs, never asserted as a duration

requires_loopback_multicast = pytest.mark.skipif(
    not loopback_multicast_works(),
    reason="multicast sent out 127.0.0.1 does not loop back here; run the suite with "
    "scripts/test (a private netns with `ip link set lo multicast on`)",
)


def device_name(prefix: str = "dev") -> str:
    return f"{prefix}-{secrets.token_hex(3)}x"


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll a real condition, bounded; fails with ``what`` if it never holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Recorder:
    """Every event the monitor announces, in order."""

    def __init__(self, monitor: DeviceMonitor) -> None:
        self.events: list[DeviceEvent] = []
        monitor.add_listener(self.events.append)

    def kinds(self, name: str) -> list[str]:
        return [e.kind.value for e in self.events if e.device.name == name]


@pytest.fixture
async def advertiser() -> AsyncIterator[EsphomeAdvertiser]:
    async with EsphomeAdvertiser(interfaces=(LOOPBACK,)) as adv:
        yield adv


MonitorFactory = Callable[..., Awaitable[DeviceMonitor]]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Callable[[str], FleetStore]]:
    """Open fleet stores in tmp_path (the same name twice: two handles on one file)."""
    opened: list[FleetStore] = []

    def open_store(name: str = "meshd.db") -> FleetStore:
        store = FleetStore(tmp_path / name)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
async def monitors() -> AsyncIterator[MonitorFactory]:
    """Start monitors pinned to 127.0.0.1 (unless given a zeroconf); all stopped at teardown."""
    started: list[DeviceMonitor] = []

    async def make(**kwargs: Any) -> DeviceMonitor:
        if "zeroconf" not in kwargs:
            kwargs.setdefault("interfaces", [LOOPBACK])
        monitor = DeviceMonitor(**kwargs)
        await monitor.start()
        started.append(monitor)
        return monitor

    yield make
    for monitor in reversed(started):
        await monitor.stop()
