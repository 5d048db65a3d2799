"""The device monitor against real zeroconf on 127.0.0.1, fed by firmware-exact adverts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshd.fleet.advert import SERVICE_TYPE
from meshd.fleet.model import DeviceEventKind
from meshd.fleet.monitor import OFFLINE_GOODBYE, OFFLINE_RESTORED, OFFLINE_SILENT
from meshd.fleet.store import FleetStore
from tests.fleet.conftest import (
    LOOPBACK,
    MonitorFactory,
    Recorder,
    device_name,
    requires_loopback_multicast,
    until,
)
from tests.support.esphome_advert import EsphomeAdvertiser, esp32_txt, firmware_txt

pytestmark = requires_loopback_multicast

HASH_A = "1a2b3c4d"
HASH_B = "deadbeef"


async def test_an_announcement_reaches_listeners_with_the_firmware_txt(
    monitors: MonitorFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    monitor = await monitors()
    # As firmware starts: probe for conflicts, then announce.
    async with EsphomeAdvertiser(probe=True) as advertiser:
        heard: dict[str, float] = {}

        def on_event(event: Any) -> None:
            heard.setdefault(event.device.name, time.monotonic())

        monitor.add_listener(on_event)
        name = device_name("kitchen")
        txt = firmware_txt(
            version="2026.6.5",
            config_hash=HASH_A,
            mac="a0b1c2d3e4f5",
            board="esp32-s3-devkitc-1",
            friendly_name="Kitchen Sensor",
            platform="ESP32",
            network="wifi",
            api_encryption=True,
            project=("acme.sensor", "1.2.0"),
        )
        sent = await advertiser.announce(name, port=6053, txt=txt)
        await until(lambda: name in heard, "the announcement")
        device = monitor.get(name)
        assert device is not None and device.online
        advert = device.advert
        assert advert.addresses == (LOOPBACK,) and advert.port == 6053
        assert advert.host == f"{name}.local"
        assert advert.version == "2026.6.5" and advert.config_hash == HASH_A
        assert advert.mac == "a0b1c2d3e4f5" and advert.platform == "ESP32"
        assert advert.board == "esp32-s3-devkitc-1" and advert.network == "wifi"
        assert advert.friendly_name == "Kitchen Sensor"
        assert (advert.project_name, advert.project_version) == ("acme.sensor", "1.2.0")
        assert advert.api_encryption is True
        assert dict(advert.txt) == txt
        with capsys.disabled():  # measured, not asserted: armed uploads need < 1 s
            print(f"\n[fleet] announcement to listener: {(heard[name] - sent) * 1000:.1f} ms")


async def test_goodbye_then_return_is_offline_then_online(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    monitor = await monitors()
    rec = Recorder(monitor)
    name = device_name("sleeper")
    txt = esp32_txt(name, version="2026.6.5", config_hash=HASH_A)
    await advertiser.announce(name, port=6053, txt=txt)
    await until(lambda: rec.kinds(name) == ["online"], "online")
    first = monitor.get(name)
    assert first is not None

    await advertiser.goodbye(name)  # deep sleep: ESP-IDF mdns_free sends TTL 0
    await until(lambda: rec.kinds(name) == ["online", "offline"], "offline")
    gone = monitor.get(name)
    assert gone is not None and not gone.online
    assert gone.offline_reason == OFFLINE_GOODBYE
    assert gone.offline_since is not None and gone.last_seen == first.last_seen
    assert gone.advert == first.advert  # the last known advert is kept

    await advertiser.announce(name, port=6053, txt=txt)  # wakes up
    await until(lambda: rec.kinds(name) == ["online", "offline", "online"], "back online")
    back = rec.events[-1]
    assert back.announced and back.previous is not None and not back.previous.online
    assert back.device.first_seen == first.first_seen


async def test_a_changed_advert_is_an_update(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    monitor = await monitors()
    rec = Recorder(monitor)
    name = device_name("lamp")
    await advertiser.announce(
        name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_A)
    )
    await until(lambda: rec.kinds(name) == ["online"], "online")
    await advertiser.announce(
        name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_B)
    )
    await until(lambda: rec.kinds(name) == ["online", "updated"], "the update")
    event = rec.events[-1]
    assert event.previous is not None and event.previous.advert.config_hash == HASH_A
    assert event.device.advert.config_hash == HASH_B


async def test_a_silent_device_goes_offline_after_its_ttl(
    monitors: MonitorFactory,
) -> None:
    """No goodbye (power cut): records expire, the re-query goes unanswered."""
    monitor = await monitors(stale_check_interval=0.5, resolve_timeout_ms=1000)
    rec = Recorder(monitor)
    name = device_name("plug")
    async with EsphomeAdvertiser(ttl=3) as short:
        await short.announce(
            name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_A)
        )
        await until(lambda: rec.kinds(name) == ["online"], "online")
        # Alive past its TTL: the expiry is answered by a re-query, it stays online.
        await asyncio.sleep(4)
        assert rec.kinds(name) == ["online"]
        short.vanish(name)
        await until(lambda: rec.kinds(name) == ["online", "offline"], "staleness")
        device = monitor.get(name)
        assert device is not None and device.offline_reason == OFFLINE_SILENT
        await short.announce(
            name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_A)
        )
        await until(lambda: rec.kinds(name)[-1:] == ["online"], "the return")


async def test_a_restart_knows_the_fleet_from_the_store(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser, stores: Callable[..., FleetStore]
) -> None:
    store = stores()
    first = await monitors(store=store)
    awake, asleep = device_name("awake"), device_name("asleep")
    await asyncio.gather(
        *(
            advertiser.announce(
                name, port=6053, txt=esp32_txt(name, version="2025.12.1", config_hash=HASH_A)
            )
            for name in (awake, asleep)
        )
    )
    await until(lambda: all(first.get(n) for n in (awake, asleep)), "both devices")
    await advertiser.goodbye(asleep)
    await until(lambda: not first.get(asleep).online, "the goodbye")  # type: ignore[union-attr]
    await first.stop()

    # A new daemon: the fleet is known before any mDNS traffic.
    second_store = stores()
    restored = {d.name: d for d in second_store.load_devices()}
    assert restored[awake].online and not restored[asleep].online
    second = await monitors(store=second_store)
    rec = Recorder(second)
    before = second.get(awake)
    assert before is not None and not before.online
    assert before.offline_reason == OFFLINE_RESTORED
    assert before.advert.version == "2025.12.1"
    assert second.get(asleep).offline_reason == OFFLINE_GOODBYE  # type: ignore[union-attr]
    # The browser's first query is answered by the device that is still up.
    await until(lambda: rec.kinds(awake) == ["online"], "the awake device")
    assert second.get(asleep).online is False  # type: ignore[union-attr]


async def test_a_shared_zeroconf_is_used_and_left_open(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    shared = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
    try:
        monitor = await monitors(zeroconf=shared)
        assert monitor.zeroconf is shared
        name = device_name("shared")
        await advertiser.announce(
            name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_A)
        )
        await until(lambda: monitor.get(name) is not None, "the advert")
        await monitor.stop()
        # Still usable by its owner after the monitor stopped.
        info = AsyncServiceInfo(SERVICE_TYPE, f"{name}.{SERVICE_TYPE}")
        assert await info.async_request(shared.zeroconf, 3000)
    finally:
        await shared.async_close()


async def test_hostile_adverts_are_dropped_without_breaking_the_monitor(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    caplog.set_level(logging.WARNING, logger="meshd.fleet.monitor")
    monitor = await monitors()
    rec = Recorder(monitor)
    huge = device_name("huge")
    weird = device_name("weird")
    good = device_name("good")
    await advertiser.announce(huge, port=6053, txt={f"k{i}": "x" * 200 for i in range(7)})
    await advertiser.announce(
        weird,
        port=6053,
        txt={
            "version": "not a version!",
            "config_hash": "XYZ",
            "mac": "zz",
            "network": "lora",
            "friendly_name": "ok\x07bell",
            "board": "esp32dev",
        },
    )
    await advertiser.announce(
        good, port=6053, txt=esp32_txt(good, version="2026.6.5", config_hash=HASH_A)
    )
    await until(lambda: monitor.get(good) is not None, "the good device")
    await until(lambda: monitor.get(weird) is not None, "the weird device")
    assert monitor.get(huge) is None
    weird_advert = monitor.get(weird).advert  # type: ignore[union-attr]
    # Bad fields are dropped one by one; the device itself still counts.
    assert dict(weird_advert.txt) == {"board": "esp32dev"}
    messages = caplog.text
    assert "TXT record of" in messages
    assert "config_hash is not 8 lowercase hex digits" in messages
    assert "network 'lora' is not wifi/ethernet/thread" in messages
    assert "friendly_name contains control characters" in messages
    assert loop_errors == []
    assert rec.kinds(good) == ["online"]


async def test_a_failing_listener_does_not_stop_the_others(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = await monitors()

    def broken(event: Any) -> None:
        raise RuntimeError("listener bug")

    monitor.add_listener(broken)
    rec = Recorder(monitor)
    name = device_name("robust")
    await advertiser.announce(
        name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_A)
    )
    await until(lambda: rec.kinds(name) == ["online"], "the event after a broken listener")
    assert "fleet listener failed" in caplog.text


async def test_the_device_cap_bounds_the_fleet(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="meshd.fleet.monitor")
    monitor = await monitors(max_devices=2)
    names = [device_name("cap") for _ in range(3)]
    await asyncio.gather(
        *(
            advertiser.announce(
                name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_A)
            )
            for name in names
        )
    )
    await until(lambda: "fleet full (2 devices); ignored" in caplog.text, "the refusal")
    assert len(monitor.devices()) == 2


async def test_mac_suffix_and_host_lookups(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    monitor = await monitors()
    base = device_name("bulb")
    right, wrong_mac, other = f"{base}-d3e4f5", f"{base}-aaaaaa", f"{base}x-d3e4f5"
    await asyncio.gather(
        *(
            advertiser.announce(
                name,
                port=6053,
                txt=esp32_txt(name, version="2026.6.5", config_hash=HASH_A, mac="a0b1c2d3e4f5"),
            )
            for name in (right, wrong_mac, other)
        )
    )
    await until(lambda: all(monitor.get(n) for n in (right, wrong_mac, other)), "three bulbs")
    assert [d.name for d in monitor.mac_suffix_matches(base)] == [right]
    assert monitor.by_host(f"{right}.local").name == right  # type: ignore[union-attr]
    assert monitor.by_host(f"{right.upper()}.local.").name == right  # type: ignore[union-attr]
    assert monitor.by_host("nobody.local") is None
    assert monitor.forget(right) and monitor.get(right) is None


def test_event_kinds() -> None:
    assert {k.value for k in DeviceEventKind} == {"online", "updated", "offline"}
