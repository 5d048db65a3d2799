"""Opening sessions: the client ``connect()`` and the ``LinkServer``, both running the
handshake over asyncio streams and consulting an authorizer before going further.

Trust decisions are callbacks (``Authorizer``) so this package never imports the trust
store: the mesh layer passes ``TrustStore.authorizer()`` or a pairing check in. A
refused peer learns only the close reason; no job state is ever sent before trust.

Until its handshake ends a connection is a stranger's: ``LinkServer`` admits it only
within per-source and total caps (``meshd.link.admission``), bounds it by the
handshake timeout, and reports floods in rate-limited log lines.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd import __version__
from meshd.link.admission import MAX_HANDSHAKING, MAX_HANDSHAKING_PER_SOURCE, Admission, LogLimiter
from meshd.link.connection import (
    DEFAULT_CAPS,
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Established,
    PeerAuthenticated,
    Role,
)
from meshd.link.errors import (
    CloseReason,
    HandshakeError,
    LinkClosed,
    LinkError,
    RemoteProtocolError,
    TrustRefused,
    close_reason,
)
from meshd.link.handshake import Mode
from meshd.link.limits import HANDSHAKE_TIMEOUT
from meshd.link.session import READ_SIZE, LinkSession, PeerInfo, Router, SessionConfig

_LOGGER = logging.getLogger(__name__)

AGENT: Final = f"meshd/{__version__}"

# The StreamReader's buffer limit; reads return up to READ_SIZE at once.
STREAM_LIMIT: Final = READ_SIZE

# Connections (handshaking or established) one server accepts at once. A LAN mesh has
# a handful of peers; the cap stops a connection flood from exhausting descriptors.
MAX_CONNECTIONS: Final = 256

# Seconds LinkServer.close() lets connection handlers finish before cancelling them.
CLOSE_WAIT: Final = 5.0


@dataclass(frozen=True)
class PeerCandidate:
    """An authenticated peer awaiting a trust decision."""

    public_key: bytes
    fingerprint: bytes
    mode: Mode
    agent: str
    caps: tuple[str, ...]
    address: str | None

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()


Authorizer = Callable[[PeerCandidate], Awaitable[bool] | bool]
"""Decides whether to go on with an authenticated peer (sync or async)."""


class HasPrivateKey(Protocol):
    """Anything holding an Ed25519 identity key (``meshd.mesh.security.identity.Identity``)."""

    @property
    def private_key(self) -> Ed25519PrivateKey: ...


IdentityLike = Ed25519PrivateKey | HasPrivateKey


def expect_fingerprint(fingerprint: bytes) -> Authorizer:
    """An authorizer that accepts exactly one key, by its SHA-256 fingerprint."""

    def check(candidate: PeerCandidate) -> bool:
        return candidate.fingerprint == fingerprint

    return check


def _key(identity: IdentityLike) -> Ed25519PrivateKey:
    return identity if isinstance(identity, Ed25519PrivateKey) else identity.private_key


async def _ask(authorizer: Authorizer, candidate: PeerCandidate) -> bool:
    verdict = authorizer(candidate)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return bool(verdict)


def _address(writer: asyncio.StreamWriter) -> str | None:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return None


def _source(writer: asyncio.StreamWriter) -> str:
    """The peer's host address: what the per-source caps count by."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


Decide = Callable[[PeerAuthenticated], Awaitable[tuple[CloseReason, str] | None]]


async def run_handshake(
    conn: Connection,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    decide: Decide,
    # The handshake's own deadline: it raises HandshakeError(HANDSHAKE_TIMEOUT), which a
    # caller's cancel scope could not distinguish from its own timeout.
    timeout: float = HANDSHAKE_TIMEOUT,  # noqa: ASYNC109
) -> Established:
    """Drive ``conn`` through the handshake; ``decide`` returns None to accept or a
    (reason, text) refusal. Raises a LinkError if it does not end established."""
    try:
        async with asyncio.timeout(timeout):
            if conn.role is Role.INITIATOR:
                writer.write(conn.initiate())
            while True:
                try:
                    event = conn.next_event()
                except LinkError:
                    # A refusal the protocol still owes the peer (the version refusal
                    # body) goes out before we hang up.
                    if out := conn.data_to_send():
                        writer.write(out)
                        await writer.drain()
                    raise
                out = conn.data_to_send()
                if out:
                    writer.write(out)
                    await writer.drain()
                if event is NEED_DATA:
                    conn.receive_data(await reader.read(READ_SIZE))
                elif isinstance(event, PeerAuthenticated):
                    refusal = await decide(event)
                    if refusal is None:
                        conn.accept_peer()
                        continue
                    reason, text = refusal
                    conn.refuse_peer(reason, text)
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    raise TrustRefused(
                        f"refused peer {event.fingerprint.hex()[:16]}: {text}", reason=reason
                    )
                elif isinstance(event, Established):
                    writer.write(conn.data_to_send())
                    await writer.drain()
                    return event
                elif isinstance(event, ConnectionClosed):
                    raise LinkClosed(
                        "closed during the handshake",
                        reason=close_reason(event.reason),
                        by_peer=event.by_peer,
                    )
                else:
                    raise RemoteProtocolError(f"unexpected handshake event {event!r}")
    except TimeoutError:
        raise HandshakeError("handshake timed out", reason=CloseReason.HANDSHAKE_TIMEOUT) from None
    except (ConnectionError, OSError) as exc:
        raise LinkClosed(
            f"connection lost during the handshake: {exc}",
            reason=CloseReason.CONNECTION_LOST,
            by_peer=True,
        ) from exc


async def _abandon(writer: asyncio.StreamWriter) -> None:
    """Close a connection we will not use, without waiting on a peer that does not read."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_WAIT):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass


async def connect(
    host: str,
    port: int,
    identity: IdentityLike,
    *,
    authorize: Authorizer,
    router: Router | None = None,
    config: SessionConfig | None = None,
    mode: Mode = Mode.NORMAL,
    caps: tuple[str, ...] = DEFAULT_CAPS,
    agent: str = AGENT,
    timeout: float = HANDSHAKE_TIMEOUT,  # noqa: ASYNC109 - connect+handshake deadline, see run_handshake
) -> LinkSession:
    """Open a TCP connection, run the handshake as initiator and return a started session.

    ``authorize`` sees the responder's authenticated key before we send anything that
    identifies us; returning False hangs up and raises ``TrustRefused``. A pairing-mode
    session (``mode=Mode.PAIRING``) is untrusted: it carries only pairing messages.
    """
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, limit=STREAM_LIMIT)
    except TimeoutError:
        raise LinkClosed(
            f"connect to {host}:{port} timed out", reason=CloseReason.CONNECTION_LOST
        ) from None
    except OSError as exc:
        raise LinkClosed(
            f"cannot connect to {host}:{port}: {exc}", reason=CloseReason.CONNECTION_LOST
        ) from exc
    conn = Connection(Role.INITIATOR, _key(identity), mode=mode, caps=caps, agent=agent)
    address = f"{host}:{port}"

    async def decide(peer: PeerAuthenticated) -> tuple[CloseReason, str] | None:
        candidate = PeerCandidate(
            peer.public_key, peer.fingerprint, peer.mode, peer.agent, peer.caps, address
        )
        if await _ask(authorize, candidate):
            return None
        return CloseReason.UNTRUSTED, f"server key {peer.fingerprint.hex()[:16]} is not trusted"

    try:
        established = await run_handshake(conn, reader, writer, decide, timeout)
    except BaseException:
        await _abandon(writer)
        raise
    peer = PeerInfo.from_established(established, address, trusted=mode is Mode.NORMAL)
    session = LinkSession(conn, reader, writer, peer, router=router, config=config)
    session.start()
    return session


SessionHandler = Callable[[LinkSession], Awaitable[None]]


class LinkServer:
    """Accepts peers: handshake, trust check, then a started session per connection.

    ``authorize`` decides normal sessions; ``pairing`` (if given) decides pairing-mode
    handshakes (it should say yes only while a pairing window is open). ``on_session``
    is awaited with each established session; the session stays open until either
    side closes it, after which the server forgets it.
    """

    def __init__(
        self,
        identity: IdentityLike,
        *,
        authorize: Authorizer,
        router: Router | None = None,
        on_session: SessionHandler | None = None,
        pairing: Authorizer | None = None,
        pairing_router: Router | None = None,
        config: SessionConfig | None = None,
        caps: tuple[str, ...] = DEFAULT_CAPS,
        agent: str = AGENT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_handshaking: int = MAX_HANDSHAKING,
        max_handshaking_per_source: int = MAX_HANDSHAKING_PER_SOURCE,
    ) -> None:
        self._key = _key(identity)
        self._authorize = authorize
        self._router = router or Router()
        self._pairing = pairing
        self._pairing_router = pairing_router or self._router
        self._on_session = on_session
        self._config = config
        self._caps = caps
        self._agent = agent
        self._timeout = handshake_timeout
        self._max = max_connections
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        total = min(max_handshaking, max_connections)
        self._admission: Admission[asyncio.StreamWriter] = Admission(
            per_source=min(max_handshaking_per_source, total), total=total
        )
        self._log_limit = LogLimiter()
        self._sessions: set[LinkSession] = set()
        self._closing = False

    @property
    def sessions(self) -> frozenset[LinkSession]:
        return frozenset(self._sessions)

    @property
    def port(self) -> int:
        """The bound port (useful after ``start(port=0)``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int = 0) -> None:
        """Listen on ``host:port`` (tests: "127.0.0.1" and 0)."""
        self._server = await asyncio.start_server(self._accept, host, port, limit=STREAM_LIMIT)

    async def close(self, reason: CloseReason = CloseReason.GOING_AWAY) -> None:
        """Stop listening, close every session with ``reason``, wait for all handlers."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        await asyncio.gather(*(s.close(reason) for s in sessions), return_exceptions=True)
        # Handshakes in progress fail on their own once their sockets are gone; cancelling
        # the connection tasks instead would make asyncio log a spurious error.
        for writer in self._admission.connections():
            writer.transport.abort()
        if self._handlers:
            _done, pending = await asyncio.wait(set(self._handlers), timeout=CLOSE_WAIT)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _warn(self, key: tuple[str, str], fmt: str, *args: object) -> None:
        """A warning at most once per key per LogLimiter interval, with a count."""
        quiet = self._log_limit.allow(key)
        if quiet is None:
            return
        if quiet:
            fmt += " (and %d more since the last report)"
            args = (*args, quiet)
        _LOGGER.warning(fmt, *args)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        source = _source(writer)
        if self._closing or task is None:
            await _abandon(writer)
            return
        if len(self._handlers) >= self._max:
            self._warn(
                ("full", ""), "peer port full (%d connections): refused %s", self._max, source
            )
            await _abandon(writer)
            return
        admitted, displaced = self._admission.admit(writer, source)
        if not admitted:
            self._warn(
                ("source", source),
                "peer port: refused a connection from %s, which has %d handshakes open already",
                source,
                self._admission.held_by(source),
            )
            await _abandon(writer)
            return
        if displaced is not None:
            self._warn(
                ("displaced", ""),
                "peer port: %d handshakes open; dropped the oldest of the busiest source for %s",
                len(self._admission),
                source,
            )
            displaced.transport.abort()
        self._handlers.add(task)
        try:
            await self._serve(reader, writer, source)
        finally:
            self._admission.release(writer, source)
            self._handlers.discard(task)

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str
    ) -> None:
        address = _address(writer)
        conn = Connection(Role.RESPONDER, self._key, caps=self._caps, agent=self._agent)

        async def decide(peer: PeerAuthenticated) -> tuple[CloseReason, str] | None:
            candidate = PeerCandidate(
                peer.public_key, peer.fingerprint, peer.mode, peer.agent, peer.caps, address
            )
            if peer.mode is Mode.PAIRING:
                if self._pairing is not None and await _ask(self._pairing, candidate):
                    return None
                return CloseReason.PAIRING_CLOSED, "no pairing window is open"
            if await _ask(self._authorize, candidate):
                return None
            return CloseReason.UNTRUSTED, "your key is not trusted here"

        try:
            established = await run_handshake(conn, reader, writer, decide, self._timeout)
        except LinkError as exc:
            quiet = self._log_limit.allow(("refused", source))
            if quiet is not None:
                more = f" (and {quiet} more from there since the last report)" if quiet else ""
                _LOGGER.info("link from %s refused: %s%s", address, exc, more)
            await _abandon(writer)
            return
        except BaseException:
            await _abandon(writer)
            raise
        finally:
            self._admission.release(writer, source)
        pairing = established.mode is Mode.PAIRING
        peer = PeerInfo.from_established(established, address, trusted=not pairing)
        router = self._pairing_router if pairing else self._router
        session = LinkSession(conn, reader, writer, peer, router=router, config=self._config)
        self._sessions.add(session)
        try:
            session.start()
            if self._on_session is not None and not pairing:
                try:
                    await self._on_session(session)
                except LinkError:
                    pass  # the session ended while the handler ran; nothing to report
                except Exception:
                    # a handler bug closes one session, not the server
                    _LOGGER.exception("session handler failed for %s", address)
                    await session.close(CloseReason.INTERNAL_ERROR)
            await session.wait_closed()
        finally:
            self._sessions.discard(session)
            await session.close(CloseReason.GOING_AWAY)
