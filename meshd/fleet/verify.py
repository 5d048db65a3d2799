"""After an OTA upload: does the device come back, and does it run the build just flashed?

Two independent witnesses, run at once; the first conclusive one wins:

* **mDNS** (the monitor): the device's ``config_hash`` and ``version`` TXT against the
  build's ``build_info.json``. Only the new firmware can announce the new hash, so a
  match is proof when the hash or version changed with this build. When they did
  not (a rebuild of an unchanged YAML), the match counts once the device was seen
  going away and coming back.
* **Native API** (configurations with ``api:``; aioesphomeapi with the config's
  ``encryption: key``): ``DeviceInfo.compilation_time`` is the firmware's
  ``ESPHOME_BUILD_TIME_STR``, which differs for every relinked build, plus
  ``esphome_version``. The API does not report the config hash.

Right after ``esphome upload`` reports success the old firmware may still answer for
a moment before it reboots. A mismatch therefore only counts as ``wrong build
running`` once the device was seen going away (goodbye/expiry on mDNS, a refused or
dropped API connection) and came back, or when the wait ends with the device still
answering with another build. Observations from before it went away are discarded.
Outcomes: ``verified``, ``not verified (device did not return in N s)`` (or another
reason nothing could be checked), ``wrong build running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from meshd.fleet.advert import DeviceAdvert
from meshd.fleet.buildinfo import BuildIdentity
from meshd.fleet.configs import DeviceConfig, is_ip_address
from meshd.fleet.model import DeviceEventKind, DeviceState

if TYPE_CHECKING:
    from aioesphomeapi.model import DeviceInfo
    from zeroconf.asyncio import AsyncZeroconf

    from meshd.fleet.monitor import DeviceMonitor

_LOGGER = logging.getLogger(__name__)


def _import_api_client() -> None:
    importlib.import_module("aioesphomeapi.client")
    importlib.import_module("aioesphomeapi.core")


VERIFY_TIMEOUT: Final = 120.0
"""Seconds to wait for the device after a flash. An ESP32 reboots in 2-10 s and
rejoins Wi-Fi in a few more; two minutes covers a slow AP and a first-boot
migration without keeping a fleet update waiting forever on a dead device."""

API_RETRY_INTERVAL: Final = 1.0
"""Seconds between API connection attempts while the device reboots."""

API_CONNECT_TIMEOUT: Final = 10.0
"""One API attempt (TCP, hello, optional noise handshake, device info)."""


class Outcome(enum.StrEnum):
    VERIFIED = "verified"
    NOT_VERIFIED = "not verified"
    WRONG_BUILD = "wrong build running"


@dataclass(frozen=True)
class Verification:
    outcome: Outcome
    detail: str
    via: str | None = None
    """``mdns`` or ``api``: the witness that decided."""

    @property
    def summary(self) -> str:
        """The record for the job: ``verified``, ``not verified (…)``, ``wrong build running``."""
        if self.outcome is Outcome.NOT_VERIFIED:
            return f"not verified ({self.detail})"
        return self.outcome.value

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.VERIFIED

    def to_dict(self) -> dict[str, object]:
        return {
            "outcome": self.outcome.value,
            "summary": self.summary,
            "detail": self.detail,
            "via": self.via,
        }


@dataclass(frozen=True)
class ApiTarget:
    """Where and how to reach the device's native API."""

    address: str
    port: int = 6053
    noise_psk: str | None = None
    """The configuration's ``api: encryption: key`` (base64), if any."""
    expected_name: str | None = None
    """The device name the API must report (guards against a reused DHCP address)."""


def api_target(config: DeviceConfig, address: str, device: str | None) -> ApiTarget | None:
    """The API to check for ``config`` at ``address``; None without ``api:`` in the YAML."""
    if not config.has_api:
        return None
    return ApiTarget(
        address=address,
        port=config.api_port,
        noise_psk=config.api_encryption_key,
        expected_name=device or (config.name if not config.name_add_mac_suffix else None),
    )


def mdns_mismatch(advert: DeviceAdvert, expected: BuildIdentity) -> str | None:
    """Why this advert is not ``expected``'s firmware, or None when it matches."""
    problems = []
    if advert.config_hash != expected.config_hash:
        problems.append(
            f"config hash {advert.config_hash or 'none'} (built {expected.config_hash})"
        )
    if advert.version != expected.esphome_version:
        problems.append(f"esphome {advert.version or 'unknown'} (built {expected.esphome_version})")
    return "; ".join(problems) or None


def api_mismatch(info: DeviceInfo, expected: BuildIdentity) -> str | None:
    """Why this device info is not ``expected``'s firmware, or None when it matches."""
    problems = []
    if expected.build_time_str is not None and info.compilation_time != expected.build_time_str:
        problems.append(
            f"compiled {info.compilation_time or 'unknown'} (built {expected.build_time_str})"
        )
    if info.esphome_version != expected.esphome_version:
        problems.append(f"esphome {info.esphome_version} (built {expected.esphome_version})")
    return "; ".join(problems) or None


class _Watch:
    """Evidence gathered by both witnesses; the first conclusion wins."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.went_away = False
        self.last_mismatch: tuple[str, str] | None = None
        self.weak_match: tuple[str, str] | None = None
        self.done: asyncio.Future[Verification] = asyncio.get_running_loop().create_future()

    def away(self, why: str) -> None:
        if not self.went_away:
            self.log(f"verify: the device went away ({why})")
        self.went_away = True
        # What it said before rebooting does not describe what it came back with.
        self.last_mismatch = None
        self.weak_match = None

    def conclude(self, result: Verification) -> None:
        if not self.done.done():
            self.done.set_result(result)

    def mismatch(self, via: str, detail: str) -> None:
        if self.went_away:
            self.conclude(Verification(Outcome.WRONG_BUILD, f"device returned with {detail}", via))
        else:
            self.last_mismatch = (via, detail)


class FlashVerifier:
    """Checks a flashed device; shares the daemon's monitor and zeroconf."""

    def __init__(
        self,
        *,
        monitor: DeviceMonitor | None = None,
        zeroconf: AsyncZeroconf | None = None,
        api_retry_interval: float = API_RETRY_INTERVAL,
        api_connect_timeout: float = API_CONNECT_TIMEOUT,
    ) -> None:
        self._monitor = monitor
        self._zeroconf = zeroconf
        self._api_retry = api_retry_interval
        self._api_timeout = api_connect_timeout

    async def verify(
        self,
        expected: BuildIdentity,
        *,
        device: str | None,
        before: DeviceState | None = None,
        api: ApiTarget | None = None,
        wait_seconds: float = VERIFY_TIMEOUT,
        log: Callable[[str], None] | None = None,
    ) -> Verification:
        """Wait up to ``wait_seconds`` for ``device`` to return running ``expected``.

        ``device`` is the mDNS device name (with its MAC suffix); ``before`` its state
        when the upload started. Call right after the upload reported success.
        """
        say = log or (lambda line: _LOGGER.info("%s", line))
        watch = _Watch(say)
        tasks: list[asyncio.Task[None]] = []
        if self._monitor is not None and device is not None:
            tasks.append(asyncio.create_task(self._watch_mdns(watch, expected, device, before)))
        api_addresses = self._api_addresses(api, device) if api is not None else None
        if api is not None and api_addresses is not None:
            tasks.append(asyncio.create_task(self._watch_api(watch, expected, api, api_addresses)))
        if not tasks:
            return Verification(
                Outcome.NOT_VERIFIED, "no mDNS monitor and no reachable api: to check with"
            )
        target = device or (api.address if api is not None else "the device")
        say(
            f"verify: waiting up to {wait_seconds:g} s for {target} to run"
            f" config hash {expected.config_hash}, esphome {expected.esphome_version}"
        )
        try:
            async with asyncio.timeout(wait_seconds):
                result = await asyncio.shield(watch.done)
        except TimeoutError:
            result = self._at_deadline(watch, wait_seconds)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        say(f"verify: {result.summary}: {result.detail}")
        return result

    @staticmethod
    def _at_deadline(watch: _Watch, timeout: float) -> Verification:
        if watch.weak_match is not None:
            via, detail = watch.weak_match
            return Verification(
                Outcome.VERIFIED,
                f"{detail}; identical to the build before the upload and no reboot was seen",
                via,
            )
        if watch.last_mismatch is not None:
            via, detail = watch.last_mismatch
            return Verification(Outcome.WRONG_BUILD, f"device still runs {detail}", via)
        return Verification(Outcome.NOT_VERIFIED, f"device did not return in {timeout:g} s")

    # -- mDNS -----------------------------------------------------------------------------

    async def _watch_mdns(
        self, watch: _Watch, expected: BuildIdentity, device: str, before: DeviceState | None
    ) -> None:
        monitor = self._monitor
        assert monitor is not None
        name = device.lower()
        changed_build = before is None or mdns_mismatch(before.advert, expected) is not None

        def seen(advert: DeviceAdvert) -> None:
            detail = mdns_mismatch(advert, expected)
            if detail is not None:
                watch.mismatch("mdns", detail)
            elif changed_build or watch.went_away:
                watch.conclude(
                    Verification(
                        Outcome.VERIFIED,
                        f"mDNS config_hash {advert.config_hash}, esphome {advert.version}",
                        "mdns",
                    )
                )
            else:
                watch.weak_match = ("mdns", f"mDNS config_hash {advert.config_hash}")

        with monitor.subscribe() as queue:
            current = monitor.get(name)
            # Not online now is no evidence of a reboot (the monitor may simply not
            # have heard it yet); only an OFFLINE event from here on is.
            if (
                current is not None
                and current.online
                and changed_build
                and mdns_mismatch(current.advert, expected) is None
            ):
                seen(current.advert)  # it already announced the new build
            while True:
                event = await queue.get()
                if event.device.name != name:
                    continue
                if event.kind is DeviceEventKind.OFFLINE:
                    watch.away(f"mDNS: {event.device.offline_reason}")
                    continue
                watch.log(f"verify: {name} announced config_hash {event.device.advert.config_hash}")
                seen(event.device.advert)

    # -- native API -------------------------------------------------------------------------

    def _api_addresses(self, api: ApiTarget, device: str | None) -> list[str] | None:
        """IPs to connect to; None when only a name is known and no pinned zeroconf
        could resolve it (aioesphomeapi would open its own on every interface)."""
        if self._monitor is not None and device is not None:
            known = self._monitor.get(device)
            if known is not None:
                return list(known.advert.addresses)
        if is_ip_address(api.address):
            return [api.address]
        if self._zeroconf is not None:
            return []  # resolve api.address through the pinned zeroconf
        if "." in api.address and not api.address.lower().rstrip(".").endswith(".local"):
            return []  # a DNS name: aioesphomeapi resolves it with getaddrinfo only
        _LOGGER.warning(
            "verify: no IP for %s and no zeroconf to resolve it; API skipped", api.address
        )
        return None

    async def _watch_api(
        self, watch: _Watch, expected: BuildIdentity, api: ApiTarget, addresses: Sequence[str]
    ) -> None:
        # Imported here: aioesphomeapi costs ~0.3 s to import, paid only when verifying;
        # and in a worker thread, so the first verification does not stall the event
        # loop (every other job's output, uploads and the API) for that long
        # (docs/PERFORMANCE.md, scenario 3).
        await asyncio.to_thread(_import_api_client)
        from aioesphomeapi.client import APIClient
        from aioesphomeapi.core import (
            APIConnectionError,
            EncryptionPlaintextAPIError,
            InvalidEncryptionKeyAPIError,
            RequiresEncryptionAPIError,
        )

        while True:
            client = APIClient(
                api.address,
                api.port,
                None,
                client_info="meshd",
                noise_psk=api.noise_psk,
                expected_name=api.expected_name,
                zeroconf_instance=self._zeroconf,
                addresses=list(addresses) or None,
            )
            try:
                async with asyncio.timeout(self._api_timeout):
                    await client.connect(login=False)
                    try:
                        info = await client.device_info()
                    finally:
                        await client.disconnect()
            except (RequiresEncryptionAPIError, EncryptionPlaintextAPIError) as err:
                # It answers, but not with the encryption this build has.
                watch.mismatch("api", f"another API encryption setting ({type(err).__name__})")
            except InvalidEncryptionKeyAPIError:
                watch.mismatch("api", "another API encryption key")
            except (APIConnectionError, OSError, TimeoutError) as err:
                watch.away(f"API: {type(err).__name__}")
            else:
                detail = api_mismatch(info, expected)
                if detail is None:
                    watch.conclude(
                        Verification(
                            Outcome.VERIFIED,
                            f"API reports compiled {info.compilation_time},"
                            f" esphome {info.esphome_version}",
                            "api",
                        )
                    )
                    return
                watch.log(f"verify: API reports {detail}")
                watch.mismatch("api", detail)
            finally:
                with contextlib.suppress(Exception):
                    await client.disconnect(force=True)
            await asyncio.sleep(self._api_retry)
