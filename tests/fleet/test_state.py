"""Fleet state per configuration: the decision table, row by row."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.fleet.advert import instance_name, parse_advert
from meshd.fleet.configs import DeviceConfig, NetworkInfo
from meshd.fleet.model import DeviceState
from meshd.fleet.state import (
    BuildRecord,
    FlashedBuild,
    FleetState,
    devices_for,
    fleet_rows,
    parse_version,
    row_state,
)
from tests.support.esphome_advert import esp32_txt, firmware_txt

LOCAL = "2026.6.5"
CURRENT = "0badf00d"
OLD = "12345678"


def dev(
    name: str,
    *,
    version: str | None = LOCAL,
    config_hash: str | None = CURRENT,
    online: bool = True,
    mac: str = "a0b1c2d3e4f5",
) -> DeviceState:
    txt = esp32_txt(name, version=version or "", config_hash=config_hash, mac=mac)
    if version is None:
        del txt["version"]
    advert, problems = parse_advert(
        instance_name(name),
        {k.encode(): v.encode() for k, v in txt.items()},
        addresses=["10.0.0.5"],
        port=6053,
    )
    assert problems == []
    return DeviceState(
        advert=advert,
        online=online,
        first_seen=1.0,
        last_seen=2.0,
        offline_since=None if online else 3.0,
        offline_reason=None if online else "left mDNS (goodbye)",
    )


def cfg(name: str | None = "dev", **kw: object) -> DeviceConfig:
    args: dict[str, object] = {
        "path": Path(f"/fleet/{name or 'broken'}.yaml"),
        "name": name,
        "has_api": True,
        "has_ota": True,
        "network": NetworkInfo("wifi"),
    }
    args.update(kw)
    return DeviceConfig(**args)  # type: ignore[arg-type]


BUILT = BuildRecord(config_hash=CURRENT, esphome_version=LOCAL, built_at=5.0)


@pytest.mark.parametrize(
    ("config", "device", "current", "build", "state", "needs", "reason"),
    [
        (cfg(), dev("dev"), CURRENT, BUILT, FleetState.UP_TO_DATE, False, "runs config hash"),
        (cfg(), dev("dev", config_hash=OLD), CURRENT, BUILT, FleetState.OUTDATED, True,
         f"runs config hash {OLD}, the YAML's is now {CURRENT}"),
        (cfg(), dev("dev", version="2025.12.3"), CURRENT, BUILT, FleetState.OUTDATED, True,
         "runs esphome 2025.12.3, older than local 2026.6.5"),
        (cfg(), dev("dev", version="2026.6.0b2"), CURRENT, BUILT, FleetState.OUTDATED, True,
         "older than local"),
        (cfg(), dev("dev", version="2026.7.0-dev"), CURRENT, BUILT, FleetState.UP_TO_DATE,
         False, "runs config hash"),
        (cfg(), dev("dev", config_hash=OLD, online=False), CURRENT, BUILT, FleetState.OFFLINE,
         True, "offline: left mDNS (goodbye)"),
        (cfg(), dev("dev", online=False), CURRENT, BUILT, FleetState.OFFLINE, False, "offline"),
        (cfg(), None, CURRENT, None, FleetState.NEVER_BUILT, None, "never built"),
        (cfg(), None, CURRENT, BUILT, FleetState.OFFLINE, None, "never seen on mDNS"),
        (cfg(has_api=False), None, CURRENT, BUILT, FleetState.UNKNOWN, None, "no api:"),
        (cfg(None, error="esphome: name is missing"), None, None, None, FleetState.UNKNOWN,
         None, "esphome: name is missing"),
        (cfg(), dev("dev"), None, BUILT, FleetState.UNKNOWN, None,
         "the current config hash is not known yet"),
        (cfg(), dev("dev", config_hash=None), CURRENT, BUILT, FleetState.UNKNOWN, None,
         "sends no config_hash"),
        (cfg(), dev("dev", version=None), CURRENT, BUILT, FleetState.UNKNOWN, None,
         "is not a version"),
        # Old firmware without config_hash is still outdated by its version.
        (cfg(), dev("dev", version="2024.11.0", config_hash=None), CURRENT, BUILT,
         FleetState.OUTDATED, True, "runs esphome 2024.11.0"),
        # Built elsewhere (the dashboard) and current: up to date without a meshd build.
        (cfg(), dev("dev"), CURRENT, None, FleetState.UP_TO_DATE, False, "runs config hash"),
    ],
)  # fmt: skip
def test_the_decision_table(
    config: DeviceConfig,
    device: DeviceState | None,
    current: str | None,
    build: BuildRecord | None,
    state: FleetState,
    needs: bool | None,
    reason: str,
) -> None:
    row = row_state(config, device, local_version=LOCAL, current_hash=current, last_build=build)
    assert row.state is state, row.reasons
    assert row.needs_update is needs
    assert any(reason in r for r in row.reasons), row.reasons


def test_a_yaml_changed_since_the_last_build_says_so() -> None:
    build = BuildRecord(config_hash=OLD, esphome_version=LOCAL)
    row = row_state(cfg(), dev("dev", config_hash=OLD), local_version=LOCAL,
                    current_hash=CURRENT, last_build=build)  # fmt: skip
    assert row.state is FleetState.OUTDATED
    assert "the YAML changed since meshd's last build" in row.reasons


def test_version_parsing_follows_esphomes_scheme() -> None:
    order = ["2024.11.0-dev", "2024.11.0b1", "2024.11.0", "2024.11.1", "2026.6.5", "2026.7.0-dev",
             "2026.7.0b1", "2026.7.0"]  # fmt: skip
    parsed = [parse_version(v) for v in order]
    assert all(p is not None for p in parsed)
    assert parsed == sorted(parsed)  # type: ignore[type-var]
    assert parse_version("banana") is None and parse_version(None) is None


def test_devices_match_by_name_or_name_plus_mac() -> None:
    devices = [
        dev("bulb"),
        dev("bulb-d3e4f5", mac="a0b1c2d3e4f5"),
        dev("bulb-000001", mac="a0b1c2d3e4f5"),  # suffix disagrees with its mac
        dev("bulb-abcdef", mac="1122334455ab"),  # wrong mac
        dev("bulbous"),
    ]
    assert [d.name for d in devices_for(cfg("bulb"), devices)] == ["bulb"]
    suffixed = cfg("bulb", name_add_mac_suffix=True)
    assert [d.name for d in devices_for(suffixed, devices)] == ["bulb-d3e4f5"]
    assert devices_for(cfg(None, error="x"), devices) == []


def test_fleet_rows_for_five_configs_and_four_devices() -> None:
    """The issue's show case in miniature: one row per configuration (per device)."""
    configs = [cfg("a"), cfg("b"), cfg("c"), cfg("d"), cfg("e", name_add_mac_suffix=True)]
    devices = [
        dev("a"),
        dev("b", config_hash=OLD),
        dev("c", online=False),
        dev("e-d3e4f5"),
        dev("stranger"),
    ]
    keys = {str(c.path): CURRENT for c in configs}
    builds = {str(c.path): BUILT for c in configs[:4]}
    rows = fleet_rows(configs, devices, local_version=LOCAL, current_hashes=keys,
                      last_builds=builds)  # fmt: skip
    states = {r.name: r.state.value for r in rows}
    assert states == {
        "a": "up-to-date",
        "b": "outdated",
        "c": "offline",
        "d": "offline",  # built, never seen
        "e-d3e4f5": "up-to-date",
    }
    by_name = {r.name: r for r in rows}
    as_json = by_name["b"].to_dict()
    assert as_json["running_config_hash"] == OLD and as_json["current_config_hash"] == CURRENT
    assert as_json["last_build_config_hash"] == CURRENT and as_json["address"] == "10.0.0.5"
    assert as_json["online"] is True and as_json["state"] == "outdated"


def test_row_json_without_a_device() -> None:
    row = row_state(cfg(), None, local_version=LOCAL, current_hash=None, last_build=None)
    data = row.to_dict()
    assert data["device"] is None and data["address"] is None and data["online"] is False
    assert data["state"] == "never-built"


def test_firmware_txt_for_the_host_platform_has_no_platform_key() -> None:
    txt = firmware_txt(version=LOCAL, config_hash=CURRENT, mac="983569abf679", board="host")
    assert "platform" not in txt and "network" not in txt


def test_rows_carry_the_last_flash_of_their_configuration() -> None:
    configs = [cfg("a"), cfg("b")]
    flash = FlashedBuild("a1b2c3d4e5f6", "2026.5.2", "desktop", True)
    rows = fleet_rows(
        configs,
        [dev("a"), dev("b")],
        local_version=LOCAL,
        current_hashes={},
        last_builds={},
        last_flashes={str(configs[0].path): flash},
    )
    by_name = {r.name: r.to_dict() for r in rows}
    assert by_name["a"]["last_flash"] == {
        "upload_job": "a1b2c3d4e5f6",
        "esphome_version": "2026.5.2",
        "builder": "desktop",
        "verified": True,
    }
    assert by_name["a"]["running_version"] == LOCAL  # what the device says, beside it
    assert by_name["b"]["last_flash"] is None
