"""Advertise ``_esphomelib._tcp`` on 127.0.0.1 exactly as ESPHome firmware does.

Real devices are not available here, and the host-platform firmware has no mDNS of
its own (``components/mdns/mdns_host.cpp`` compiles the records and registers
nothing). This helper stands in for the firmware's mDNS responder only; what it
announces comes from the real build or the real running device:

* :func:`firmware_txt` builds the TXT in the order and with the keys
  ``MDNSComponent::compile_records_`` (esphome 2026.6.5) sends them;
* :func:`txt_for_build` fills it from a real compile's own records (StorageJSON and
  ``build_info.json``: version, config hash, friendly name; ``board`` ``host``; the
  host platform's MAC, ``host: mac_address`` default ``98:35:69:ab:f6:79``);
* :class:`HostDeviceMirror` follows a *running* host device over its native API:
  on every (re)connection it reads ``DeviceInfo`` and the config hash the firmware
  itself reports in its ``version`` text sensor (``2026.6.5 (config hash 0x…, built
  …)``) and announces that; when the connection drops (the device re-execs after an
  OTA, or is stopped) it sends the goodbye real firmware sends on shutdown
  (``mdns_free`` in ``on_shutdown``). So the advert always says what the device runs.

Instance and host names are the device name (``mdns_instance_name_set(hostname)``),
the port is the API port. TTLs default to the ESP-IDF responder's 120 s; tests that
exercise expiry pass a short one. Everything is pinned to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Mapping
from pathlib import Path

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshd.fleet.advert import NOISE_PROTOCOL, SERVICE_TYPE

LOOPBACK = "127.0.0.1"
ESP_IDF_TTL = 120
HOST_DEFAULT_MAC = "983569abf679"
_VERSION_SENSOR_RE = re.compile(r"\(config hash 0x([0-9a-f]{8})")


def firmware_txt(
    *,
    version: str,
    config_hash: str | None,
    mac: str,
    board: str,
    friendly_name: str | None = None,
    platform: str | None = None,
    network: str | None = None,
    api_encryption: bool | None = None,
    project: tuple[str, str] | None = None,
    package_import_url: str | None = None,
) -> dict[str, str]:
    """TXT properties in ``compile_records_`` order (dicts keep insertion order).

    ``config_hash`` None reproduces firmware from before the 2026.1 series, which had
    no such key. ``api_encryption``: True → ``api_encryption`` (a key is set), False →
    ``api_encryption_supported`` (noise compiled in, no key), None → neither.
    """
    txt: dict[str, str] = {}
    if friendly_name:
        txt["friendly_name"] = friendly_name
    txt["version"] = version
    if config_hash is not None:
        txt["config_hash"] = config_hash
    txt["mac"] = mac
    if platform is not None:
        txt["platform"] = platform
    txt["board"] = board
    if network is not None:
        txt["network"] = network
    if api_encryption is not None:
        txt["api_encryption" if api_encryption else "api_encryption_supported"] = NOISE_PROTOCOL
    if project is not None:
        txt["project_name"], txt["project_version"] = project
    if package_import_url is not None:
        txt["package_import_url"] = package_import_url
    return txt


def esp32_txt(
    name: str,
    *,
    version: str,
    config_hash: str | None,
    mac: str = "a0b1c2d3e4f5",
    friendly_name: str | None = None,
) -> dict[str, str]:
    """What an ESP32 on Wi-Fi with ``api:`` (no key) sends; for fleets of fake devices."""
    return firmware_txt(
        version=version,
        config_hash=config_hash,
        mac=mac,
        board="esp32dev",
        friendly_name=friendly_name or name,
        platform="ESP32",
        network="wifi",
    )


def txt_for_build(config: Path, *, mac: str = HOST_DEFAULT_MAC) -> dict[str, str]:
    """The TXT a host firmware built from ``config`` would send (from its real records)."""
    storage = config.parent / ".esphome" / "storage" / f"{config.name}.json"
    record = json.loads(storage.read_text(encoding="utf-8"))
    info = json.loads((Path(record["build_path"]) / "build_info.json").read_text(encoding="utf-8"))
    return firmware_txt(
        version=info["esphome_version"],
        config_hash=f"{info['config_hash']:08x}",
        mac=mac,
        board="host",
        friendly_name=record.get("friendly_name") or None,
    )


class EsphomeAdvertiser:
    """One zeroconf responder on 127.0.0.1 announcing any number of fake firmware adverts."""

    def __init__(
        self,
        *,
        interfaces: tuple[str, ...] = (LOOPBACK,),
        ttl: int = ESP_IDF_TTL,
        probe: bool = False,
    ):
        """``probe``: probe for name conflicts first (~1 s), as firmware does. Probes are
        queries, which the monitor ignores, so tests skip them unless they measure
        from a firmware-like start; the announcement is the same either way."""
        self._interfaces = list(interfaces)
        self._ttl = ttl
        self._probe = probe
        self._azc: AsyncZeroconf | None = None
        self._infos: dict[str, AsyncServiceInfo] = {}
        self._vanished: set[str] = set()
        self.announced_at: dict[str, float] = {}
        """``time.monotonic()`` right after each device's announcement was sent."""

    async def __aenter__(self) -> EsphomeAdvertiser:
        self._azc = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        azc, self._azc = self._azc, None
        if azc is None:
            return
        self._infos.clear()
        await azc.async_close()  # one goodbye broadcast for every registered device

    def _info(
        self, name: str, port: int, txt: Mapping[str, str], addresses: tuple[str, ...], ttl: int
    ) -> AsyncServiceInfo:
        return AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            port=port,
            properties=dict(txt),
            server=f"{name}.local.",
            host_ttl=ttl,
            other_ttl=ttl,
            parsed_addresses=list(addresses),
        )

    async def announce(
        self,
        name: str,
        *,
        port: int,
        txt: Mapping[str, str],
        addresses: tuple[str, ...] = (LOOPBACK,),
        ttl: int | None = None,
    ) -> float:
        """Register (probe, then announce) ``name``; returns the monotonic time of the announce."""
        assert self._azc is not None, "use the advertiser as an async context manager"
        info = self._info(name, port, txt, addresses, ttl or self._ttl)
        if name in self._infos:
            announcing = await self._azc.async_update_service(info)
        else:
            # After vanish() our own cache still holds the old records, which probing
            # would take for a conflict: announce without probing then.
            skip_probe = not self._probe or name in self._vanished
            announcing = await self._azc.async_register_service(
                info, strict=False, cooperating_responders=skip_probe
            )
            self._vanished.discard(name)
        # Probing is over when the first await returns; the announcement goes out now.
        sent = time.monotonic()
        self._infos[name] = info
        self.announced_at[name] = sent
        await announcing
        return sent

    async def goodbye(self, name: str) -> None:
        """What firmware sends on shutdown or before deep sleep: TTL-0 records."""
        assert self._azc is not None
        info = self._infos.pop(name, None)
        if info is not None:
            await (await self._azc.async_unregister_service(info))

    def vanish(self, name: str) -> None:
        """Stop answering for ``name`` without a goodbye (power cut, crash)."""
        assert self._azc is not None
        info = self._infos.pop(name, None)
        if info is not None:
            self._azc.zeroconf.registry.async_remove(info)
            self._vanished.add(name)


class HostDeviceMirror:
    """Announce what a running host-platform device reports over its native API.

    Needs a configuration with ``api:`` and a ``text_sensor: - platform: version``
    (the firmware's own report of its config hash).
    """

    def __init__(
        self,
        advertiser: EsphomeAdvertiser,
        *,
        api_port: int,
        address: str = LOOPBACK,
        noise_psk: str | None = None,
        retry: float = 0.2,
    ) -> None:
        self._advertiser = advertiser
        self._port = api_port
        self._address = address
        self._psk = noise_psk
        self._retry = retry
        self._task: asyncio.Task[None] | None = None
        self.announcements: list[dict[str, str]] = []
        """Every TXT announced, in order."""
        self.changed = asyncio.Event()

    async def __aenter__(self) -> HostDeviceMirror:
        self._task = asyncio.create_task(self._run(), name="host-device-mirror")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _session(self) -> None:
        from aioesphomeapi import APIClient, TextSensorInfo, TextSensorState

        client = APIClient(self._address, self._port, None, noise_psk=self._psk)
        stopped = asyncio.Event()

        async def on_stop(expected_disconnect: bool) -> None:
            stopped.set()

        async with asyncio.timeout(5):
            await client.connect(on_stop=on_stop, login=False)
        name = None
        try:
            async with asyncio.timeout(5):
                info = await client.device_info()
                entities, _ = await client.list_entities_services()
                keys = {e.key for e in entities if isinstance(e, TextSensorInfo)}
                reported: asyncio.Future[str] = asyncio.get_running_loop().create_future()

                def on_state(state: object) -> None:
                    if isinstance(state, TextSensorState) and state.key in keys:
                        match = _VERSION_SENSOR_RE.search(state.state)
                        if match and not reported.done():
                            reported.set_result(match.group(1))

                client.subscribe_states(on_state)
                config_hash = await reported
            txt = firmware_txt(
                version=info.esphome_version,
                config_hash=config_hash,
                mac=info.mac_address.replace(":", "").lower(),
                board=info.model,
                friendly_name=info.friendly_name or None,
                project=(info.project_name, info.project_version) if info.project_name else None,
            )
            name = info.name
            await self._advertiser.announce(name, port=self._port, txt=txt)
            self.announcements.append(txt)
            self.changed.set()
            await stopped.wait()
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect(force=True)
            if name is not None:
                await self._advertiser.goodbye(name)
                self.changed.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception:  # the device is rebooting or not up yet: try again
                pass
            await asyncio.sleep(self._retry)
