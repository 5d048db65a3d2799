"""Flash verification's rules over real mDNS on 127.0.0.1 (the firmware runs are in
test_real_firmware.py): when a match is proof, when a mismatch is a verdict."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from meshd.fleet.buildinfo import BuildIdentity
from meshd.fleet.configs import read_config
from meshd.fleet.verify import ApiTarget, FlashVerifier, Outcome, Verification, api_target
from tests.fleet.conftest import (
    MonitorFactory,
    device_name,
    requires_loopback_multicast,
    until,
)
from tests.support.esphome_advert import EsphomeAdvertiser, esp32_txt

pytestmark = requires_loopback_multicast

OLD, NEW = "11111111", "22222222"
EXPECTED = BuildIdentity(config_hash=NEW, esphome_version="2026.6.5", build_time_str=None)


async def start(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser, config_hash: str = OLD
) -> tuple[str, object]:
    monitor = await monitors()
    name = device_name("flash")
    txt = esp32_txt(name, version="2026.6.5", config_hash=config_hash)
    await advertiser.announce(name, port=6053, txt=txt)
    await until(lambda: monitor.get(name) is not None, "the device")
    return name, monitor


def verifying(
    monitor: object, name: str, *, wait: float = 20, lines: list[str] | None = None
) -> asyncio.Task[Verification]:
    verifier = FlashVerifier(monitor=monitor)  # type: ignore[arg-type]
    before = monitor.get(name)  # type: ignore[attr-defined]
    return asyncio.create_task(
        verifier.verify(
            EXPECTED,
            device=name,
            before=before,
            wait_seconds=wait,
            log=(lines if lines is not None else []).append,
        )
    )


async def test_the_new_hash_after_a_reboot_is_verified(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    name, monitor = await start(monitors, advertiser)
    task = verifying(monitor, name)
    await advertiser.goodbye(name)
    await advertiser.announce(
        name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=NEW)
    )
    result = await task
    assert result.outcome is Outcome.VERIFIED and result.via == "mdns"
    assert result.summary == "verified" and NEW in result.detail


async def test_the_old_hash_after_a_reboot_is_wrong_build(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    name, monitor = await start(monitors, advertiser)
    lines: list[str] = []
    task = verifying(monitor, name, lines=lines)
    await advertiser.goodbye(name)
    await advertiser.announce(
        name, port=6053, txt=esp32_txt(name, version="2026.6.5", config_hash=OLD)
    )
    result = await task
    assert result.outcome is Outcome.WRONG_BUILD and result.summary == "wrong build running"
    assert f"config hash {OLD} (built {NEW})" in result.detail
    assert any("went away" in line for line in lines)


async def test_an_older_version_with_the_same_hash_is_wrong_build(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    name, monitor = await start(monitors, advertiser)
    task = verifying(monitor, name)
    await advertiser.goodbye(name)
    await advertiser.announce(
        name, port=6053, txt=esp32_txt(name, version="2025.12.0", config_hash=NEW)
    )
    result = await task
    assert result.outcome is Outcome.WRONG_BUILD
    assert "esphome 2025.12.0 (built 2026.6.5)" in result.detail


async def test_a_device_that_never_reboots_still_runs_the_old_build(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    """No goodbye, no return: at the deadline the last answer stands (it kept the old build)."""
    name, monitor = await start(monitors, advertiser)
    task = verifying(monitor, name, wait=2)
    # An answer from the old firmware right after the upload (not yet rebooted).
    await advertiser.announce(
        name, port=6053, txt={**esp32_txt(name, version="2026.6.5", config_hash=OLD), "seq": "1"}
    )
    result = await task
    assert result.outcome is Outcome.WRONG_BUILD
    assert result.detail.startswith("device still runs config hash")


async def test_going_away_and_not_returning_is_not_verified(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    """What it said before going away is discarded; nothing came back."""
    name, monitor = await start(monitors, advertiser)
    task = verifying(monitor, name, wait=2)
    await advertiser.announce(
        name, port=6053, txt={**esp32_txt(name, version="2026.6.5", config_hash=OLD), "seq": "1"}
    )
    await advertiser.goodbye(name)
    result = await task
    assert result.outcome is Outcome.NOT_VERIFIED
    assert result.summary == "not verified (device did not return in 2 s)"


async def test_an_identical_build_without_a_reboot_is_verified_with_a_caveat(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    name, monitor = await start(monitors, advertiser, config_hash=NEW)
    task = verifying(monitor, name, wait=2)
    await advertiser.announce(
        name, port=6053, txt={**esp32_txt(name, version="2026.6.5", config_hash=NEW), "seq": "1"}
    )
    result = await task
    assert result.outcome is Outcome.VERIFIED
    assert "identical to the build before the upload and no reboot was seen" in result.detail


async def test_a_device_that_already_announced_the_new_build_is_verified_at_once(
    monitors: MonitorFactory, advertiser: EsphomeAdvertiser
) -> None:
    name, monitor = await start(monitors, advertiser, config_hash=NEW)
    before = monitor.get(name)  # type: ignore[attr-defined]
    assert before is not None
    # The state when the upload started said the old build.
    stale = replace(
        before, advert=replace(before.advert, txt={**before.advert.txt, "config_hash": OLD})
    )
    result = await FlashVerifier(monitor=monitor).verify(  # type: ignore[arg-type]
        EXPECTED, device=name, before=stale, wait_seconds=20
    )
    assert result.outcome is Outcome.VERIFIED


async def test_nothing_to_check_with_is_not_verified() -> None:
    result = await FlashVerifier().verify(EXPECTED, device="x", wait_seconds=1)
    assert result.outcome is Outcome.NOT_VERIFIED
    assert result.summary == "not verified (no mDNS monitor and no reachable api: to check with)"
    # A .local name with no pinned zeroconf is never handed to aioesphomeapi (it would
    # open its own zeroconf on every interface).
    api_only = await FlashVerifier().verify(
        EXPECTED, device=None, api=ApiTarget("kitchen.local"), wait_seconds=1
    )
    assert api_only.outcome is Outcome.NOT_VERIFIED


async def test_a_refused_api_connection_means_the_device_is_away() -> None:
    """127.0.0.1 on a closed port refuses at once: not verified, and no false verdict."""
    from tests.support.host_device import free_port

    result = await FlashVerifier(api_retry_interval=0.2).verify(
        EXPECTED, device=None, api=ApiTarget("127.0.0.1", free_port()), wait_seconds=2
    )
    assert result.outcome is Outcome.NOT_VERIFIED
    assert result.detail == "device did not return in 2 s"


def test_the_api_target_comes_from_the_yaml(tmp_path: Path) -> None:
    key = "px7tsbK3C7bpXHr2OevEV2ZMg/FrNBw2+O2pNPbedtA="
    (tmp_path / "secrets.yaml").write_text(f"key: {key}\n")
    enc = tmp_path / "enc.yaml"
    enc.write_text(
        "esphome:\n  name: enc\napi:\n  port: 6055\n  encryption:\n    key: !secret key\n"
    )
    assert api_target(read_config(enc), "10.0.0.4", None) == ApiTarget("10.0.0.4", 6055, key, "enc")

    suffixed = tmp_path / "plain.yaml"
    suffixed.write_text("esphome:\n  name: plain\n  name_add_mac_suffix: true\napi:\n")
    config = read_config(suffixed)
    # With a MAC suffix the device name is only known once a device is matched.
    assert api_target(config, "10.0.0.5", None) == ApiTarget("10.0.0.5", 6053, None, None)
    matched = api_target(config, "10.0.0.5", "plain-a1b2c3")
    assert matched == ApiTarget("10.0.0.5", 6053, None, "plain-a1b2c3")

    no_api = tmp_path / "noapi.yaml"
    no_api.write_text("esphome:\n  name: noapi\n")
    assert api_target(read_config(no_api), "10.0.0.6", None) is None
