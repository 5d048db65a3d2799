"""mDNS discovery: advertise this node's receiver, browse for others, feed the registry.

Theory of operation. One ``AsyncZeroconf`` per node, pinned to the given interface
addresses (all interfaces only when none are given; tests always pin to 127.0.0.1 or
run in their own network namespace).

* Advertiser: registers ``<name>-<fp8>._meshd._tcp.local.`` with the peer-link port and
  a TXT record (``proto fp name esphome idle idle_since builds prov tc``, see
  docs/DISCOVERY.md). Lane changes arrive through the synchronous ``update_lane``; a
  publisher task sends at most one TXT update per ``MIN_UPDATE_INTERVAL`` (RFC 6762
  §6.2: a record may be multicast at most once per second), always with the newest
  state, so a burst of changes costs one or two announcements and the last state wins.
  ``stop`` sends the goodbye (TTL 0) before closing.
* Browser: an ``AsyncServiceBrowser`` reports added/updated/removed instance names; each
  add/update is resolved (from the cache when possible) in a bounded number of tasks,
  the TXT parsed defensively by ``parse_advert`` and fed to the registry. A malformed
  or hostile advert is logged once and dropped, never raised out of a handler; an odd
  value of an optional hint (``prov``, ``tc``) only loses that hint, also logged once. Removed
  (a goodbye, or the record's TTL running out: that is how a crashed or partitioned
  node goes stale) becomes ``Registry.mdns_gone``.

mDNS data is unauthenticated; the registry treats it as a hint and the link handshake
proves identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import ifaddr
from zeroconf import BadTypeInNameException, InterfaceChoice, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from meshd.address import format_host_port
from meshd.logonce import LogOnce
from meshd.mesh.peering.registry import MAX_ADDRESSES, MdnsAdvert, Registry

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_meshd._tcp.local."

MIN_UPDATE_INTERVAL: Final = 1.0
"""Seconds between TXT updates (RFC 6762 §6.2 allows one multicast of a record per
second); lane changes in between are coalesced and the newest state is sent."""

ADVERT_TTL: Final = 120
"""TTL (s) of every record we publish. RFC 6762 suggests 75 min for PTR/TXT, but
zeroconf browsers keep a PTR at least 1125 s whatever it says, so a vanished node
(crash, unplugged, partitioned) is noticed through its SRV/TXT/A expiring instead:
120 s (the RFC's host-record TTL) bounds that staleness at about 2 min, for one
re-query per peer every 2 min."""

STALE_CHECK_INTERVAL: Final = 10.0
"""Seconds between staleness sweeps (zeroconf's own cache sweep runs every 10 s)."""

RESOLVE_TIMEOUT_MS: Final = 3000
"""How long to wait for SRV/TXT/A of an instance not fully in the cache yet."""

MAX_PENDING_RESOLVES: Final = 64
"""Concurrent resolve tasks; a flood of new instance names beyond this is dropped."""

MAX_TXT_BYTES: Final = 1024
"""Largest TXT record accepted. Ours is ~200 bytes; RFC 6763 §6.2 advises staying
under 1300 to fit one packet, so anything bigger is not a meshd node."""

MAX_TXT_KEYS: Final = 32
"""Most TXT keys accepted (ours: at most 10, plus room for future fields)."""

MAX_NAME_LEN: Final = 63
"""Node names, like DNS labels, fit 63 characters."""

MAX_VERSION_LEN: Final = 32
"""An esphome version (``2026.6.5``, ``2026.7.0b1``, ``2026.7.0-dev``) is far shorter."""

MAX_IDLE_SINCE_DIGITS: Final = 15
"""Epoch milliseconds have 13 digits until the year 2286; 15 rejects absurd values."""

MAX_ADVERT_TOOLCHAINS: Final = 8
"""Ready toolchains named in ``tc``; a receiver with more advertises the most recently
used (the full list arrives in ``node_info`` once a session is up)."""

MAX_TC_LEN: Final = 200
"""Bytes of the ``tc`` value. One TXT string (``tc=`` and the value) holds at most 255
bytes (RFC 6763 §6.1); 200 keeps the whole record near 500 bytes, well inside one
packet. Versions that would not fit are left out, not cut."""

LABEL_NAME_LEN: Final = 40
"""Characters of the node name used in the instance label (plus ``-`` and 8 of the
fingerprint: well under the 63-byte label limit)."""

_FP_RE: Final = re.compile(r"[0-9a-f]{64}")
_UINT_RE: Final = re.compile(rb"[0-9]{1,15}")
_VERSION_RE: Final = re.compile(r"[0-9A-Za-z.+_-]{1,32}")
_LABEL_BAD: Final = re.compile(r"[^A-Za-z0-9-]+")


class AdvertError(ValueError):
    """An advert that is not a usable meshd node (malformed, hostile, incomplete)."""


@dataclass(frozen=True)
class AdvertInfo:
    """What this node advertises."""

    fingerprint: str
    """Hex SHA-256 of the node's Ed25519 public key (64 characters)."""
    name: str
    port: int
    """The peer-link TCP port."""
    protocol: int
    esphome_version: str
    accepts_builds: bool = True
    idle: bool = True
    idle_since: float | None = None
    """Epoch seconds of the last transition to idle (published as milliseconds)."""
    addresses: tuple[str, ...] = ()
    """IPs to publish; empty means the pinned interfaces' (or every IPv4 address)."""
    ttl: int = ADVERT_TTL
    provisions: bool = False
    """It provisions the esphome version an offloader asks for (TXT ``prov``)."""
    toolchains: tuple[str, ...] = ()
    """Ready provisioned esphome versions, most recently used first (TXT ``tc``);
    :func:`advert_toolchains` bounds it."""


# -- pure helpers -----------------------------------------------------------------------


def instance_label(name: str, fingerprint: str) -> str:
    """``My Desk!`` + fp → ``My-Desk-1a2b3c4d``: DNS-safe, unique per key."""
    clean = _LABEL_BAD.sub("-", name).strip("-")[:LABEL_NAME_LEN].strip("-") or "meshd"
    return f"{clean}-{fingerprint[:8]}"


def advert_toolchains(versions: Sequence[str]) -> tuple[str, ...]:
    """The ``tc`` list for ``versions`` (most recently used first): at most
    ``MAX_ADVERT_TOOLCHAINS`` version strings, joined no longer than ``MAX_TC_LEN``.

    Anything that is not a version string is left out (it could not be parsed back),
    and so is each version that would make the value too long.
    """
    chosen: list[str] = []
    length = -1  # no comma before the first
    for version in versions:
        if len(chosen) >= MAX_ADVERT_TOOLCHAINS:
            break
        if version in chosen or not _VERSION_RE.fullmatch(version):
            continue
        if length + 1 + len(version) > MAX_TC_LEN:
            continue
        chosen.append(version)
        length += 1 + len(version)
    return tuple(chosen)


def build_txt(advert: AdvertInfo, seq: int = 0) -> dict[str, str]:
    """The TXT properties for ``advert`` (all values ASCII except ``name``).

    ``seq`` counts publications. It makes every update a new record: zeroconf raises
    no update for a TXT identical to one still in its cache (a record superseded less
    than a sweep ago), so busy → idle → busy would otherwise lose the second "busy".
    """
    txt = {
        "proto": str(advert.protocol),
        "fp": advert.fingerprint,
        "name": advert.name[:MAX_NAME_LEN],
        "esphome": advert.esphome_version,
        "idle": "1" if advert.idle else "0",
        "builds": "1" if advert.accepts_builds else "0",
        "prov": "1" if advert.provisions else "0",
        "seq": str(seq),
    }
    toolchains = advert_toolchains(advert.toolchains)
    if toolchains:
        txt["tc"] = ",".join(toolchains)
    if advert.idle and advert.idle_since is not None:
        txt["idle_since"] = str(round(advert.idle_since * 1000))
    return txt


def _flag(props: Mapping[bytes, bytes | None], key: bytes) -> bool:
    value = props.get(key)
    if value is None:
        return False
    if value not in (b"0", b"1"):
        raise AdvertError(f"{key.decode()} must be 0 or 1")
    return value == b"1"


def _uint(props: Mapping[bytes, bytes | None], key: bytes, *, digits: int) -> int | None:
    value = props.get(key)
    if value is None or value == b"":
        return None
    if len(value) > digits or not _UINT_RE.fullmatch(value):
        raise AdvertError(f"{key.decode()} is not a number of at most {digits} digits")
    return int(value)


def _text(value: bytes, what: str, limit: int) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AdvertError(f"{what} is not UTF-8") from err
    if len(text) > limit:
        raise AdvertError(f"{what} longer than {limit} characters")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise AdvertError(f"{what} contains control characters")
    return text


def _ignore_odd(_reason: str) -> None:
    return None


def _provisions(props: Mapping[bytes, bytes | None], odd: Callable[[str], None]) -> bool:
    """``prov``: a hint only, so an odd value loses the hint, not the advert."""
    value = props.get(b"prov")
    if value is None or value == b"0":
        return False
    if value == b"1":
        return True
    odd("prov is not 0 or 1; taken as 0")
    return False


def _toolchains(props: Mapping[bytes, bytes | None], odd: Callable[[str], None]) -> tuple[str, ...]:
    """``tc``: comma-separated version strings; odd entries are dropped, a value over
    ``MAX_TC_LEN`` is dropped whole, and at most ``MAX_ADVERT_TOOLCHAINS`` are kept."""
    value = props.get(b"tc")
    if not value:
        return ()
    if len(value) > MAX_TC_LEN:
        odd(f"tc longer than {MAX_TC_LEN} bytes; ignored")
        return ()
    versions: list[str] = []
    bad = False
    for raw in value.split(b","):
        version = raw.decode("ascii", "replace")
        if not _VERSION_RE.fullmatch(version):
            bad = True
        elif version not in versions:
            versions.append(version)
    if bad:
        odd("tc lists something that is not a version string; dropped it")
    if len(versions) > MAX_ADVERT_TOOLCHAINS:
        odd(f"tc lists more than {MAX_ADVERT_TOOLCHAINS} versions; kept the first")
        del versions[MAX_ADVERT_TOOLCHAINS:]
    return tuple(versions)


def parse_advert(
    instance: str,
    props: Mapping[bytes, bytes | None],
    *,
    addresses: Sequence[str],
    port: int | None,
    txt_size: int = 0,
    on_odd: Callable[[str], None] = _ignore_odd,
) -> MdnsAdvert:
    """Validate one resolved instance; raise ``AdvertError`` for anything unusable.

    Unknown keys are ignored (newer nodes may add fields); ``fp``, ``proto``, a port
    and an address are required; absent flags mean "no" (not idle, no builds, does not
    provision). The toolchain hints (``prov``, ``tc``) are only hints: an odd value is
    reported to ``on_odd`` (once per reason, by the caller) and that hint is dropped.
    """
    if txt_size > MAX_TXT_BYTES:
        raise AdvertError(f"TXT record of {txt_size} bytes (limit {MAX_TXT_BYTES})")
    if len(props) > MAX_TXT_KEYS:
        raise AdvertError(f"{len(props)} TXT keys (limit {MAX_TXT_KEYS})")
    raw_fp = props.get(b"fp")
    if raw_fp is None:
        raise AdvertError("no fingerprint (fp)")
    fingerprint = raw_fp.decode("ascii", "replace").lower()
    if not _FP_RE.fullmatch(fingerprint):
        raise AdvertError("fp is not 64 hex digits")
    protocol = _uint(props, b"proto", digits=5)
    if protocol is None or not 1 <= protocol <= 65535:
        raise AdvertError("proto missing or out of range")
    raw_name = props.get(b"name")
    name = _text(raw_name, "name", MAX_NAME_LEN) if raw_name else ""
    if not name:
        name = instance.split(".", 1)[0][:MAX_NAME_LEN]
    raw_version = props.get(b"esphome")
    version = None
    if raw_version:
        version = raw_version.decode("ascii", "replace")
        if not _VERSION_RE.fullmatch(version):
            raise AdvertError("esphome is not a version string")
    idle = _flag(props, b"idle")
    idle_ms = _uint(props, b"idle_since", digits=MAX_IDLE_SINCE_DIGITS)
    if port is None or not 1 <= port <= 65535:
        raise AdvertError("no usable port")
    hosts: list[str] = []
    for address in addresses:
        try:
            ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError as err:
            raise AdvertError("an address is not an IP address") from err
        hosts.append(format_host_port(address, port))
    if not hosts:
        raise AdvertError("no address")
    return MdnsAdvert(
        instance=instance,
        fingerprint=fingerprint,
        name=name,
        protocol=protocol,
        esphome_version=version,
        accepts_builds=_flag(props, b"builds"),
        idle=idle,
        idle_since=idle_ms / 1000.0 if idle and idle_ms else None,
        addresses=tuple(hosts[:MAX_ADDRESSES]),
        provisions=_provisions(props, on_odd),
        toolchains=_toolchains(props, on_odd),
    )


def _local_ipv4() -> list[str]:
    return sorted(
        {
            str(ip.ip)
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if ip.is_IPv4 and not str(ip.ip).startswith("127.")
        }
    )


async def _await_broadcast(pending: Awaitable[Any]) -> None:
    """zeroconf's register/update/unregister return a task still sending; await it too."""
    task = await pending
    await task


# -- the component ------------------------------------------------------------------------


class Discovery:
    """Advertise (optional) and browse (optional) ``_meshd._tcp`` on pinned interfaces.

    ``start``/``stop`` from the event loop; ``update_lane`` is synchronous and cheap,
    so the compile lane's status callback can call it directly.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        interfaces: Sequence[str] | None = None,
        advertise: AdvertInfo | None = None,
        browse: bool = True,
        service_type: str = SERVICE_TYPE,
        min_update_interval: float = MIN_UPDATE_INTERVAL,
        stale_check_interval: float = STALE_CHECK_INTERVAL,
    ) -> None:
        self._registry = registry
        self._interfaces = list(interfaces) if interfaces is not None else None
        self._advert = advertise
        self._browse = browse
        self._type = service_type
        self._min_interval = min_update_interval
        self._stale_interval = stale_check_interval
        self._stale_checker: asyncio.Task[None] | None = None
        self._known: set[str] = set()  # instance names currently in the registry
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._published: AdvertInfo | None = None
        self._dirty = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every resolve, also cancelled ones
        self._again: set[str] = set()
        self._bad = LogOnce(_LOGGER, "mDNS advert")
        self._seq = 0
        self.updates_sent = 0
        """TXT updates published since start (not counting the registration)."""

    @property
    def instance_name(self) -> str | None:
        """The full service name we advertise (``None`` when not advertising)."""
        if self._advert is None:
            return None
        label = instance_label(self._advert.name, self._advert.fingerprint)
        return f"{label}.{self._type}"

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open zeroconf, register our service (probe + announce), start browsing."""
        interfaces = self._interfaces if self._interfaces is not None else InterfaceChoice.All
        self._azc = AsyncZeroconf(interfaces=interfaces)
        try:
            if self._advert is not None:
                self._info = self._service_info(self._advert)
                await _await_broadcast(
                    self._azc.async_register_service(self._info, allow_name_change=True)
                )
                self._published = self._advert
                self._publisher = asyncio.create_task(
                    self._publish_loop(), name="meshd-mdns-publisher"
                )
            if self._browse:
                self._browser = AsyncServiceBrowser(
                    self._azc.zeroconf,
                    [self._type],
                    handlers=[self._on_change],
                )
                self._stale_checker = asyncio.create_task(
                    self._stale_loop(), name="meshd-mdns-staleness"
                )
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Goodbye for our service, stop browsing and resolving, close zeroconf."""
        azc, self._azc = self._azc, None
        if azc is None:
            return
        for attr in ("_publisher", "_stale_checker"):
            task: asyncio.Task[None] | None = getattr(self, attr)
            setattr(self, attr, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._known.clear()
        resolving = list(self._tasks)
        self._resolving.clear()
        for task in resolving:
            task.cancel()
        await asyncio.gather(*resolving, return_exceptions=True)
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
                self._browser = None
            if self._info is not None and self._published is not None:
                await _await_broadcast(azc.async_unregister_service(self._info))
        finally:
            self._info = None
            self._published = None
            await azc.async_close()

    # -- advertising ----------------------------------------------------------------

    def update_lane(self, idle: bool, idle_since: float | None) -> None:
        """The compile lane changed; publish it (coalesced, newest state wins)."""
        if self._advert is None:
            return
        self._advert = replace(self._advert, idle=idle, idle_since=idle_since if idle else None)
        self._dirty.set()

    def update_advert(
        self,
        *,
        accepts_builds: bool | None = None,
        esphome_version: str | None = None,
        provisions: bool | None = None,
        toolchains: Sequence[str] | None = None,
    ) -> None:
        """Other advertised facts changed (builds toggled, esphome upgraded, a toolchain
        became ready or was swept: ``toolchains`` most recently used first).

        Coalesced like lane changes; nothing is sent when the advert ends up as it was.
        """
        if self._advert is None:
            return
        if accepts_builds is not None:
            self._advert = replace(self._advert, accepts_builds=accepts_builds)
        if esphome_version is not None:
            self._advert = replace(self._advert, esphome_version=esphome_version)
        if provisions is not None:
            self._advert = replace(self._advert, provisions=provisions)
        if toolchains is not None:
            self._advert = replace(self._advert, toolchains=advert_toolchains(toolchains))
        self._dirty.set()

    def _service_info(self, advert: AdvertInfo) -> AsyncServiceInfo:
        label = instance_label(advert.name, advert.fingerprint)
        addresses = list(advert.addresses) or self._interfaces or _local_ipv4()
        return AsyncServiceInfo(
            self._type,
            f"{label}.{self._type}",
            port=advert.port,
            properties=build_txt(advert, self._seq),
            server=f"{label}.local.",
            host_ttl=advert.ttl,
            other_ttl=advert.ttl,
            parsed_addresses=addresses,
        )

    async def _publish_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()  # the registration's announcement counts as a multicast
        while True:
            await self._dirty.wait()
            wait = last + self._min_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # changes meanwhile only overwrite self._advert
            self._dirty.clear()
            advert = self._advert
            if advert is None or advert == self._published or self._azc is None:
                continue
            self._seq += 1
            info = self._service_info(advert)
            last = loop.time()
            try:
                announcing = await self._azc.async_update_service(info)
                self._info = info
                self._published = advert
                self.updates_sent += 1
                await announcing  # the repeats of the announcement (~0.5 s)
            except Exception:
                # A send error (interface gone) must not end advertising; the next
                # change retries with the newest state.
                _LOGGER.exception("could not publish the mDNS TXT update")

    # -- browsing --------------------------------------------------------------------

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        try:
            if name == self.instance_name:
                return
            if state_change is ServiceStateChange.Removed:
                task = self._resolving.pop(name, None)
                if task is not None:
                    task.cancel()  # it must not re-add what was just removed
                self._again.discard(name)
                self._known.discard(name)
                self._registry.mdns_gone(name)
            else:
                self._schedule_resolve(name)
        except Exception:
            # zeroconf runs handlers inline in its record processing; never break it.
            _LOGGER.exception("mDNS handler failed for %r", name)

    def _schedule_resolve(self, name: str) -> None:
        if name in self._resolving:
            self._again.add(name)  # resolve once more when the running one ends
            return
        if len(self._resolving) >= MAX_PENDING_RESOLVES:
            self._bad.warn(name, f"more than {MAX_PENDING_RESOLVES} adverts resolving at once")
            return
        task = asyncio.create_task(self._resolve(name), name=f"meshd-mdns-resolve {name}")
        self._resolving[name] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._forget_resolve(name, t))

    def _forget_resolve(self, name: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._resolving.get(name) is task:
            del self._resolving[name]

    async def _resolve(self, name: str) -> None:
        while True:
            self._again.discard(name)
            try:
                info = AsyncServiceInfo(self._type, name)
            except BadTypeInNameException:
                self._bad.warn(name, "not a name of our service type")
                return
            azc = self._azc
            if azc is None:
                return
            if await info.async_request(azc.zeroconf, RESOLVE_TIMEOUT_MS):
                self._accept(name, info)
            elif name in self._known:
                # Its records expired and it did not answer a query: gone without a
                # goodbye (crashed, unplugged, partitioned).
                _LOGGER.info("mDNS peer %r stopped answering; dropping its advert", name)
                self._known.discard(name)
                self._registry.mdns_gone(name)
            if name not in self._again:
                return

    def _accept(self, name: str, info: AsyncServiceInfo) -> None:
        try:
            advert = parse_advert(
                name,
                info.properties,
                addresses=info.parsed_scoped_addresses(),
                port=info.port,
                txt_size=len(info.text or b""),
                on_odd=lambda reason: self._bad.warn(name, reason),
            )
        except AdvertError as err:
            self._bad.warn(name, str(err))
            self._known.discard(name)
            self._registry.mdns_gone(name)  # whatever it said before no longer stands
            return
        if self._advert is not None and advert.fingerprint == self._advert.fingerprint:
            return  # our own key under another name: ignore (or an impostor)
        if self._registry.mdns_seen(advert):
            self._known.add(name)
        else:
            self._bad.warn(name, "peer registry full")

    async def _stale_loop(self) -> None:
        """Re-resolve every known instance whose records left the cache.

        zeroconf's browser only reports removal when a PTR expires, and it stretches
        PTR TTLs to at least 1125 s. SRV/TXT/A expire on their own TTL (``ADVERT_TTL``),
        so an instance missing from the cache gets one query round (``async_request``):
        an answer refreshes it, silence removes it.
        """
        while True:
            await asyncio.sleep(self._stale_interval)
            azc = self._azc
            if azc is None:
                return
            for name in list(self._known):
                if name in self._resolving:
                    continue
                if not AsyncServiceInfo(self._type, name).load_from_cache(azc.zeroconf):
                    self._schedule_resolve(name)
