"""The fleet against a real host-platform firmware compiled by the real esphome 2026.6.5.

The firmware has ``api:`` and a ``version`` text sensor, so the running device itself
reports its config hash and build time; ``HostDeviceMirror`` announces on its behalf
on 127.0.0.1 exactly what it reports (the host platform has no mDNS of its own).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aioesphomeapi import APIClient, TextSensorInfo, TextSensorState

from meshd.fleet.buildinfo import BuildIdentity, build_identity
from meshd.fleet.confighash import ConfigHasher
from meshd.fleet.configs import read_config
from meshd.fleet.monitor import DeviceMonitor
from meshd.fleet.resolve import resolve_device
from meshd.fleet.verify import ApiTarget, FlashVerifier, Outcome
from meshd.toolchain.commands import invoke_esphome
from meshd.toolchain.tools import Toolchain
from tests.fleet.conftest import (
    LOOPBACK,
    FleetFirmware,
    requires_loopback_multicast,
    until,
)
from tests.support.esphome_advert import EsphomeAdvertiser, HostDeviceMirror
from tests.support.host_device import BOOT_LINE, HostDevice

pytestmark = [pytest.mark.slow, requires_loopback_multicast]

_SENSOR_RE = re.compile(r"^2026\.6\.5 \(config hash 0x([0-9a-f]{8}), built (.+)\)$")


async def device_report(port: int) -> tuple[str, str, str]:
    """(config hash, build time, compilation_time) as the running firmware reports them."""
    client = APIClient(LOOPBACK, port, None)
    async with asyncio.timeout(20):
        await client.connect(login=False)
        try:
            info = await client.device_info()
            entities, _ = await client.list_entities_services()
            keys = {e.key for e in entities if isinstance(e, TextSensorInfo)}
            state: asyncio.Future[str] = asyncio.get_running_loop().create_future()

            def on_state(s: object) -> None:
                if isinstance(s, TextSensorState) and s.key in keys and not state.done():
                    state.set_result(s.state)

            client.subscribe_states(on_state)
            text = await state
        finally:
            await client.disconnect()
    match = _SENSOR_RE.match(text)
    assert match, text
    return match.group(1), match.group(2), info.compilation_time


@dataclass
class Rig:
    """A running device, the mirror announcing it, and a monitor listening."""

    device: HostDevice
    mirror: HostDeviceMirror
    monitor: DeviceMonitor
    firmware: FleetFirmware


@pytest.fixture
async def rig(fleet_firmware: FleetFirmware, fleet_device: HostDevice) -> AsyncIterator[Rig]:
    monitor = DeviceMonitor(interfaces=[LOOPBACK])
    await monitor.start()
    try:
        async with (
            EsphomeAdvertiser() as advertiser,
            HostDeviceMirror(advertiser, api_port=fleet_firmware.api_port) as mirror,
        ):
            await until(
                lambda: (d := monitor.get(fleet_firmware.name)) is not None and d.online,
                "the device's advert",
            )
            yield Rig(fleet_device, mirror, monitor, fleet_firmware)
    finally:
        await monitor.stop()


async def compile_config(toolchain: Toolchain, firmware: FleetFirmware) -> BuildIdentity:
    await invoke_esphome(toolchain, ["compile", str(firmware.config)], log=lambda _line: None)
    return build_identity(firmware.config)


async def test_the_computed_hash_is_what_the_firmware_reports(
    rig: Rig, offline_toolchain: Toolchain
) -> None:
    """esphome config-hash == build_info.json == the device's own report == its mDNS TXT."""
    # The build tree is shared with tests that compile other markers: rebuild A (warm).
    built = await compile_config(offline_toolchain, rig.firmware)
    hasher = ConfigHasher(offline_toolchain, esphome_version="2026.6.5")
    computed = await hasher.current(rig.firmware.config)
    reported_hash, reported_time, compilation_time = await device_report(rig.firmware.api_port)
    assert computed.value == built.config_hash == reported_hash
    assert built.build_time_str == reported_time == compilation_time
    assert built.esphome_version == "2026.6.5" and built.name == rig.firmware.name
    seen = rig.monitor.get(rig.firmware.name)
    assert seen is not None and seen.advert.config_hash == computed.value
    assert seen.advert.version == "2026.6.5" and seen.advert.board == "host"
    assert seen.advert.mac == "983569abf679" and seen.advert.friendly_name == "Fleet Host"
    assert seen.advert.port == rig.firmware.api_port
    # The inputs esphome listed include the secrets file the YAML uses.
    assert {f.path.rsplit("/", 1)[-1] for f in computed.files} >= {"fleet.yaml", "secrets.yaml"}


async def test_resolve_flash_and_verify_a_new_build(
    rig: Rig,
    fleet_project: FleetFirmware,
    offline_toolchain: Toolchain,
    loopback_toolchain: Toolchain,
) -> None:
    """No --device: the monitor resolves it; real OTA; both witnesses read the new build."""
    before = rig.monitor.get(fleet_project.name)
    assert before is not None
    fleet_project.write("B")
    expected = await compile_config(offline_toolchain, fleet_project)
    assert expected.config_hash != before.advert.config_hash

    resolution = resolve_device(read_config(fleet_project.config), rig.monitor)
    assert resolution.address == LOOPBACK and resolution.device == fleet_project.name
    assert "no wifi/ethernet/openthread" in resolution.how

    boots = rig.device.count(BOOT_LINE)
    await invoke_esphome(
        loopback_toolchain,
        ["upload", "--device", resolution.address, str(fleet_project.config)],
        log=lambda _line: None,
    )
    by_mdns = FlashVerifier(monitor=rig.monitor)
    by_api = FlashVerifier()
    api = ApiTarget(LOOPBACK, fleet_project.api_port, expected_name=fleet_project.name)
    mdns_result, api_result = await asyncio.gather(
        by_mdns.verify(expected, device=fleet_project.name, before=before, wait_seconds=60),
        by_api.verify(expected, device=fleet_project.name, api=api, wait_seconds=60),
    )
    assert mdns_result.outcome is Outcome.VERIFIED, mdns_result
    assert mdns_result.via == "mdns" and expected.config_hash in mdns_result.detail
    assert api_result.outcome is Outcome.VERIFIED, api_result
    assert api_result.via == "api" and expected.build_time_str in api_result.detail
    await asyncio.to_thread(rig.device.wait_for, "meshd build marker B")
    assert rig.device.count(BOOT_LINE) == boots + 1


async def test_a_device_that_boots_its_old_build_is_wrong_build_running(
    rig: Rig, fleet_project: FleetFirmware, offline_toolchain: Toolchain
) -> None:
    """The flash 'took', the device rebooted, and came up with the build it had before."""
    before = rig.monitor.get(fleet_project.name)
    assert before is not None
    fleet_project.write("W")
    expected = await compile_config(offline_toolchain, fleet_project)
    verifier = FlashVerifier(monitor=rig.monitor)
    api = ApiTarget(LOOPBACK, fleet_project.api_port, expected_name=fleet_project.name)
    lines: list[str] = []
    verifying = asyncio.create_task(
        verifier.verify(
            expected,
            device=fleet_project.name,
            before=before,
            api=api,
            wait_seconds=60,
            log=lines.append,
        )
    )
    await until(lambda: any("waiting up to" in line for line in lines), "the verifier")
    # A rollback from the outside: the device reboots into its old executable.
    await asyncio.to_thread(rig.device.stop)
    await asyncio.to_thread(rig.device.start)
    result = await verifying
    assert result.outcome is Outcome.WRONG_BUILD, result
    assert result.summary == "wrong build running"
    assert before.advert.config_hash is not None
    if result.via == "mdns":
        assert f"config hash {before.advert.config_hash}" in result.detail
    else:
        assert "compiled" in result.detail
    assert any("went away" in line for line in lines)


async def test_a_device_that_does_not_return_is_not_verified(
    rig: Rig, fleet_firmware: FleetFirmware
) -> None:
    expected = build_identity(fleet_firmware.config)
    verifier = FlashVerifier(monitor=rig.monitor)
    api = ApiTarget(LOOPBACK, fleet_firmware.api_port, expected_name=fleet_firmware.name)
    await asyncio.to_thread(rig.device.stop)
    await until(lambda: not rig.monitor.get(fleet_firmware.name).online, "the goodbye")  # type: ignore[union-attr]
    result = await verifier.verify(expected, device=fleet_firmware.name, api=api, wait_seconds=3)
    assert result.outcome is Outcome.NOT_VERIFIED
    assert result.summary == "not verified (device did not return in 3 s)"


async def test_an_encryption_key_the_device_does_not_use_is_not_its_build(
    rig: Rig, fleet_firmware: FleetFirmware
) -> None:
    """The key from the YAML goes to aioesphomeapi; a plaintext device fails the check."""
    expected = build_identity(fleet_firmware.config)
    api = ApiTarget(
        LOOPBACK,
        fleet_firmware.api_port,
        noise_psk="px7tsbK3C7bpXHr2OevEV2ZMg/FrNBw2+O2pNPbedtA=",
        expected_name=fleet_firmware.name,
    )
    result = await FlashVerifier(api_retry_interval=0.5).verify(
        expected, device=fleet_firmware.name, api=api, wait_seconds=3
    )
    assert result.outcome is Outcome.WRONG_BUILD, result
    assert "another API encryption setting" in result.detail
