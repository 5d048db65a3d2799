"""The fleet per configuration: which devices belong to it, and whether each needs a flash.

Pure functions over the monitor's snapshot, the cheap config read, the current config
hash and the engine's record of the last build; no I/O, so every branch is a unit test.

The state of one (configuration, device) row, first match wins:

================ ==================================================================
``unknown``      the YAML has no readable name, or nothing can be compared (the
                 current hash is not known yet, or the device sends no
                 ``config_hash``, or a version is not a version)
``never-built``  no device ever seen and meshd never built the configuration
``offline``      the device is known but not online now, or meshd built it but it
                 has never been seen (``needs_update`` still says, from the last
                 advert, whether it would be flashed when it returns)
``outdated``     online, and it runs an esphome older than the local one, or a
                 ``config_hash`` that differs from the current YAML's
``up-to-date``   online, running the current config hash on a version not older
                 than the local one
================ ==================================================================

A configuration without ``api:`` never announces ``_esphomelib._tcp`` (the firmware
only registers the service with the API), so once built it stays ``unknown``.
Versions compare as PEP 440 (``packaging``): esphome's ``2026.7.0b1`` and
``2026.7.0-dev`` order as esphome means them (dev < beta < release).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from packaging.version import InvalidVersion, Version

from meshd.fleet.advert import mac_suffix_of
from meshd.fleet.configs import DeviceConfig
from meshd.fleet.model import DeviceState


class FleetState(enum.StrEnum):
    UP_TO_DATE = "up-to-date"
    OUTDATED = "outdated"
    OFFLINE = "offline"
    NEVER_BUILT = "never-built"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildRecord:
    """The engine's record of meshd's last successful build of a configuration."""

    config_hash: str | None
    """8 lowercase hex digits, from the build's own ``build_info.json``."""
    esphome_version: str | None = None
    built_at: float | None = None


@dataclass(frozen=True)
class FlashedBuild:
    """What meshd last flashed for a configuration: its upload job and the record of the
    compile that upload flashed (``build`` of the job, docs/API.md)."""

    upload_job: str
    esphome_version: str | None
    """The esphome that built what was flashed; None when no record says."""
    builder: str | None = None
    """``local`` or the receiver's name; None without a record."""
    verified: bool | None = None
    """A remote build's signed provenance was verified; None for a local build or none."""

    def to_dict(self) -> dict[str, object]:
        return {
            "upload_job": self.upload_job,
            "esphome_version": self.esphome_version,
            "builder": self.builder,
            "verified": self.verified,
        }


@dataclass(frozen=True)
class FleetRow:
    configuration: str
    name: str | None
    """The device name (with its MAC suffix), else the configuration's name."""
    device: DeviceState | None
    current_hash: str | None
    last_build: BuildRecord | None
    state: FleetState
    reasons: tuple[str, ...]
    """Why the state is what it is, as sentences for people."""
    needs_update: bool | None
    """Would ``--outdated`` flash it (also for an offline device, from its last advert);
    None when that cannot be told."""
    last_flash: FlashedBuild | None = None
    """meshd's last completed upload of the configuration and what built it."""

    @property
    def address(self) -> str | None:
        return self.device.advert.addresses[0] if self.device is not None else None

    @property
    def online(self) -> bool:
        return self.device is not None and self.device.online

    @property
    def running_version(self) -> str | None:
        return self.device.advert.version if self.device is not None else None

    @property
    def running_hash(self) -> str | None:
        return self.device.advert.config_hash if self.device is not None else None

    def to_dict(self) -> dict[str, object]:
        return {
            "configuration": self.configuration,
            "name": self.name,
            "address": self.address,
            "online": self.online,
            "running_version": self.running_version,
            "running_config_hash": self.running_hash,
            "current_config_hash": self.current_hash,
            "last_build_config_hash": self.last_build.config_hash if self.last_build else None,
            "last_build_esphome_version": (
                self.last_build.esphome_version if self.last_build else None
            ),
            "state": self.state.value,
            "reasons": list(self.reasons),
            "needs_update": self.needs_update,
            "last_flash": self.last_flash.to_dict() if self.last_flash is not None else None,
            "device": self.device.to_dict() if self.device is not None else None,
        }


def parse_version(text: str | None) -> Version | None:
    if not text:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


def devices_for(config: DeviceConfig, devices: Iterable[DeviceState]) -> list[DeviceState]:
    """The devices that belong to ``config``: by ``esphome: name``, or name-plus-MAC.

    With ``name_add_mac_suffix`` a device ``<name>-abcdef`` matches when ``abcdef`` is
    the end of its ``mac`` TXT (a device that sends no ``mac`` matches by name alone).
    """
    if config.name is None:
        return []
    found = []
    for device in devices:
        if config.name_add_mac_suffix:
            suffix = mac_suffix_of(config.name, device.name)
            mac = device.advert.mac
            if suffix is not None and (mac is None or mac[-6:] == suffix):
                found.append(device)
        elif device.name == config.name:
            found.append(device)
    return sorted(found, key=lambda d: d.name)


def _outdated_reasons(
    device: DeviceState, local: Version | None, local_text: str, current_hash: str | None
) -> tuple[list[str], bool]:
    """Reasons it is outdated, and whether the comparison was complete."""
    reasons: list[str] = []
    complete = True
    running = parse_version(device.advert.version)
    if running is None or local is None:
        complete = False
    elif running < local:
        reasons.append(f"runs esphome {device.advert.version}, older than local {local_text}")
    running_hash = device.advert.config_hash
    if running_hash is None or current_hash is None:
        complete = False
    elif running_hash != current_hash:
        reasons.append(f"runs config hash {running_hash}, the YAML's is now {current_hash}")
    return reasons, complete


def _incomplete_reason(device: DeviceState, local: Version | None, current_hash: str | None) -> str:
    if current_hash is None:
        return "the current config hash is not known yet"
    if device.advert.config_hash is None:
        return "the device sends no config_hash (firmware older than esphome 2026.1)"
    if parse_version(device.advert.version) is None:
        return f"the device's version {device.advert.version!r} is not a version"
    assert local is None
    return "the local esphome version is not a version"


def row_state(
    config: DeviceConfig,
    device: DeviceState | None,
    *,
    local_version: str,
    current_hash: str | None,
    last_build: BuildRecord | None,
) -> FleetRow:
    """The row for one device of ``config`` (``device`` None: none seen)."""
    path = str(config.path)
    name = device.name if device is not None else config.name

    def row(state: FleetState, reasons: list[str], needs: bool | None) -> FleetRow:
        return FleetRow(path, name, device, current_hash, last_build, state, tuple(reasons), needs)

    extra = []
    if (
        last_build is not None
        and current_hash is not None
        and last_build.config_hash
        and last_build.config_hash != current_hash
    ):
        extra.append("the YAML changed since meshd's last build")
    if config.name is None:
        return row(FleetState.UNKNOWN, [config.error or "no device name"], None)
    if device is None:
        if last_build is None:
            return row(FleetState.NEVER_BUILT, ["never built by meshd, never seen on mDNS"], None)
        if not config.has_api:
            why = "no api: in the configuration, so the device never announces itself"
            return row(FleetState.UNKNOWN, [why, *extra], None)
        return row(FleetState.OFFLINE, ["never seen on mDNS", *extra], None)

    local = parse_version(local_version)
    outdated, complete = _outdated_reasons(device, local, local_version, current_hash)
    needs: bool | None = True if outdated else (False if complete else None)
    if not device.online:
        why = f"offline: {device.offline_reason}" if device.offline_reason else "offline"
        return row(FleetState.OFFLINE, [why, *outdated, *extra], needs)
    if outdated:
        return row(FleetState.OUTDATED, [*outdated, *extra], True)
    if not complete:
        return row(FleetState.UNKNOWN, [_incomplete_reason(device, local, current_hash)], None)
    return row(FleetState.UP_TO_DATE, [f"runs config hash {current_hash}", *extra], False)


def fleet_rows(
    configs: Iterable[DeviceConfig],
    devices: Iterable[DeviceState],
    *,
    local_version: str,
    current_hashes: Mapping[str, str | None],
    last_builds: Mapping[str, BuildRecord],
    last_flashes: Mapping[str, FlashedBuild] | None = None,
) -> list[FleetRow]:
    """Every configuration's rows (one per matched device, or one without a device).

    ``current_hashes``, ``last_builds`` and ``last_flashes`` are keyed by
    ``str(config.path)``.
    """
    flashes = last_flashes or {}
    known = list(devices)
    rows: list[FleetRow] = []
    for config in configs:
        key = str(config.path)
        matched: list[DeviceState | None] = list(devices_for(config, known)) or [None]
        for device in matched:
            row = row_state(
                config,
                device,
                local_version=local_version,
                current_hash=current_hashes.get(key),
                last_build=last_builds.get(key),
            )
            rows.append(replace(row, last_flash=flashes.get(key)))
    return rows
