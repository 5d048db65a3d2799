"""Keeps one link session per peer: dials trusted receivers, adopts inbound sessions.

What to dial is a :class:`DialTarget`: a trusted peer that may build for us, by
fingerprint (dialled at every address we know for it: mDNS, the trust store), or a
static ``--peer HOST:PORT`` (its identity is learnt in the handshake, then checked
against the trust store). Every target gets one dial loop with capped, jittered
exponential backoff; a registry change for that peer (mDNS saw it again, at a new
address perhaps) cuts the wait short.

The loop acts on exception types, never on message text. ``TrustRefused`` with
``by_peer`` False means our own trust check refused the key: the loop ends and the
target is left alone until the trust store changes, so an untrusted peer is never
hammered. Refused by the peer (it does not trust us yet) or unreachable: retry later,
with ``last_error`` saying what to do about it.

Sessions are symmetric, so a pair of nodes needs only one. When two exist (both
sides dialled at once, or an inbound session meets an outbound one) both nodes keep
the one initiated by the smaller fingerprint and close the other. They decide the
same way without talking about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshd.address import AddressError, HostPort, parse_host_port
from meshd.link import (
    CloseReason,
    LinkClosed,
    LinkError,
    LinkSession,
    PeerCandidate,
    Router,
    SessionConfig,
    TrustRefused,
    connect,
)
from meshd.mesh.peering.registry import PeerSource, Registry
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.trust import Permission, TrustStore
from meshd.mesh.tasks import TaskSet

_LOGGER = logging.getLogger(__name__)

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
# An address where another key answered is skipped this long, doubling up to the max.
BAD_ADDRESS_BACKOFF = 30.0
BAD_ADDRESS_BACKOFF_MAX = 3600.0
# A new session counts as "connecting" until the peer has said who it is and how busy
# its lane is (node_info + lane_status, sent at once on open); a peer that never does
# stops holding the scheduler back after this long.
INTRODUCTION_TIMEOUT = 10.0
# The close reason meshd uses for exactly one thing: dropping the second session of a
# pair. Such an end is orderly, so it leaves no ``last_error`` behind.
DUPLICATE = CloseReason.NORMAL


@dataclass(frozen=True)
class SessionHooks:
    opened: Callable[[LinkSession], None]
    closed: Callable[[LinkSession], None]


@dataclass(frozen=True)
class DialTarget:
    """Whom one dial loop tries to reach: a trusted peer or a static address (one of)."""

    fingerprint: str | None = None
    """A trusted peer, dialled at every address the registry and trust store know."""
    address: HostPort | None = None
    """A static ``--peer``: whoever answers there, if the trust store trusts its key."""

    def __post_init__(self) -> None:
        if (self.fingerprint is None) == (self.address is None):
            raise ValueError("a dial target is a fingerprint or an address, not both")

    @classmethod
    def peer(cls, fingerprint: str) -> DialTarget:
        return cls(fingerprint=fingerprint)

    @classmethod
    def static(cls, address: str | HostPort) -> DialTarget:
        return cls(address=address if isinstance(address, HostPort) else parse_host_port(address))

    @property
    def key(self) -> str:
        """How logs, kicks and the connecting set name this target."""
        return self.fingerprint if self.fingerprint is not None else str(self.address)

    @property
    def label(self) -> str:
        """The short form for logs and task names."""
        return self.fingerprint[:12] if self.fingerprint is not None else str(self.address)


def _refused_by_peer(own_fingerprint: str, exc: Exception) -> str:
    return f"it does not trust this node yet (there: meshd trust {own_fingerprint}): {exc}"


def _orderly(error: LinkError) -> bool:
    """A session end that is no error worth showing: a duplicate dropped by either side."""
    return isinstance(error, LinkClosed) and error.reason is DUPLICATE


async def _backoff_wait(kick: asyncio.Event, backoff: float) -> float:
    """Sleep about ``backoff`` seconds (jittered, so peers do not retry in step) unless
    ``kick`` is set first; return the next, doubled and capped, back-off."""
    kick.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(kick.wait(), backoff * random.uniform(0.8, 1.2))  # noqa: S311
    return min(backoff * 2, BACKOFF_MAX)


class _Handshake:
    """The trust decision of one dial attempt, and whose key it saw."""

    def __init__(self, target: DialTarget, trust: TrustStore) -> None:
        self._target = target
        self._trust = trust
        self.seen: str | None = None

    def authorize(self, candidate: PeerCandidate) -> bool:
        self.seen = candidate.fingerprint_hex
        if self._target.fingerprint is not None and self.seen != self._target.fingerprint:
            return False  # another key answers at this address now
        return self._trust.is_trusted(candidate.public_key, Permission.BUILD_FOR_ME)


def sync_registry_trust(registry: Registry, trust: TrustStore) -> set[str]:
    """Give the registry every trusted peer, with the name and addresses trust knows."""
    peers = trust.list()
    trusted = {p.fingerprint for p in peers}
    registry.sync_trust(trusted, {p.fingerprint: (p.name, p.addresses) for p in peers})
    return trusted


class Connections:
    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        registry: Registry,
        router: Router,
        hooks: SessionHooks,
        *,
        session_config: SessionConfig,
        static_peers: Iterable[str | HostPort] = (),
        dial: bool = True,
        on_connecting_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.registry = registry
        self.router = router
        self.hooks = hooks
        self.session_config = session_config
        self.static_targets = tuple(DialTarget.static(a) for a in static_peers)
        self.dial_enabled = dial
        self._me = identity.fingerprint_hex
        self._sessions: dict[str, LinkSession] = {}
        self._dialers: dict[DialTarget, asyncio.Task[None]] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._refused: set[DialTarget] = set()
        # (target key, address) -> (skip until, last back-off): another key answered there.
        self._bad: dict[tuple[object, str], tuple[float, float]] = {}
        # Targets (by key) whose first dial since start or the last trust change has
        # not finished: the scheduler waits for them briefly.
        self._first_attempts: set[str] = set()
        self._awaiting_intro: dict[str, str] = {}  # fingerprint -> first-attempt key
        self._intro_timers: dict[str, asyncio.TimerHandle] = {}
        self._on_connecting_change = on_connecting_change
        self._closers = TaskSet("connections")
        self._wake = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._unlisten = registry.add_listener(self._on_registry_change)

    # -- public -------------------------------------------------------------------------

    def session_for(self, fingerprint: str) -> LinkSession | None:
        session = self._sessions.get(fingerprint)
        return session if session is not None and not session.closed else None

    def connecting(self) -> bool:
        """Is a trusted receiver still on its first connection attempt?"""
        return bool(self._first_attempts)

    def dialling(self) -> set[DialTarget]:
        """The targets with a running dial loop."""
        return {t for t, task in self._dialers.items() if not task.done()}

    def introduced(self, fingerprint: str) -> None:
        """The peer's node_info and lane_status arrived: the scheduler can judge it now."""
        timer = self._intro_timers.pop(fingerprint, None)
        if timer is not None:
            timer.cancel()
        key = self._awaiting_intro.pop(fingerprint, None)
        timer = self._intro_timers.pop(fingerprint, None)
        if timer is not None:
            timer.cancel()
        if key is not None:
            self._attempt_finished(key)

    async def start(self) -> None:
        # Dial known receivers now, not on the first registry change: after a restart
        # with mDNS off nothing else would ever wake the supervisor.
        self._spawn_dialers()
        self._supervisor = asyncio.create_task(self._supervise(), name="mesh-dialer")

    def trust_changed(self) -> None:
        """The trust store changed: retry refused peers, drop sessions no longer trusted."""
        self._refused.clear()
        trusted = sync_registry_trust(self.registry, self.trust)
        for fingerprint, session in list(self._sessions.items()):
            if fingerprint not in trusted:
                self._closers.spawn(
                    session.close(CloseReason.UNTRUSTED, "trust withdrawn"),
                    name=f"untrust-{fingerprint[:12]}",
                )
        for kick in self._kicks.values():
            kick.set()
        # Now, not on the supervisor's next turn: a newly trusted receiver must count
        # as connecting before the scheduler next looks, or a compile falls back local.
        self._spawn_dialers()

    async def stop(self) -> None:
        self._closing = True
        self._unlisten()
        for timer in self._intro_timers.values():
            timer.cancel()
        self._intro_timers.clear()
        tasks = [t for t in (self._supervisor, *self._dialers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sessions = list(self._sessions.values())
        await asyncio.gather(
            *(s.close(CloseReason.GOING_AWAY, "meshd stopping") for s in sessions),
            return_exceptions=True,
        )
        await self._closers.wait()

    async def accept(self, session: LinkSession) -> None:
        """``LinkServer`` on_session: adopt an inbound session until it ends."""
        self.registry.link_up(session.peer.fingerprint_hex, source=PeerSource.INBOUND)
        await self._adopt(session)

    # -- the connecting set ----------------------------------------------------------------

    def _attempt_started(self, key: str) -> None:
        self._first_attempts.add(key)
        self._on_connecting_change()

    def _attempt_finished(self, key: str) -> None:
        if key in self._first_attempts:
            self._first_attempts.discard(key)
            self._on_connecting_change()

    def _await_introduction(self, fingerprint: str, key: str) -> None:
        if key not in self._first_attempts:
            return
        self._awaiting_intro[fingerprint] = key
        old = self._intro_timers.pop(fingerprint, None)
        if old is not None:
            old.cancel()
        self._intro_timers[fingerprint] = asyncio.get_running_loop().call_later(
            INTRODUCTION_TIMEOUT, self.introduced, fingerprint
        )

    # -- adopting sessions ----------------------------------------------------------------

    async def _adopt(self, session: LinkSession, *, outbound: bool = False) -> None:
        fingerprint = session.peer.fingerprint_hex
        current = self.session_for(fingerprint)
        if current is not None and current is not session:
            keep_outbound = self._me < fingerprint
            if outbound != keep_outbound:
                await session.close(DUPLICATE, "duplicate session")
                return
            # Replace it before closing it, so its end does not count as a disconnect.
            self._sessions[fingerprint] = session
            await current.close(DUPLICATE, "duplicate session")
        self._sessions[fingerprint] = session
        self.hooks.opened(session)
        error = await session.wait_closed()
        self.introduced(fingerprint)  # it never will now
        if self._sessions.get(fingerprint) is session:
            del self._sessions[fingerprint]
            if not self._closing:
                self.registry.link_down(fingerprint, None if _orderly(error) else str(error))
        self.hooks.closed(session)

    # -- dialling ---------------------------------------------------------------------------

    def _on_registry_change(self, change: object) -> None:
        fingerprint = getattr(change, "fingerprint", None)
        if isinstance(fingerprint, str) and fingerprint in self._kicks:
            self._kicks[fingerprint].set()
        self._wake.set()

    def _targets(self) -> list[DialTarget]:
        """Static peers always; trusted builders with a known address when dialling is on."""
        targets = list(self.static_targets)
        if self.dial_enabled:
            # One trust-store read per pass: it runs on every registry change (each
            # receiver's lane push), and a lookup per trusted peer cost 3-6 ms on the
            # event loop at 200 of them (docs/PERFORMANCE.md, scenario 8).
            for peer in self.trust.list():
                if peer.allows(Permission.BUILD_FOR_ME) and (
                    peer.addresses or self.registry.addresses(peer.fingerprint)
                ):
                    targets.append(DialTarget.peer(peer.fingerprint))
        return [t for t in targets if t not in self._refused]

    def _addresses(self, fingerprint: str) -> list[str]:
        known = list(self.registry.addresses(fingerprint))
        peer = self.trust.get(fingerprint)
        if peer is not None:
            known += [a for a in peer.addresses if a not in known]
        return known

    def _addresses_of(self, target: DialTarget) -> list[str | HostPort]:
        if target.address is not None:
            return [target.address]
        assert target.fingerprint is not None
        return list(self._addresses(target.fingerprint))

    def _builds_for_me(self, fingerprint: str) -> bool:
        peer = self.trust.get(fingerprint)
        return peer is not None and peer.allows(Permission.BUILD_FOR_ME)

    async def _supervise(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._spawn_dialers()

    def _spawn_dialers(self) -> None:
        """A dial loop for every target without one (synchronous: marks them connecting)."""
        if self._closing:
            return
        for target in self._targets():
            task = self._dialers.get(target)
            if task is None or task.done():
                self._kicks[target.key] = asyncio.Event()
                self._attempt_started(target.key)
                self._dialers[target] = asyncio.create_task(
                    self._run_dial(target), name=f"dial-{target.label}"
                )

    async def _run_dial(self, target: DialTarget) -> None:
        """``target`` counts as connecting from its spawn until its first pass ends."""
        try:
            await self._dial(target)
        finally:
            self._attempt_finished(target.key)

    async def _connect(self, address: HostPort, handshake: _Handshake) -> LinkSession:
        return await connect(
            address.host,
            address.port,
            self.identity,
            authorize=handshake.authorize,
            router=self.router,
            config=self.session_config,
        )

    async def _dial(self, target: DialTarget) -> None:
        """The one dial loop: reach ``target``, hold its session, redial when it ends."""
        backoff = BACKOFF_START
        kick = self._kicks[target.key]
        known = target.fingerprint  # a static peer's is learnt in the handshake
        while not self._closing:
            existing = self.session_for(known) if known is not None else None
            if existing is not None:
                await existing.wait_closed()
                backoff = BACKOFF_START
                continue
            if target.fingerprint is not None and not self._builds_for_me(target.fingerprint):
                return  # no longer trusted to build for us; a trust change may bring it back
            for text in self._usable(target, self._addresses_of(target)):
                handshake = _Handshake(target, self.trust)
                try:
                    address = text if isinstance(text, HostPort) else parse_host_port(text)
                    session = await self._connect(address, handshake)
                except TrustRefused as exc:
                    if (
                        not exc.by_peer
                        and target.fingerprint is not None
                        and handshake.seen is not None
                        and handshake.seen != target.fingerprint
                    ):
                        # Another key answers at this address (a spoofed advert, a
                        # reused DHCP lease): skip it for a while, keep trying the rest.
                        self._bad_address(target, text, handshake.seen)
                        continue
                    known = handshake.seen or known
                    if not exc.by_peer:
                        self._refused_here(target, handshake.seen, exc)
                        return
                    self._refused_there(target, handshake.seen, exc)
                except (LinkError, OSError, AddressError) as exc:
                    self._unreachable(target, text, exc)
                else:
                    known = session.peer.fingerprint_hex
                    self._connected(target, session, str(address))
                    await self._adopt(session, outbound=True)
                    backoff = BACKOFF_START
                    break
            else:
                self._attempt_finished(target.key)
                backoff = await _backoff_wait(kick, backoff)

    # -- what a dial attempt leaves in the registry ----------------------------------------

    def _connected(self, target: DialTarget, session: LinkSession, address: str) -> None:
        fingerprint = session.peer.fingerprint_hex
        if target.address is None:
            self.trust.note_address(fingerprint, address)
            self.registry.link_up(fingerprint, address=address)
        else:
            self.registry.add_static(fingerprint, address)
            self.registry.set_trusted(fingerprint, True)
            self.registry.link_up(fingerprint, source=PeerSource.STATIC, address=address)
        self._await_introduction(fingerprint, target.key)

    def _record(self, target: DialTarget, fingerprint: str | None, error: str) -> None:
        """Show ``error`` on the peer; a static peer's key enters the registry with it."""
        if fingerprint is None:
            return
        if target.address is not None:
            self.registry.add_static(fingerprint, str(target.address))
        self.registry.set_error(fingerprint, error)

    def _usable(self, target: DialTarget, addresses: list[str | HostPort]) -> list[str | HostPort]:
        """``addresses`` minus those that answered with another key and are still backed
        off; all of them if every one is (so a moved receiver is found again)."""
        now = time.monotonic()
        good = [a for a in addresses if self._bad.get((target.key, str(a)), (0.0, 0.0))[0] <= now]
        return good or addresses

    def _bad_address(self, target: DialTarget, address: str | HostPort, seen: str) -> None:
        key = (target.key, str(address))
        _, last = self._bad.get(key, (0.0, 0.0))
        backoff = min(max(last * 2, BAD_ADDRESS_BACKOFF), BAD_ADDRESS_BACKOFF_MAX)
        self._bad[key] = (time.monotonic() + backoff, backoff)
        self._record(target, target.fingerprint, f"{address}: key {seen[:16]} answers there")
        _LOGGER.warning(
            "%s: key %s answers at %s, not the trusted one; skipping that address for %.0f s",
            target.label,
            seen[:16],
            address,
            backoff,
        )

    def _refused_here(self, target: DialTarget, seen: str | None, exc: TrustRefused) -> None:
        """Our trust check refused the key: stop until the trust store changes."""
        self._refused.add(target)
        if target.fingerprint is not None:
            self._record(target, target.fingerprint, f"key not trusted here: {exc}")
            _LOGGER.warning("not retrying %s: %s", target.label, exc)
        else:
            reason = f"key not trusted here (meshd trust {seen})"
            self._record(target, seen, reason)
            _LOGGER.warning("static peer %s: %s; waiting for a trust change", target.label, reason)

    def _refused_there(self, target: DialTarget, seen: str | None, exc: TrustRefused) -> None:
        """The peer refused us: likely its operator has not run `meshd trust` yet."""
        reason = _refused_by_peer(self._me, exc)
        self._record(target, target.fingerprint or seen, reason)
        if target.address is not None:
            _LOGGER.warning("static peer %s: %s", target.label, reason)

    def _unreachable(self, target: DialTarget, address: str | HostPort, exc: Exception) -> None:
        if target.fingerprint is not None:
            self._record(target, target.fingerprint, f"{address}: {exc}")
        else:
            _LOGGER.info("static peer %s unreachable: %s", target.label, exc)
