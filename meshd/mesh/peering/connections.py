"""Keeps one link session per peer: dials trusted receivers, adopts inbound sessions.

Targets are the trusted peers that may build for us and whose address we know (from
mDNS, from the trust store, or a static ``--peer``). Each target gets a dial task
with capped exponential backoff. A registry change for that peer (mDNS saw it again,
at a new address perhaps) cuts the wait short. A trust refusal stops the retries
until the trust store changes, so an untrusted peer is never hammered.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd.link import (
    CloseReason,
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

_LOGGER = logging.getLogger(__name__)

BACKOFF_START = 1.0
BACKOFF_MAX = 60.0
# A new session counts as "connecting" until the peer has said who it is and how busy
# its lane is (node_info + lane_status, sent at once on open); a peer that never does
# stops holding the scheduler back after this long.
INTRODUCTION_TIMEOUT = 10.0


@dataclass(frozen=True)
class SessionHooks:
    opened: Callable[[LinkSession], None]
    closed: Callable[[LinkSession], None]


def _refused_by_peer(own_fingerprint: str, exc: Exception) -> str:
    return f"it does not trust this node yet (there: meshd trust {own_fingerprint}): {exc}"


async def _backoff_wait(kick: asyncio.Event, backoff: float) -> float:
    """Sleep about ``backoff`` seconds (jittered, so peers do not retry in step) unless
    ``kick`` is set first; return the next, doubled and capped, back-off."""
    kick.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(kick.wait(), backoff * random.uniform(0.8, 1.2))  # noqa: S311
    return min(backoff * 2, BACKOFF_MAX)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a HOST:PORT address: {address!r}")
    return host.strip("[]"), int(port)


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
        static_peers: tuple[str, ...] = (),
        dial: bool = True,
        on_connecting_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.registry = registry
        self.router = router
        self.hooks = hooks
        self.session_config = session_config
        self.static_peers = static_peers
        self.dial_enabled = dial
        self._me = identity.fingerprint_hex
        self._sessions: dict[str, LinkSession] = {}
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._static_dialers: dict[str, asyncio.Task[None]] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._refused: set[str] = set()
        # Peers (by fingerprint, or static address) whose first dial since start or the
        # last trust change has not finished: the scheduler waits for them briefly.
        self._first_attempts: set[str] = set()
        self._awaiting_intro: dict[str, str] = {}  # fingerprint -> first-attempt key
        self._intro_timers: dict[str, asyncio.TimerHandle] = {}  # cancelled on stop
        self._on_connecting_change = on_connecting_change
        self._watchers: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._static_kick = asyncio.Event()
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

    def _attempt_started(self, key: str) -> None:
        self._first_attempts.add(key)
        self._on_connecting_change()

    def introduced(self, fingerprint: str) -> None:
        """The peer's node_info and lane_status arrived: the scheduler can judge it now."""
        key = self._awaiting_intro.pop(fingerprint, None)
        timer = self._intro_timers.pop(fingerprint, None)
        if timer is not None:
            timer.cancel()
        if key is not None:
            self._attempt_finished(key)

    def _await_introduction(self, fingerprint: str, key: str) -> None:
        if key not in self._first_attempts:
            return
        self._awaiting_intro[fingerprint] = key
        previous = self._intro_timers.pop(fingerprint, None)
        if previous is not None:
            previous.cancel()
        self._intro_timers[fingerprint] = asyncio.get_running_loop().call_later(
            INTRODUCTION_TIMEOUT, self.introduced, fingerprint
        )

    def _attempt_finished(self, key: str) -> None:
        if key in self._first_attempts:
            self._first_attempts.discard(key)
            self._on_connecting_change()

    def _spawn_dial(self, key: str, dial: Any, name: str) -> asyncio.Task[None]:
        """Start a dial loop; ``key`` counts as connecting from now until its first pass ends."""
        self._attempt_started(key)
        return asyncio.create_task(self._first_attempt_bounded(key, dial), name=name)

    async def _first_attempt_bounded(self, key: str, dial: Any) -> None:
        try:
            await dial
        finally:
            self._attempt_finished(key)

    async def start(self) -> None:
        # Dial known receivers now, not on the first registry change: after a restart
        # with mDNS off nothing else would ever wake the supervisor.
        self._spawn_dialers()
        self._supervisor = asyncio.create_task(self._supervise(), name="mesh-dialer")
        for address in self.static_peers:
            self._static_dialers[address] = self._spawn_dial(
                address, self._dial_static(address), f"dial-{address}"
            )

    def trust_changed(self) -> None:
        """The trust store changed: retry refused peers, drop sessions no longer trusted."""
        self._refused.clear()
        trusted = {p.fingerprint for p in self.trust.list()}
        self.registry.sync_trust(trusted)
        for fingerprint, session in list(self._sessions.items()):
            if fingerprint not in trusted:
                asyncio.create_task(session.close(CloseReason.UNTRUSTED, "trust withdrawn"))  # noqa: RUF006
        for kick in self._kicks.values():
            kick.set()
        self._static_kick.set()
        self._wake.set()

    async def stop(self) -> None:
        self._closing = True
        self._unlisten()
        for timer in self._intro_timers.values():
            timer.cancel()
        self._intro_timers.clear()
        tasks = [
            t
            for t in (self._supervisor, *self._dialers.values(), *self._static_dialers.values())
            if t is not None
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sessions = list(self._sessions.values())
        await asyncio.gather(
            *(s.close(CloseReason.GOING_AWAY, "meshd stopping") for s in sessions),
            return_exceptions=True,
        )
        if self._watchers:
            await asyncio.gather(*self._watchers, return_exceptions=True)

    async def accept(self, session: LinkSession) -> None:
        """``LinkServer`` on_session: adopt an inbound session until it ends."""
        self.registry.link_up(session.peer.fingerprint_hex, source=PeerSource.INBOUND)
        await self._adopt(session)

    # -- adopting sessions ----------------------------------------------------------------

    async def _adopt(self, session: LinkSession, *, outbound: bool = False) -> None:
        fingerprint = session.peer.fingerprint_hex
        current = self.session_for(fingerprint)
        if current is not None and current is not session:
            keep_outbound = self._me < fingerprint
            if outbound != keep_outbound:
                await session.close(CloseReason.NORMAL, "duplicate session")
                return
            await current.close(CloseReason.NORMAL, "duplicate session")
        self._sessions[fingerprint] = session
        self.hooks.opened(session)
        error = await session.wait_closed()
        self.introduced(fingerprint)  # it never will now
        if self._sessions.get(fingerprint) is session:
            del self._sessions[fingerprint]
            message = None if "duplicate" in str(error) else str(error)
            if not self._closing:
                self.registry.link_down(fingerprint, message)
        self.hooks.closed(session)

    # -- dialling ---------------------------------------------------------------------------

    def _on_registry_change(self, change: object) -> None:
        fingerprint = getattr(change, "fingerprint", None)
        if isinstance(fingerprint, str) and fingerprint in self._kicks:
            self._kicks[fingerprint].set()
        self._wake.set()

    def _targets(self) -> list[str]:
        targets = []
        for peer in self.trust.list():
            if not peer.allows(Permission.BUILD_FOR_ME) or peer.fingerprint in self._refused:
                continue
            if self._addresses(peer.fingerprint):
                targets.append(peer.fingerprint)
        return targets

    def _addresses(self, fingerprint: str) -> list[str]:
        known = list(self.registry.addresses(fingerprint))
        peer = self.trust.get(fingerprint)
        if peer is not None:
            known += [a for a in peer.addresses if a not in known]
        return known

    async def _supervise(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._spawn_dialers()

    def _spawn_dialers(self) -> None:
        """A dial task for every target without one (synchronous: marks them connecting)."""
        if self.dial_enabled and not self._closing:
            for fingerprint in self._targets():
                task = self._dialers.get(fingerprint)
                if task is None or task.done():
                    self._kicks[fingerprint] = asyncio.Event()
                    self._dialers[fingerprint] = self._spawn_dial(
                        fingerprint, self._dial_peer(fingerprint), f"dial-{fingerprint[:12]}"
                    )

    async def _connect(
        self, address: str, authorize: Callable[[PeerCandidate], bool]
    ) -> LinkSession:
        host, port = split_address(address)
        return await connect(
            host,
            port,
            self.identity,
            authorize=authorize,
            router=self.router,
            config=self.session_config,
        )

    async def _dial_peer(self, fingerprint: str) -> None:
        backoff = BACKOFF_START
        kick = self._kicks[fingerprint]
        expected = bytes.fromhex(fingerprint)
        verdict: dict[str, bool] = {}

        def authorize(candidate: PeerCandidate) -> bool:
            verdict["ours"] = candidate.fingerprint == expected and self.trust.is_trusted(
                candidate.public_key, Permission.BUILD_FOR_ME
            )
            return verdict["ours"]

        while not self._closing:
            existing = self.session_for(fingerprint)
            if existing is not None:
                await existing.wait_closed()
                backoff = BACKOFF_START
                continue
            peer = self.trust.get(fingerprint)
            if peer is None or not peer.allows(Permission.BUILD_FOR_ME):
                return
            for address in self._addresses(fingerprint):
                verdict.clear()
                try:
                    session = await self._connect(address, authorize)
                except TrustRefused as exc:
                    if verdict.get("ours") is False:
                        # We refused its key (not the one trusted): wait for trust to change.
                        self._refused.add(fingerprint)
                        self.registry.set_error(fingerprint, f"key not trusted here: {exc}")
                        _LOGGER.warning("not retrying %s: %s", fingerprint[:12], exc)
                        return
                    # It refused us: likely its operator has not run `meshd trust` yet.
                    self.registry.set_error(fingerprint, _refused_by_peer(self._me, exc))
                    continue
                except (LinkError, OSError, ValueError) as exc:
                    self.registry.set_error(fingerprint, f"{address}: {exc}")
                    continue
                self.trust.note_address(fingerprint, address)
                self.registry.link_up(fingerprint, address=address)
                self._await_introduction(fingerprint, fingerprint)
                await self._adopt(session, outbound=True)
                backoff = BACKOFF_START
                break
            else:
                self._attempt_finished(fingerprint)
                backoff = await _backoff_wait(kick, backoff)

    async def _dial_static(self, address: str) -> None:
        """A ``--peer HOST:PORT``: its identity is learnt in the handshake, then verified."""
        backoff = BACKOFF_START
        seen: dict[str, Any] = {}

        def authorize(candidate: PeerCandidate) -> bool:
            seen["fingerprint"] = candidate.fingerprint
            seen["ours"] = self.trust.is_trusted(candidate.public_key, Permission.BUILD_FOR_ME)
            return bool(seen["ours"])

        while not self._closing:
            seen.pop("ours", None)
            fingerprint = seen.get("fingerprint", b"").hex()
            if fingerprint and self.session_for(fingerprint) is not None:
                await self.session_for(fingerprint).wait_closed()  # type: ignore[union-attr]
                continue
            try:
                session = await self._connect(address, authorize)
            except TrustRefused as exc:
                fingerprint = seen.get("fingerprint", b"").hex()
                we_refused = seen.get("ours") is False
                reason = (
                    f"key not trusted here (meshd trust {fingerprint})"
                    if we_refused
                    else _refused_by_peer(self._me, exc)
                )
                if fingerprint:
                    self.registry.add_static(fingerprint, address)
                    self.registry.set_error(fingerprint, reason)
                _LOGGER.warning("static peer %s: %s", address, reason)
                if we_refused:
                    backoff = BACKOFF_MAX  # until trust_changed() kicks us
            except (LinkError, OSError, ValueError) as exc:
                _LOGGER.info("static peer %s unreachable: %s", address, exc)
            else:
                fingerprint = session.peer.fingerprint_hex
                self.registry.add_static(fingerprint, address)
                self.registry.set_trusted(fingerprint, True)
                self.registry.link_up(fingerprint, source=PeerSource.STATIC, address=address)
                self._await_introduction(fingerprint, address)
                await self._adopt(session, outbound=True)
                backoff = BACKOFF_START
                continue
            self._attempt_finished(address)
            backoff = await _backoff_wait(self._static_kick, backoff)
