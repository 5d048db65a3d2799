"""Device resolution as ``esphome run`` does it, with the real monitor as the mDNS cache."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from meshd.fleet.configs import read_config
from meshd.fleet.monitor import DeviceMonitor
from meshd.fleet.resolve import OTA_DEVICE, ResolveError, resolve_device
from tests.fleet.conftest import (
    LOOPBACK,
    device_name,
    requires_loopback_multicast,
    until,
)
from tests.support.esphome_advert import EsphomeAdvertiser, esp32_txt

# One fleet of adverts for the whole module (each announcement costs ~1 s of probing).
pytestmark = [requires_loopback_multicast, pytest.mark.asyncio(loop_scope="module")]

OTA = "ota:\n  - platform: esphome\n"


class Fleet:
    def __init__(self, monitor: DeviceMonitor, directory: Path, names: dict[str, str]) -> None:
        self.monitor = monitor
        self.dir = directory
        self.names = names  # role -> device name announced

    def config(self, text: str, filename: str = "dev.yaml") -> Path:
        path = self.dir / filename
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def fleet(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    async with EsphomeAdvertiser() as advertiser:
        monitor = DeviceMonitor(interfaces=[LOOPBACK])
        await monitor.start()
        try:
            yield await _announce(monitor, advertiser, tmp_path_factory.mktemp("resolve"))
        finally:
            await monitor.stop()


async def _announce(monitor: DeviceMonitor, advertiser: EsphomeAdvertiser, tmp: Path) -> Fleet:
    base = device_name("bulb")
    names = {
        "plain": device_name("plain"),
        "base": base,
        "bulb1": f"{base}-d3e4f5",
        "bulb2": f"{base}-0a0b0c",
    }
    macs = {"bulb1": "a0b1c2d3e4f5", "bulb2": "a0b1c20a0b0c"}
    addresses = {"plain": "127.0.0.1", "bulb1": "127.0.0.1", "bulb2": "127.0.0.1"}
    await asyncio.gather(
        *(
            advertiser.announce(
                names[role],
                port=6053,
                txt=esp32_txt(
                    names[role],
                    version="2026.6.5",
                    config_hash="0badf00d",
                    mac=macs.get(role, "a0b1c2d3e4f5"),
                ),
                addresses=(address,),
            )
            for role, address in addresses.items()
        )
    )
    await until(lambda: all(monitor.get(names[r]) for r in addresses), "the fleet's adverts")
    return Fleet(monitor, tmp, names)


async def test_an_explicit_device_is_used_verbatim(fleet: Fleet) -> None:
    cfg = read_config(fleet.config(f"esphome:\n  name: x\nwifi:\n{OTA}"))
    res = resolve_device(cfg, fleet.monitor, "192.168.9.9")
    assert res.address == "192.168.9.9" and res.how == "given with --device 192.168.9.9"
    assert resolve_device(cfg, fleet.monitor, "/dev/ttyUSB0").address == "/dev/ttyUSB0"


@pytest.mark.parametrize("device", [None, OTA_DEVICE])
async def test_use_address_ip_comes_first(fleet: Fleet, device: str | None) -> None:
    name = fleet.names["plain"]
    cfg = read_config(
        fleet.config(f"esphome:\n  name: {name}\nwifi:\n  use_address: 10.9.8.7\n{OTA}")
    )
    res = resolve_device(cfg, fleet.monitor, device)
    assert res.address == "10.9.8.7"
    assert res.how == "wifi use_address 10.9.8.7 from the configuration"


async def test_a_static_ip_is_esphomes_default_address(fleet: Fleet) -> None:
    cfg = read_config(
        fleet.config(
            f"esphome:\n  name: x\nethernet:\n  manual_ip:\n    static_ip: 10.1.1.1\n{OTA}"
        )
    )
    res = resolve_device(cfg, fleet.monitor)
    assert res.address == "10.1.1.1" and "manual_ip static_ip" in res.how


async def test_the_default_local_name_is_resolved_by_the_monitor(fleet: Fleet) -> None:
    name = fleet.names["plain"]
    cfg = read_config(fleet.config(f"esphome:\n  name: {name}\nwifi:\n{OTA}"))
    res = resolve_device(cfg, fleet.monitor)
    assert res.address == "127.0.0.1" and res.device == name
    assert res.how == f"wifi address {name}.local: device {name} online on mDNS at 127.0.0.1"


async def test_an_unseen_local_name_is_left_to_mdns_at_upload_time(fleet: Fleet) -> None:
    cfg = read_config(fleet.config(f"esphome:\n  name: nobody-here\nwifi:\n{OTA}"))
    res = resolve_device(cfg, fleet.monitor)
    assert res.address == "nobody-here.local" and res.device is None
    assert "not seen on mDNS yet" in res.how


async def test_a_dns_use_address_is_used_as_is(fleet: Fleet) -> None:
    cfg = read_config(fleet.config(f"esphome:\n  name: x\nwifi:\n  use_address: x.lan\n{OTA}"))
    res = resolve_device(cfg, fleet.monitor)
    assert res.address == "x.lan" and res.how == "wifi use_address x.lan from the configuration"


async def test_mac_suffix_configs_use_the_matching_devices(fleet: Fleet) -> None:
    base = fleet.names["base"]
    cfg = read_config(
        fleet.config(f"esphome:\n  name: {base}\n  name_add_mac_suffix: true\nwifi:\n{OTA}")
    )
    res = resolve_device(cfg, fleet.monitor)
    assert res.device == f"{base}-0a0b0c"  # sorted by name; both match their macs
    assert res.candidates == ("127.0.0.1", "127.0.0.1")
    assert "name_add_mac_suffix: 2 device(s) match" in res.how
    lonely = read_config(
        fleet.config(
            f"esphome:\n  name: lonely\n  name_add_mac_suffix: true\nwifi:\n{OTA}", "l.yaml"
        )
    )
    with pytest.raises(ResolveError, match="no device matching 'lonely-<mac>'"):
        resolve_device(lonely, fleet.monitor)


async def test_mdns_disabled_cannot_use_a_local_name(fleet: Fleet) -> None:
    cfg = read_config(fleet.config(f"esphome:\n  name: x\nwifi:\nmdns:\n  disabled: true\n{OTA}"))
    with pytest.raises(ResolveError, match="mdns: disabled"):
        resolve_device(cfg, fleet.monitor)


async def test_no_ota_or_no_name_cannot_be_resolved(fleet: Fleet) -> None:
    with pytest.raises(ResolveError, match="has no ota:"):
        resolve_device(read_config(fleet.config("esphome:\n  name: x\nwifi:\n")), fleet.monitor)
    with pytest.raises(ResolveError, match="name is missing"):
        resolve_device(read_config(fleet.config(f"esphome: {{}}\nwifi:\n{OTA}")), fleet.monitor)


async def test_host_configs_use_the_monitor_then_the_local_name(fleet: Fleet) -> None:
    name = fleet.names["plain"]
    known = read_config(fleet.config(f"esphome:\n  name: {name}\nhost:\n{OTA}"))
    res = resolve_device(known, fleet.monitor)
    assert res.address == "127.0.0.1" and "no wifi/ethernet/openthread" in res.how
    unknown = read_config(fleet.config(f"esphome:\n  name: ghost\nhost:\n{OTA}", "g.yaml"))
    res = resolve_device(unknown, fleet.monitor)
    assert res.address == "ghost.local" and "not seen on mDNS" in res.how
    assert resolve_device(unknown, None).address == "ghost.local"
