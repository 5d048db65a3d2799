"""Fleet fixtures: a device monitor and an ESPHome advertiser, both pinned to 127.0.0.1.

Device names carry a random suffix, so adverts of another test (or a suite running on
the same loopback) cannot be mistaken for this test's devices.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshd.fleet.model import DeviceEvent
from meshd.fleet.monitor import DeviceMonitor
from meshd.fleet.store import FleetStore
from tests.conftest import COLD_COMPILE_TIMEOUT, ESPHOME
from tests.support.esphome_advert import LOOPBACK, EsphomeAdvertiser
from tests.support.host_device import HostDevice, free_port
from tests.support.mesh_netns import loopback_multicast_works
from tests.support.netns import isolated, netns_available

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


# -- a real host-platform firmware with api: and the version text sensor ----------------------

FLEET_NAME = "meshd-fleet-host"
FLEET_PASSWORD = "fleet-ota-password"

FLEET_YAML = """\
substitutions:
  devicename: {name}
esphome:
  name: ${{devicename}}
  friendly_name: Fleet Host
  on_boot:
    then:
      - logger.log: "meshd build marker {marker}"
host:
logger:
  level: DEBUG
api:
  port: {api_port}
ota:
  - platform: esphome
    port: {ota_port}
    password: !secret ota_password
text_sensor:
  - platform: version
    name: Version
"""


@dataclass(frozen=True)
class FleetFirmware:
    """A host project with ``api:`` and ``text_sensor: version``, compiled once per session.

    The version text sensor is how the running firmware itself reports its config hash
    (``2026.6.5 (config hash 0x…, built …)``), read over the native API.
    """

    config: Path
    name: str
    api_port: int
    ota_port: int
    snapshot: Path
    """An immutable copy of the first build's program (marker ``A``)."""
    env: dict[str, str]

    def write(self, marker: str) -> None:
        self.config.write_text(
            FLEET_YAML.format(
                name=self.name, marker=marker, api_port=self.api_port, ota_port=self.ota_port
            ),
            encoding="utf-8",
        )

    @property
    def program(self) -> Path:
        return (
            self.config.parent
            / ".esphome"
            / "build"
            / self.name
            / ".pioenvs"
            / self.name
            / "program"
        )


@pytest.fixture(scope="session")
def fleet_firmware(
    tmp_path_factory: pytest.TempPathFactory, esphome_env: dict[str, str]
) -> FleetFirmware:
    """One cold compile (~40 s here) of the fleet host project."""
    if not netns_available():
        pytest.skip("needs `unshare -n` to keep the build offline")
    if shutil.which("g++") is None:
        pytest.skip("the host platform needs g++ (and libssl-dev)")
    project = tmp_path_factory.mktemp("fleet-host")
    (project / "secrets.yaml").write_text(f"ota_password: {FLEET_PASSWORD}\n", encoding="utf-8")
    firmware = FleetFirmware(
        config=project / "fleet.yaml",
        name=FLEET_NAME,
        api_port=free_port(),
        ota_port=free_port(),
        snapshot=project / "program-A",
        env=esphome_env,
    )
    firmware.write("A")
    result = subprocess.run(
        isolated(ESPHOME, "compile", str(firmware.config)),
        env=esphome_env,
        capture_output=True,
        text=True,
        timeout=COLD_COMPILE_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cold fleet compile failed:\n{(result.stdout + result.stderr)[-4000:]}")
    shutil.copy2(firmware.program, firmware.snapshot)
    return firmware


@pytest.fixture
def fleet_project(fleet_firmware: FleetFirmware) -> Iterator[FleetFirmware]:
    """The fleet project for a test that recompiles it; marker A is restored afterwards."""
    yield fleet_firmware
    fleet_firmware.write("A")


@pytest.fixture
def fleet_device(
    fleet_firmware: FleetFirmware, loopback_shim: Path, tmp_path: Path
) -> Iterator[HostDevice]:
    """A running copy of the first build (marker A), on 127.0.0.1 only."""
    device = HostDevice(
        fleet_firmware.snapshot,
        tmp_path / "device",
        port=fleet_firmware.ota_port,
        shim=loopback_shim,
    )
    try:
        device.start()
        device.wait_for("meshd build marker A")
        yield device
    finally:
        device.stop()
