"""The fleet as a daemon service: the device monitor, its store and the config hasher.

Why a service: the monitor browses mDNS for as long as the daemon runs, and armed
uploads hang on it. The daemon builds one :class:`FleetService`, starts it after the
engine and before the API (``meshd/daemon.py``), and wires two engine hooks to it:

* every announcement calls ``on_seen(name, address)`` (the daemon passes
  ``engine.device_seen``) on the event loop, synchronously, in the loop iteration that
  processed the packet, so a deep-sleep device's armed upload starts at once. A
  device that announces ``<name>-<6 hex>`` matching its ``mac`` TXT (``name_add_mac_suffix``)
  is announced under both names: armed uploads wait for the configuration's
  ``esphome: name``.
* :meth:`online_address` answers ``engine.devices_online``.

:meth:`rows` is what ``GET /api/v1/devices`` answers: per configuration of the given
directories, the state from :func:`meshd.fleet.state.fleet_rows`, the current config
hash from ``esphome config-hash`` (cached by file stamps) and the last build's hash
from esphome's own ``build_info.json``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshd.fleet.buildinfo import build_identity
from meshd.fleet.confighash import ConfigHasher, ConfigHashError
from meshd.fleet.configs import DeviceConfig, read_config, scan_config_dirs
from meshd.fleet.model import DeviceEvent, DeviceState
from meshd.fleet.monitor import DeviceMonitor
from meshd.fleet.resolve import Resolution, ResolveError, resolve_device
from meshd.fleet.state import BuildRecord, FlashedBuild, fleet_rows
from meshd.fleet.store import FleetStore, open_store
from meshd.fleet.verify import VERIFY_TIMEOUT, FlashVerifier, Outcome, api_target
from meshd.toolchain.storage import ArtifactError
from meshd.toolchain.tools import Toolchain

_LOGGER = logging.getLogger(__name__)

_SUFFIX_RE = re.compile(r"^(?P<base>.+)-(?P<suffix>[0-9a-f]{6})$")


def base_names(device: DeviceState) -> list[str]:
    """The names an armed upload may wait under: the device's, and its base name when
    the name ends in the last 6 hex digits of its MAC (``name_add_mac_suffix``)."""
    names = [device.name]
    match = _SUFFIX_RE.match(device.name)
    mac = device.advert.mac
    if match is not None and mac is not None and mac.lower().endswith(match["suffix"]):
        names.append(match["base"])
    return names


class FleetService:
    """The device monitor and config hashes for one daemon (see the module docstring)."""

    name = "fleet"

    def __init__(
        self,
        data_dir: Path,
        toolchain: Toolchain,
        *,
        config_dirs: Sequence[Path],
        interfaces: Sequence[str] | None,
        esphome_version: Callable[[], str | None],
        on_seen: Callable[[str, str], object],
        browse: bool = True,
        verify_timeout: float = VERIFY_TIMEOUT,
    ) -> None:
        self.verify_timeout = verify_timeout
        self.config_dirs = tuple(config_dirs)
        self._data_dir = data_dir
        self._toolchain = toolchain
        self._esphome_version = esphome_version
        self._on_seen = on_seen
        self.store: FleetStore | None = None
        self.monitor: DeviceMonitor | None = None
        self._interfaces = list(interfaces) if interfaces else None
        self._hasher: ConfigHasher | None = None
        self._hasher_version: str | None = None
        self._remove: Callable[[], None] | None = None
        self._browse = browse
        self.last_flash: Callable[[str], FlashedBuild | None] = lambda _configuration: None
        """Hook (the daemon, from the job store): what meshd last flashed for a
        configuration and which esphome built it."""

    async def start(self) -> None:
        self.store = open_store(self._data_dir)
        if not self._browse:
            _LOGGER.info("mDNS is off: not watching for ESPHome devices")
            return
        self.monitor = DeviceMonitor(store=self.store, interfaces=self._interfaces)
        self._remove = self.monitor.add_listener(self._on_event)
        await self.monitor.start()
        where = ", ".join(self._interfaces) if self._interfaces else "all interfaces"
        _LOGGER.info(
            "watching for ESPHome devices on %s (%d known)", where, len(self.monitor.devices())
        )

    async def stop(self) -> None:
        if self._remove is not None:
            self._remove()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.store is not None:
            self.store.close()

    # -- the engine's hooks -------------------------------------------------------------

    def _on_event(self, event: DeviceEvent) -> None:
        if not event.announced or not event.device.advert.addresses:
            return
        address = event.device.advert.addresses[0]
        for name in base_names(event.device):
            _LOGGER.info("device %s announced at %s", name, address)
            try:
                self._on_seen(name, address)
            except Exception:
                _LOGGER.exception("releasing the uploads armed for %s failed", name)

    def online_address(self, name: str) -> str | None:
        """``engine.devices_online``: the address of ``name`` if it is online now."""
        monitor = self.monitor
        if monitor is None:
            return None
        device = monitor.get(name)
        if device is not None and device.online and device.advert.addresses:
            return device.advert.addresses[0]
        for candidate in monitor.mac_suffix_matches(name):
            if candidate.online and candidate.advert.addresses:
                return candidate.advert.addresses[0]
        return None

    # -- what the upload runner uses ----------------------------------------------------

    async def resolve(self, configuration: Path, device: str | None) -> tuple[str, str]:
        """The upload runner's hook: the OTA address as ``esphome run`` picks it, and how
        it was found; ``ValueError`` (``ResolveError``) when there is none."""
        config = await asyncio.to_thread(read_config, configuration)
        try:
            found: Resolution = resolve_device(config, self.monitor, device)
        except ResolveError as err:
            raise ValueError(str(err)) from err
        return found.address, found.how

    async def verify_flash(
        self, configuration: Path, address: str, log: Callable[[str], None]
    ) -> tuple[str, str]:
        """The upload runner's hook after a successful OTA: ``(reason_code, reason)``."""
        config = await asyncio.to_thread(read_config, configuration)
        try:
            expected = await asyncio.to_thread(
                build_identity, configuration, self._toolchain.environ()
            )
        except ArtifactError as err:
            log(f"verify: cannot tell which build was flashed: {err}")
            return "not_verified", f"not verified ({err})"
        monitor = self.monitor
        before = None
        if monitor is not None:
            before = monitor.by_host(address) or (
                monitor.get(config.name) if config.name is not None else None
            )
        if before is None:
            # Nothing to compare with: waiting the whole timeout would only delay the
            # job. A device with api: announces itself, so this is a device we never saw.
            log(f"verify: {address} was never seen on mDNS; nothing to check the build with")
            return "not_verified", "not verified (the device was never seen on mDNS)"
        device = before.name
        verifier = FlashVerifier(monitor=monitor, zeroconf=monitor.zeroconf if monitor else None)
        result = await verifier.verify(
            expected,
            device=device,
            before=before,
            api=api_target(config, address, device),
            wait_seconds=self.verify_timeout,
            log=log,
        )
        code = {Outcome.VERIFIED: "verified", Outcome.WRONG_BUILD: "wrong_build"}
        return code.get(result.outcome, "not_verified"), result.summary

    # -- GET /api/v1/devices -----------------------------------------------------------

    def _hasher_now(self) -> ConfigHasher | None:
        version = self._esphome_version()
        if version is None:
            return None
        if self._hasher is None or self._hasher_version != version:
            self._hasher = ConfigHasher(self._toolchain, esphome_version=version, store=self.store)
            self._hasher_version = version
        return self._hasher

    async def rows(self, directories: Sequence[Path] = ()) -> dict[str, Any]:
        """The fleet rows of ``directories`` (default: the configured ones)."""
        dirs = tuple(directories) or self.config_dirs
        scan = await asyncio.to_thread(scan_config_dirs, dirs)
        configs = list(scan.configs)
        problems = list(scan.problems)
        hasher = self._hasher_now()
        current: dict[str, str | None] = {}
        if hasher is None:
            problems.append("esphome's version is not known yet: no config hashes")
        else:
            results = await hasher.current_many(c.path for c in configs if c.name is not None)
            for key, result in results.items():
                if isinstance(result, ConfigHashError):
                    problems.append(f"{key}: config hash: {result}")
                    current[key] = None
                else:
                    current[key] = result.value
        builds = await asyncio.to_thread(self._last_builds, configs)
        devices = self.monitor.devices().values() if self.monitor is not None else ()
        rows = fleet_rows(
            configs,
            list(devices),
            local_version=self._esphome_version() or "",
            current_hashes=current,
            last_builds=builds,
            last_flashes=self._last_flashes(configs),
        )
        return {
            "directories": [str(d) for d in dirs],
            "devices": [row.to_dict() for row in rows],
            "problems": problems,
        }

    def _last_flashes(self, configs: Sequence[DeviceConfig]) -> dict[str, FlashedBuild]:
        out: dict[str, FlashedBuild] = {}
        for config in configs:
            key = str(config.path)
            try:
                flashed = self.last_flash(key)
            except Exception:
                # The job history is a nicety here: the rows stand without it.
                _LOGGER.exception("cannot read the last flash of %s", key)
                continue
            if flashed is not None:
                out[key] = flashed
        return out

    def _last_builds(self, configs: Sequence[DeviceConfig]) -> Mapping[str, BuildRecord]:
        env = self._toolchain.environ()
        out: dict[str, BuildRecord] = {}
        for config in configs:
            try:
                identity = build_identity(config.path, env)
            except ArtifactError:
                continue
            out[str(config.path)] = BuildRecord(identity.config_hash, identity.esphome_version)
        return out
