"""The live peer registry: every node this one knows of, keyed by fingerprint.

Three feeds write into it, all from the event loop:

* discovery (mDNS adverts: address, name, versions, lane state from TXT; goodbyes);
* the peer link (session up/down with the error, the verified hello, lane-status pushes);
* the trust store (trusted / not trusted), and finished remote compiles (durations).

Every trusted peer has a record, whether it was ever seen or not (source ``trust``,
with the name and addresses the trust store knows): a paired receiver that stops is
shown ``connected: false`` with its last error and when it was last seen, never
dropped. ``last_seen`` is when this node last heard from the peer (an advert, a session
event); None if it never has.

``idle_since`` is this node's own clock: when it first saw the peer idle in its
current idle period. A peer's claim (``claimed_idle_since``, its clock) only tells
whether a new idle period began; a receiver whose clock is hours off must not look idle
for hours, or never idle, to the scheduler.

Readers get either ``snapshot()`` (JSON-able dicts: ``meshd peers --json``, the status
API) or ``views()`` (the scheduler's ``PeerView``). Every real change is announced to
synchronous listeners, because the compile lane re-plans on each one; a refresh that
changes nothing but ``last_seen`` is not announced, so mDNS chatter cannot make the
scheduler spin.

mDNS is unauthenticated: anyone on the LAN can advertise any fingerprint. The registry
therefore treats an advert as a hint (where to dial, what the peer says about itself)
and lets the link, whose handshake proves the key, win: while a session is up, lane
state and identity fields come from the link only. It also caps how many records a LAN
can make it hold (``MAX_PEERS``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from meshd.mesh.dispatch.scheduler import PeerView

_LOGGER = logging.getLogger(__name__)

MAX_PEERS: Final = 256
"""Most records held at once. A home LAN or build cluster has tens of nodes; a hostile
one can advertise thousands of services, and every change re-plans over all records."""

MAX_ADDRESSES: Final = 8
"""Addresses kept per peer (newest first). Enough for dual-stack multi-homed hosts and
a few DHCP changes; older ones fall off the end."""

MAX_INSTANCES: Final = 4
"""mDNS instance names remembered per fingerprint (a rename, or a restart with a new
name while the old advert has not expired yet)."""

RECENT_COMPILES: Final = 10
"""Compile durations kept per peer for scheduling heuristics."""


class PeerSource(enum.StrEnum):
    """How a peer became known; a record may have several."""

    MDNS = "mdns"
    STATIC = "static"
    INBOUND = "inbound"
    TRUST = "trust"


class LaneVia(enum.StrEnum):
    """Where the lane state in a record last came from."""

    MDNS = "mdns"
    LINK = "link"


class ChangeKind(enum.StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True)
class PeerChange:
    """What a listener is told: which record changed, and how."""

    kind: ChangeKind
    fingerprint: str


@dataclass(frozen=True)
class MdnsAdvert:
    """One parsed, validated mDNS advert (discovery builds these from TXT and SRV/A)."""

    instance: str
    """The full service instance name, e.g. ``desk-1a2b3c4d._meshd._tcp.local.``."""
    fingerprint: str
    name: str
    protocol: int
    esphome_version: str | None
    accepts_builds: bool
    idle: bool
    idle_since: float | None
    """Epoch seconds (TXT carries milliseconds)."""
    addresses: tuple[str, ...]
    """``host:port`` (IPv6 as ``[addr]:port``)."""
    provisions: bool = False
    """TXT ``prov``: it provisions the esphome an offloader asks for."""
    toolchains: tuple[str, ...] = ()
    """TXT ``tc``: some of its ready toolchains (bounded; ``node_info`` has them all)."""


@dataclass(frozen=True)
class PeerRecord:
    """An immutable copy of one record; ``to_dict`` is the documented JSON shape.

    (Not the link's ``PeerInfo``, which is what a handshake proved about a session's peer.)
    """

    fingerprint: str
    name: str
    addresses: tuple[str, ...]
    sources: tuple[str, ...]
    trusted: bool
    connected: bool
    protocol: int | None
    esphome_version: str | None
    accepts_builds: bool
    idle: bool
    idle_since: float | None
    running: int
    queued: int
    lane_via: str | None
    last_seen: float | None
    last_error: str | None
    compile_durations: tuple[float, ...]
    mdns_instances: tuple[str, ...]
    claimed_idle_since: float | None = None
    provisions: bool = False
    """It provisions the esphome an offloader asks for (its ``node_info``; before a
    session, its advert's ``prov``)."""
    toolchains: tuple[str, ...] = ()
    """esphome versions it has ready besides its own (``node_info``, ``lane_status``;
    before a session, its advert's bounded ``tc``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "name": self.name,
            "addresses": list(self.addresses),
            "sources": list(self.sources),
            "trusted": self.trusted,
            "connected": self.connected,
            "protocol": self.protocol,
            "esphome_version": self.esphome_version,
            "accepts_builds": self.accepts_builds,
            "idle": self.idle,
            "idle_since": self.idle_since,
            "claimed_idle_since": self.claimed_idle_since,
            "running": self.running,
            "queued": self.queued,
            "lane_via": self.lane_via,
            "last_seen": self.last_seen,
            "last_error": self.last_error,
            "compile_durations": list(self.compile_durations),
            "mdns_instances": list(self.mdns_instances),
            "provisions": self.provisions,
            "toolchains": list(self.toolchains),
        }

    def _comparable(self) -> tuple[Any, ...]:
        # last_seen moves on every refresh; it alone is not a change worth announcing.
        return tuple(v for k, v in self.__dict__.items() if k != "last_seen")


@dataclass
class _Peer:
    fingerprint: str
    name: str
    last_seen: float | None
    trusted: bool = False
    addresses: list[str] = field(default_factory=list)
    sources: set[PeerSource] = field(default_factory=set)
    connected: bool = False
    protocol: int | None = None
    esphome_version: str | None = None
    accepts_builds: bool = False
    idle: bool = False
    idle_since: float | None = None
    claimed_idle_since: float | None = None
    running: int = 0
    queued: int = 0
    lane_via: LaneVia | None = None
    last_error: str | None = None
    durations: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_COMPILES))
    instances: list[str] = field(default_factory=list)
    provisions: bool = False
    toolchains: tuple[str, ...] = ()

    def info(self) -> PeerRecord:
        return PeerRecord(
            fingerprint=self.fingerprint,
            name=self.name,
            addresses=tuple(self.addresses),
            sources=tuple(sorted(s.value for s in self.sources)),
            trusted=self.trusted,
            connected=self.connected,
            protocol=self.protocol,
            esphome_version=self.esphome_version,
            accepts_builds=self.accepts_builds,
            idle=self.idle,
            idle_since=self.idle_since,
            running=self.running,
            queued=self.queued,
            lane_via=self.lane_via.value if self.lane_via else None,
            last_seen=self.last_seen,
            last_error=self.last_error,
            compile_durations=tuple(self.durations),
            mdns_instances=tuple(self.instances),
            claimed_idle_since=self.claimed_idle_since,
            provisions=self.provisions,
            toolchains=self.toolchains,
        )

    def add_addresses(self, new: Iterable[str]) -> None:
        """Newest first, deduplicated, bounded: a DHCP change moves the new address up."""
        merged: list[str] = []
        for address in (*new, *self.addresses):
            if address not in merged:
                merged.append(address)
        self.addresses = merged[:MAX_ADDRESSES]

    def evictable(self) -> bool:
        return not (self.connected or self.trusted or PeerSource.STATIC in self.sources)

    def set_lane(self, idle: bool, claimed: float | None, now: float) -> None:
        """Idle or not, with ``idle_since`` on our clock (see the module docstring)."""
        if not idle:
            self.idle, self.idle_since, self.claimed_idle_since = False, None, None
            return
        if not self.idle or self.idle_since is None or claimed != self.claimed_idle_since:
            self.idle_since = now
        self.idle = True
        self.claimed_idle_since = claimed


Listener = Callable[[PeerChange], None]


class Registry:
    """Peers by fingerprint; call every method from the event loop."""

    def __init__(
        self,
        *,
        is_trusted: Callable[[str], bool] = lambda _fp: False,
        clock: Callable[[], float] = time.time,
        max_peers: int = MAX_PEERS,
        own_fingerprint: str | None = None,
    ) -> None:
        """``own_fingerprint``: this node; its own advert (and any loopback echo of it)
        is never a peer, or the node would offload to itself."""
        self._own = own_fingerprint
        self._peers: dict[str, _Peer] = {}
        self._listeners: list[Listener] = []
        self._is_trusted = is_trusted
        self._clock = clock
        self._max_peers = max_peers
        self._full_logged = False

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._peers

    def get(self, fingerprint: str) -> PeerRecord | None:
        peer = self._peers.get(fingerprint)
        return peer.info() if peer else None

    def snapshot(self) -> list[dict[str, Any]]:
        """Every record as a JSON-able dict (see docs/DISCOVERY.md), sorted by name."""
        infos = sorted(
            (p.info() for p in self._peers.values()), key=lambda i: (i.name, i.fingerprint)
        )
        return [info.to_dict() for info in infos]

    def views(self, in_flight: Collection[str] = ()) -> list[PeerView]:
        """What the scheduler plans over; ``in_flight`` names receivers already busy with ours."""
        return [
            PeerView(
                fingerprint=p.fingerprint,
                name=p.name,
                trusted=p.trusted,
                connected=p.connected,
                accepts_builds=p.accepts_builds,
                esphome_version=p.esphome_version,
                idle=p.idle,
                idle_since=p.idle_since,
                in_flight=p.fingerprint in in_flight,
                provisions=p.provisions,
                toolchains=frozenset(p.toolchains),
            )
            for p in self._peers.values()
        ]

    def addresses(self, fingerprint: str) -> list[str]:
        peer = self._peers.get(fingerprint)
        return list(peer.addresses) if peer else []

    # -- listeners -------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` synchronously on every change; returns the remover."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _notify(self, kind: ChangeKind, fingerprint: str) -> None:
        change = PeerChange(kind, fingerprint)
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                # One broken listener must not stop the others or the feed that
                # called us (an mDNS handler, a link session).
                _LOGGER.exception("peer registry listener failed on %s", change)

    def _edit(self, fingerprint: str, edit: Callable[[_Peer], None], *, seen: bool = True) -> bool:
        """Apply ``edit`` to an existing record; announce if anything visible changed.

        ``seen``: the change came from the peer itself (an advert, a session event), so
        ``last_seen`` moves; our own bookkeeping (trust, errors of our dials) does not."""
        peer = self._peers.get(fingerprint)
        if peer is None:
            return False
        before = peer.info()._comparable()
        edit(peer)
        if seen:
            peer.last_seen = self._clock()
        if peer.info()._comparable() != before:
            self._notify(ChangeKind.UPDATED, fingerprint)
        return True

    def _admit(
        self, fingerprint: str, name: str, *, verified: bool, seen: bool = True
    ) -> _Peer | None:
        """A new record, or None when the cap is reached.

        An unverified (mDNS) newcomer never displaces anything: first come stays, so a
        flood cannot push real peers out. A link-verified newcomer may evict the least
        recently seen record that is neither connected, trusted nor static.
        """
        if fingerprint == self._own:
            return None
        if len(self._peers) >= self._max_peers:
            victim = None
            if verified:
                candidates = [p for p in self._peers.values() if p.evictable()]
                victim = min(candidates, key=lambda p: p.last_seen or 0.0, default=None)
            if victim is None:
                if not self._full_logged:
                    self._full_logged = True
                    _LOGGER.warning(
                        "peer registry full (%d records); ignoring new peers", self._max_peers
                    )
                return None
            self._remove(victim.fingerprint)
        peer = _Peer(
            fingerprint=fingerprint,
            name=name,
            last_seen=self._clock() if seen else None,
            trusted=self._is_trusted(fingerprint),
        )
        self._peers[fingerprint] = peer
        return peer

    def _remove(self, fingerprint: str) -> None:
        if self._peers.pop(fingerprint, None) is not None:
            if len(self._peers) < self._max_peers:
                self._full_logged = False
            self._notify(ChangeKind.REMOVED, fingerprint)

    # -- mDNS ------------------------------------------------------------------------

    def mdns_seen(self, advert: MdnsAdvert) -> bool:
        """Add or refresh a peer from an advert; False if the registry is full."""
        self._release_instance(advert.instance, keep=advert.fingerprint)
        peer = self._peers.get(advert.fingerprint)
        if peer is None:
            peer = self._admit(advert.fingerprint, advert.name, verified=False)
            if peer is None:
                return False
            self._apply_advert(peer, advert)
            self._notify(ChangeKind.ADDED, advert.fingerprint)
            return True
        self._edit(advert.fingerprint, lambda p: self._apply_advert(p, advert))
        return True

    def _apply_advert(self, peer: _Peer, advert: MdnsAdvert) -> None:
        peer.sources.add(PeerSource.MDNS)
        peer.add_addresses(advert.addresses)
        if advert.instance in peer.instances:
            peer.instances.remove(advert.instance)
        peer.instances.insert(0, advert.instance)
        del peer.instances[MAX_INSTANCES:]
        if peer.connected:
            # The session proved the key and pushes lane state; an unauthenticated
            # advert must not override either.
            return
        peer.name = advert.name
        peer.protocol = advert.protocol
        peer.esphome_version = advert.esphome_version
        peer.accepts_builds = advert.accepts_builds
        peer.provisions = advert.provisions
        peer.toolchains = advert.toolchains
        peer.set_lane(advert.idle, advert.idle_since, self._clock())
        peer.lane_via = LaneVia.MDNS

    def mdns_gone(self, instance: str) -> None:
        """An advert ended (goodbye or TTL expiry).

        The record goes away when mDNS was its only source and no session is up;
        static and inbound peers, and connected ones, stay (the link decides for them).
        """
        self._release_instance(instance, keep=None)

    def _release_instance(self, instance: str, keep: str | None) -> None:
        # An instance name belongs to one fingerprint at a time: when it re-appears
        # claiming another one, the old claim ends as if by goodbye.
        for peer in list(self._peers.values()):
            if instance not in peer.instances or peer.fingerprint == keep:
                continue
            fingerprint = peer.fingerprint

            def drop(p: _Peer) -> None:
                p.instances.remove(instance)
                if not p.instances:
                    p.sources.discard(PeerSource.MDNS)

            self._edit(fingerprint, drop, seen=False)
            if not peer.sources and not peer.connected:
                self._remove(fingerprint)

    # -- static peers ------------------------------------------------------------------

    def add_static(self, fingerprint: str, address: str, name: str | None = None) -> bool:
        """A configured ``--peer`` whose identity is known (verified by a session)."""
        return self._upsert_verified(fingerprint, PeerSource.STATIC, address, name)

    def _upsert_verified(
        self, fingerprint: str, source: PeerSource, address: str | None, name: str | None
    ) -> bool:
        def apply(p: _Peer) -> None:
            p.sources.add(source)
            if address is not None:
                p.add_addresses([address])
            if name:
                p.name = name

        if fingerprint not in self._peers:
            peer = self._admit(fingerprint, name or fingerprint[:12], verified=True)
            if peer is None:
                return False
            apply(peer)
            self._notify(ChangeKind.ADDED, fingerprint)
            return True
        self._edit(fingerprint, apply)
        return True

    # -- the link ------------------------------------------------------------------------

    def link_up(
        self, fingerprint: str, *, source: PeerSource | None = None, address: str | None = None
    ) -> bool:
        """A session with this (handshake-verified) peer is open.

        ``source`` is how we got it (``static``/``inbound``; None for a peer found by
        mDNS and dialled); ``address`` the one that worked. False if the cap refused it.
        """

        def up(p: _Peer) -> None:
            if source is not None:
                p.sources.add(source)
            if address is not None:
                p.add_addresses([address])
            p.connected = True
            p.last_error = None

        if fingerprint not in self._peers:
            peer = self._admit(fingerprint, fingerprint[:12], verified=True)
            if peer is None:
                return False
            if source is None:
                # A peer we dialled is always known already; an unknown one called us.
                peer.sources.add(PeerSource.INBOUND)
            up(peer)
            self._notify(ChangeKind.ADDED, fingerprint)
            return True
        return self._edit(fingerprint, up)

    def link_down(self, fingerprint: str, error: str | None = None) -> None:
        """The session ended; ``error`` says why (None for an orderly close).

        Lane state learnt over the link is stale from now on, so the peer is no longer
        reported idle until a new advert or session says so.
        """

        def down(p: _Peer) -> None:
            p.connected = False
            p.last_error = error
            if p.lane_via is LaneVia.LINK:
                p.set_lane(False, None, 0.0)
                p.lane_via = None

        # last_seen stays: the peer was last heard from before the session died.
        self._edit(fingerprint, down, seen=False)
        peer = self._peers.get(fingerprint)
        if peer is not None and not peer.sources:
            self._remove(fingerprint)

    def set_error(self, fingerprint: str, error: str | None) -> None:
        """Why dialling or verifying failed (e.g. a trust failure), without a session."""

        def apply(p: _Peer) -> None:
            p.last_error = error

        self._edit(fingerprint, apply, seen=False)

    def link_hello(
        self,
        fingerprint: str,
        *,
        name: str | None = None,
        protocol: int | None = None,
        esphome_version: str | None = None,
        accepts_builds: bool | None = None,
        provisions: bool | None = None,
        toolchains: Sequence[str] | None = None,
    ) -> None:
        """What the verified peer said about itself; it overrides the advert's claims."""

        def apply(p: _Peer) -> None:
            if name:
                p.name = name
            if protocol is not None:
                p.protocol = protocol
            if esphome_version:
                p.esphome_version = esphome_version
            if accepts_builds is not None:
                p.accepts_builds = accepts_builds
            if provisions is not None:
                p.provisions = provisions
            if toolchains is not None:
                p.toolchains = tuple(toolchains)

        self._edit(fingerprint, apply)

    def link_status(
        self,
        fingerprint: str,
        *,
        idle: bool,
        idle_since: float | None,
        running: int,
        queued: int,
        esphome_version: str | None = None,
        toolchains: Sequence[str] | None = None,
    ) -> None:
        """A compile-lane status push (``{idle, idle_since, running, queued}``)."""

        def apply(p: _Peer) -> None:
            p.set_lane(idle, idle_since, self._clock())
            p.running = max(0, running)
            p.queued = max(0, queued)
            p.lane_via = LaneVia.LINK
            if esphome_version:
                p.esphome_version = esphome_version
            if toolchains is not None:
                p.toolchains = tuple(toolchains)

        self._edit(fingerprint, apply)

    # -- trust and history ---------------------------------------------------------------

    def set_trusted(self, fingerprint: str, trusted: bool) -> None:
        def apply(p: _Peer) -> None:
            p.trusted = trusted

        self._edit(fingerprint, apply, seen=False)

    def sync_trust(
        self,
        trusted: Collection[str],
        details: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    ) -> None:
        """Make the records match the trust store: ``trusted`` fingerprints, with the
        ``(name, addresses)`` it knows for each in ``details``.

        A trusted peer without a record gets one (source ``trust``, never seen); a
        record whose trust was withdrawn loses that source, and goes if nothing else
        (mDNS, a static peer, a session) keeps it.
        """
        details = details or {}
        for fingerprint in trusted:
            name, addresses = details.get(fingerprint, ("", ()))
            if fingerprint in self._peers:

                def keep(p: _Peer, name: str = name, addresses: Sequence[str] = addresses) -> None:
                    p.trusted = True
                    p.sources.add(PeerSource.TRUST)
                    p.add_addresses([a for a in addresses if a not in p.addresses])
                    if name and p.name == p.fingerprint[:12]:
                        p.name = name

                self._edit(fingerprint, keep, seen=False)
                continue
            peer = self._admit(fingerprint, name or fingerprint[:12], verified=True, seen=False)
            if peer is None:
                continue
            peer.trusted = True
            peer.sources.add(PeerSource.TRUST)
            peer.add_addresses(addresses)
            self._notify(ChangeKind.ADDED, fingerprint)
        for fingerprint in list(self._peers):
            if fingerprint in trusted:
                continue

            def drop(p: _Peer) -> None:
                p.trusted = False
                p.sources.discard(PeerSource.TRUST)

            self._edit(fingerprint, drop, seen=False)
            peer = self._peers.get(fingerprint)
            if peer is not None and not peer.sources and not peer.connected:
                self._remove(fingerprint)

    def record_compile(self, fingerprint: str, seconds: float) -> None:
        """A remote compile on this peer finished after ``seconds``."""
        if seconds < 0:
            return

        def apply(p: _Peer) -> None:
            p.durations.append(seconds)

        self._edit(fingerprint, apply, seen=False)

    def forget(self, fingerprint: str) -> None:
        """Drop a record whatever its sources (e.g. an operator removed a static peer)."""
        self._remove(fingerprint)

    def fingerprints(self) -> Sequence[str]:
        return list(self._peers)
