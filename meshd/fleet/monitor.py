"""Device monitor: browse ``_esphomelib._tcp`` and keep every device's last known state.

Theory of operation. One ``AsyncServiceBrowser`` on either the daemon's shared
``AsyncZeroconf`` (pinned to the mesh's interfaces) or one of our own pinned to the
given ``interfaces`` (tests: ``["127.0.0.1"]``).

* zeroconf calls ``_on_change`` from its record processing, after the cache already
  holds the packet's records. ESPHome sends PTR, SRV, TXT and A/AAAA in one
  announcement, so an Added/Updated instance is almost always complete in the cache:
  it is read synchronously and the listeners hear ``ONLINE`` in the same loop
  iteration that received the packet (an armed upload for a deep-sleep device, awake
  for seconds, starts from there). Only an incomplete instance costs a query
  (``async_request``) in a bounded task.
* Offline: a goodbye (TTL 0) makes zeroconf report Removed at once. A device that
  vanishes without one (power cut, deep sleep without shutdown, partition) keeps its
  PTR in zeroconf's cache for at least 1125 s, but its SRV/TXT/A expire on their TTL
  (ESP-IDF mdns: 120 s); a sweep every ``stale_check_interval`` re-queries any online
  device whose records left the cache, and silence makes it ``OFFLINE``.
* A device coming back after a goodbye is Added again. One that comes back after
  going silent may find its expired records still in zeroconf's cache (they are
  swept every 10 s), and zeroconf's browser reports nothing for a record it already
  holds. So a record listener (``_Returns``) also sees every SRV/TXT received for a
  device the monitor counts as offline, and that device is read from the cache at
  once: a deep-sleep device that wakes without having said goodbye is ``ONLINE`` in
  the same loop iteration as its announcement.
* Every state change is written to the store before listeners hear it. Devices
  restored from the store start offline ("not seen since the daemon started") and
  turn online on their first answer to the browser's initial query.

mDNS is unauthenticated: a device name is a claim, not an identity. The monitor is
an address book and a trigger; the verifier checks builds over the native API where
it can, and OTA has its own password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from zeroconf import (
    BadTypeInNameException,
    InterfaceChoice,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshd.fleet.advert import (
    SERVICE_TYPE,
    AdvertError,
    mac_suffix_of,
    normalise_name,
    parse_advert,
)
from meshd.fleet.model import DeviceEvent, DeviceEventKind, DeviceState
from meshd.fleet.store import FleetStore
from meshd.logonce import LogOnce

_LOGGER = logging.getLogger(__name__)

STALE_CHECK_INTERVAL: Final = 10.0
"""Seconds between sweeps for devices whose records expired (zeroconf sweeps its own
cache every 10 s, so checking more often finds nothing new)."""

RESOLVE_TIMEOUT_MS: Final = 3000
"""How long a query for a device's SRV/TXT/A may take before it counts as silent."""

MAX_PENDING_RESOLVES: Final = 64
"""Concurrent resolve tasks; a flood of half-announced names beyond this is dropped."""

MAX_DEVICES: Final = 1024
"""Device names kept. Fleets are 10-100 devices; the cap stops a hostile LAN from
growing the table (and the database) without bound."""

"""Distinct (device, problem) pairs logged before the monitor goes quiet."""

OFFLINE_GOODBYE: Final = "left mDNS (goodbye)"
OFFLINE_SILENT: Final = "its mDNS records expired and it did not answer a query"
OFFLINE_RESTORED: Final = "not seen since the daemon started"

_SERVICE_RECORD_TYPES: Final = frozenset({16, 33})
"""DNS record types TXT (RFC 1035) and SRV (RFC 2782): the records naming an instance."""

Listener = Callable[[DeviceEvent], None]


class _Returns(RecordUpdateListener):
    """Every SRV/TXT of ``_esphomelib._tcp`` received, for devices counted offline."""

    def __init__(self, on_heard: Callable[[str], None]) -> None:
        self._on_heard = on_heard
        self._pending: set[str] = set()

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            record = update.new
            if (
                record.type in _SERVICE_RECORD_TYPES
                and record.ttl
                and record.name.lower().endswith("." + SERVICE_TYPE)
            ):
                self._pending.add(record.name)

    def async_update_records_complete(self) -> None:
        # Called after the cache holds the packet's records.
        pending, self._pending = self._pending, set()
        for name in pending:
            self._on_heard(name)


class DeviceMonitor:
    """Browse ESPHome devices; ``start``/``stop`` and every method from the event loop."""

    def __init__(
        self,
        *,
        store: FleetStore | None = None,
        zeroconf: AsyncZeroconf | None = None,
        interfaces: Sequence[str] | None = None,
        stale_check_interval: float = STALE_CHECK_INTERVAL,
        resolve_timeout_ms: int = RESOLVE_TIMEOUT_MS,
        max_devices: int = MAX_DEVICES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if zeroconf is not None and interfaces is not None:
            raise ValueError("pass a shared zeroconf or interfaces to pin one to, not both")
        self._store = store
        self._shared = zeroconf
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._stale_interval = stale_check_interval
        self._resolve_timeout_ms = resolve_timeout_ms
        self._max_devices = max_devices
        self._clock = clock
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._returns = _Returns(self._heard)
        self._stale_task: asyncio.Task[None] | None = None
        self._devices: dict[str, DeviceState] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._listeners: list[Listener] = []
        self._bad = LogOnce(_LOGGER, "ESPHome advert")

    # -- life cycle ---------------------------------------------------------------------

    @property
    def zeroconf(self) -> AsyncZeroconf | None:
        """The zeroconf in use while started (shared or our own)."""
        return self._azc

    async def start(self) -> None:
        """Load the stored fleet, then browse."""
        if self._azc is not None:
            return
        self._restore()
        if self._shared is not None:
            self._azc = self._shared
        else:
            interfaces = self._interfaces if self._interfaces is not None else InterfaceChoice.All
            self._azc = AsyncZeroconf(interfaces=interfaces)
        try:
            self._azc.zeroconf.async_add_listener(self._returns, None)
            self._browser = AsyncServiceBrowser(
                self._azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
            )
            self._stale_task = asyncio.create_task(self._stale_loop(), name="meshd-fleet-staleness")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop browsing, persist every device's last-seen time, close our zeroconf."""
        azc, self._azc = self._azc, None
        if azc is None:
            return
        task, self._stale_task = self._stale_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        resolving = list(self._resolving.values())
        self._resolving.clear()
        for pending in resolving:
            pending.cancel()
        await asyncio.gather(*resolving, return_exceptions=True)
        try:
            azc.zeroconf.async_remove_listener(self._returns)
            if self._browser is not None:
                await self._browser.async_cancel()
                self._browser = None
        finally:
            if self._store is not None:
                for device in self._devices.values():
                    if device.online:
                        self._save(device)
            if azc is not self._shared:
                await azc.async_close()

    def _restore(self) -> None:
        if self._store is None:
            return
        now = self._clock()
        for device in self._store.load_devices()[: self._max_devices]:
            if device.online:
                device = DeviceState(
                    advert=device.advert,
                    online=False,
                    first_seen=device.first_seen,
                    last_seen=device.last_seen,
                    offline_since=min(device.last_seen, now),
                    offline_reason=OFFLINE_RESTORED,
                )
            self._devices[device.name] = device

    # -- queries --------------------------------------------------------------------------

    def devices(self) -> dict[str, DeviceState]:
        """A snapshot of every known device by name."""
        return dict(self._devices)

    def get(self, name: str) -> DeviceState | None:
        return self._devices.get(name.lower())

    def by_host(self, host: str) -> DeviceState | None:
        """The device whose mDNS host name is ``host`` (``kitchen.local``)."""
        wanted = host.rstrip(".").lower()
        for device in self._devices.values():
            if device.advert.host == wanted:
                return device
        label, _, domain = wanted.partition(".")
        if domain == "local":
            return self._devices.get(label)
        return None

    def mac_suffix_matches(self, base: str) -> list[DeviceState]:
        """Devices named ``<base>-<6 hex>`` whose suffix agrees with their ``mac`` TXT."""
        found = []
        for device in self._devices.values():
            suffix = mac_suffix_of(base, device.name)
            if suffix is None:
                continue
            mac = device.advert.mac
            if mac is not None and mac[-6:] != suffix:
                continue
            found.append(device)
        return sorted(found, key=lambda d: d.name)

    def forget(self, name: str) -> bool:
        """Drop a device from the fleet (and the store); it returns if it announces again."""
        device = self._devices.pop(name.lower(), None)
        if device is not None and self._store is not None:
            self._store.delete_device(device.name)
        return device is not None

    # -- listeners --------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` synchronously on every device event; returns its remover."""
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    @contextlib.contextmanager
    def subscribe(self, maxsize: int = 256) -> Iterator[asyncio.Queue[DeviceEvent]]:
        """Events into a bounded queue for the duration of a ``with`` (oldest dropped)."""
        queue: asyncio.Queue[DeviceEvent] = asyncio.Queue(maxsize)

        def put(event: DeviceEvent) -> None:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

        remove = self.add_listener(put)
        try:
            yield queue
        finally:
            remove()

    def _emit(self, event: DeviceEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _LOGGER.exception("fleet listener failed on %s %s", event.kind, event.device.name)

    def _save(self, device: DeviceState) -> None:
        if self._store is None:
            return
        try:
            self._store.save_device(device)
        except Exception:
            # A full disk must not stop the monitor; the state lives on in memory.
            _LOGGER.exception("could not store device %s", device.name)

    # -- zeroconf -----------------------------------------------------------------------------

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        try:
            key = name.lower()
            if state_change is ServiceStateChange.Removed:
                task = self._resolving.pop(key, None)
                if task is not None:
                    task.cancel()
                self._again.discard(key)
                device = normalise_name(name.split(".", 1)[0])
                if device is not None:
                    self._mark_offline(device, OFFLINE_GOODBYE)
                return
            info = self._info(name)
            if info is not None and info.load_from_cache(zeroconf):
                self._accept(name, info)
            else:
                self._schedule_resolve(name)
        except Exception:
            # zeroconf runs handlers inline in its record processing; never break it.
            _LOGGER.exception("fleet mDNS handler failed for %r", name)

    def _heard(self, name: str) -> None:
        """A device spoke; if it counts as offline (or is new), read it now."""
        try:
            device = normalise_name(name.split(".", 1)[0])
            if device is None:
                return
            known = self._devices.get(device)
            if known is not None and known.online:
                return  # the browser reports changes of online devices
            azc = self._azc
            info = self._info(name)
            if azc is None or info is None:
                return
            if info.load_from_cache(azc.zeroconf):
                self._accept(name, info)
            else:
                self._schedule_resolve(name)
        except Exception:
            _LOGGER.exception("fleet mDNS record handler failed for %r", name)

    def _info(self, name: str) -> AsyncServiceInfo | None:
        try:
            return AsyncServiceInfo(SERVICE_TYPE, name)
        except BadTypeInNameException:
            self._bad.warn(name, "not a name of the _esphomelib._tcp type")
            return None

    def _schedule_resolve(self, name: str) -> None:
        key = name.lower()
        if key in self._resolving:
            self._again.add(key)
            return
        if len(self._resolving) >= MAX_PENDING_RESOLVES:
            self._bad.warn(name, f"more than {MAX_PENDING_RESOLVES} adverts resolving at once")
            return
        task = asyncio.create_task(self._resolve(name), name=f"meshd-fleet-resolve {name}")
        self._resolving[key] = task
        task.add_done_callback(lambda t: self._forget_resolve(key, t))

    def _forget_resolve(self, key: str, task: asyncio.Task[None]) -> None:
        if self._resolving.get(key) is task:
            del self._resolving[key]

    async def _resolve(self, name: str) -> None:
        key = name.lower()
        while True:
            self._again.discard(key)
            info = self._info(name)
            azc = self._azc
            if info is None or azc is None:
                return
            if await info.async_request(azc.zeroconf, self._resolve_timeout_ms):
                self._accept(name, info)
            else:
                device = normalise_name(name.split(".", 1)[0])
                if device is not None:
                    self._mark_offline(device, OFFLINE_SILENT)
            if key not in self._again:
                return

    def _accept(self, name: str, info: AsyncServiceInfo) -> None:
        try:
            advert, problems = parse_advert(
                name,
                info.properties,
                addresses=info.parsed_scoped_addresses(),
                port=info.port,
                host=info.server,
                txt_size=len(info.text or b""),
            )
        except AdvertError as err:
            self._bad.warn(name, str(err))
            return
        for problem in problems:
            self._bad.warn(name, problem)
        previous = self._devices.get(advert.name)
        if previous is None and len(self._devices) >= self._max_devices:
            self._bad.warn(name, f"fleet full ({self._max_devices} devices); ignored")
            return
        now = self._clock()
        device = DeviceState(
            advert=advert,
            online=True,
            first_seen=previous.first_seen if previous is not None else now,
            last_seen=now,
        )
        self._devices[advert.name] = device
        if previous is None or not previous.online:
            kind = DeviceEventKind.ONLINE
        elif previous.advert != advert:
            kind = DeviceEventKind.UPDATED
        else:
            return  # the same advert again: fresher last_seen, nothing to announce
        self._save(device)
        self._emit(DeviceEvent(kind, device, previous))

    def _mark_offline(self, name: str, reason: str) -> None:
        previous = self._devices.get(name)
        if previous is None or not previous.online:
            return
        device = DeviceState(
            advert=previous.advert,
            online=False,
            first_seen=previous.first_seen,
            last_seen=previous.last_seen,
            offline_since=self._clock(),
            offline_reason=reason,
        )
        self._devices[name] = device
        self._save(device)
        self._emit(DeviceEvent(DeviceEventKind.OFFLINE, device, previous))

    async def _stale_loop(self) -> None:
        """Re-query online devices whose records left the cache; refresh the others."""
        while True:
            await asyncio.sleep(self._stale_interval)
            azc = self._azc
            if azc is None:
                return
            now = self._clock()
            for device in list(self._devices.values()):
                if not device.online:
                    continue
                instance = f"{device.name}.{SERVICE_TYPE}"
                if instance in self._resolving:
                    continue
                info = self._info(instance)
                if info is None:
                    continue
                if info.load_from_cache(azc.zeroconf):
                    # Still cached, so heard within its TTL: fresher last_seen, no write.
                    self._devices[device.name] = DeviceState(
                        advert=device.advert,
                        online=True,
                        first_seen=device.first_seen,
                        last_seen=now,
                    )
                else:
                    self._schedule_resolve(instance)
