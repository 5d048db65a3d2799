"""The asyncio shell around an established ``Connection``: one ``LinkSession`` per peer.

The session only moves bytes and runs handlers; every protocol decision is made by the
sans-IO ``Connection``. It adds what needs a clock or concurrency:

* request/response correlation (``request()`` awaits the reply with the same rid, with
  a timeout) and one-way messages (``send()``). Request ids have the parity of the
  side that chose them (initiator odd, responder even), so a message of a type this
  version does not know can still be told apart: the peer's parity is a request,
  answered ``error(UNSUPPORTED)``; ours is a (bad) answer to one of our requests;
* handlers from a ``Router``: request handlers run concurrently (each in its own task,
  capped), one-way handlers run in arrival order on one dispatcher task. Every request
  gets exactly one answer (its handler's, or an ``error``), so no requester waits for
  longer than its own timeout;
* streams with credit-based flow control (``send_stream()``, ``Router.on_stream``);
* once the stream reader that ran the handshake is empty, reads go straight into the
  connection's frame buffer (``meshd.link.receiver``);
* heartbeats: a ping every ``heartbeat_interval``; a peer silent for ``dead_after``
  seconds is declared dead (``PeerTimeout``) within ``dead_after + tick``;
* one shutdown path: the first fatal error wins, cleanup runs once and synchronously,
  pending requests and streams fail with a ``LinkClosed`` caused by that error.

The reader task never awaits ``drain()``: if both peers blocked on writing while
neither read, they would deadlock. Control replies (pong, credit, errors) are written
without waiting, and a peer that lets our write buffer grow past
``MAX_WRITE_BUFFER`` is cut off instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self, TypeVar, overload

from meshd.link.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Established,
    MessageReceived,
    Role,
    State,
)
from meshd.link.errors import (
    CloseReason,
    ErrorCode,
    LinkClosed,
    LinkError,
    LocalProtocolError,
    PeerTimeout,
    RejectRequest,
    RemoteProtocolError,
    RequestFailed,
    RequestTimeout,
    StreamError,
    close_reason,
)
from meshd.link.handshake import Mode
from meshd.link.hashing import BackgroundSha256
from meshd.link.limits import (
    DEAD_AFTER_INTERVALS,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_HEARTBEAT_INTERVAL,
    MAX_CHUNK_SIZE,
    MAX_STREAMS,
    STREAM_WINDOW,
)
from meshd.link.messages import (
    Error,
    Kind,
    Message,
    Ping,
    Pong,
    StreamAbort,
    StreamChunk,
    StreamEnd,
    StreamOpen,
    StreamWindow,
    UnknownMessage,
)
from meshd.link.receiver import SessionReceiver
from meshd.link.streams import IncomingStream, OutgoingStream, iter_chunks

_LOGGER = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)

# How much to ask the socket for at once; one read holds up to four default chunks.
READ_SIZE: Final = 1024 * 1024

# A peer that stops reading while provoking replies (pings, credit) could grow our write
# buffer without bound; past this many bytes pending we give up on it.
MAX_WRITE_BUFFER: Final = 32 * 1024 * 1024

# The write buffer level at which writers (stream senders) pause in drain(). Large
# enough to keep several chunks in flight on a fast LAN.
WRITE_HIGH_WATER: Final = 4 * 1024 * 1024


# Messages the session answers or consumes itself; handlers cannot take them over.
_INTERNAL_TYPES: Final = (Ping, Pong, StreamOpen, StreamChunk, StreamEnd, StreamAbort, StreamWindow)


# How long closing waits for buffered bytes (the close frame) to reach the peer before
# dropping the connection.
CLOSE_GRACE: Final = 2.0


@dataclass(frozen=True)
class SessionConfig:
    """Timing and concurrency knobs of a session (the daemon maps settings onto these).

    The heartbeat defaults are PROTOCOL.md's (section "Heartbeats and liveness"); the
    daemon's ``heartbeat`` setting (``meshd.config``) has the same default and is
    mapped here with ``from_heartbeat``.
    """

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    dead_after: float = DEFAULT_HEARTBEAT_INTERVAL * DEAD_AFTER_INTERVALS
    request_timeout: float = 30.0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_inflight_requests: int = 64
    max_pending_oneway: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval < self.dead_after:
            raise ValueError("need 0 < heartbeat_interval < dead_after")
        if self.request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if not 0 < self.chunk_size <= min(MAX_CHUNK_SIZE, STREAM_WINDOW // 2):
            raise ValueError("chunk_size must be positive and fit the frame and window")
        if self.max_inflight_requests < 1 or self.max_pending_oneway < 1:
            raise ValueError("concurrency limits must be at least 1")

    @classmethod
    def from_heartbeat(cls, interval: float, **kwargs: Any) -> Self:
        """A config whose peer is dead after DEAD_AFTER_INTERVALS silent ``interval``s."""
        return cls(
            heartbeat_interval=interval, dead_after=interval * DEAD_AFTER_INTERVALS, **kwargs
        )


@dataclass(frozen=True)
class PeerInfo:
    """Who is on the other end of an established session."""

    public_key: bytes
    fingerprint: bytes
    mode: Mode
    version: int
    caps: tuple[str, ...]
    agent: str
    session_id: bytes
    address: str | None
    trusted: bool
    """False for a pairing session: only PRE_TRUST messages are dispatched on it."""

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @classmethod
    def from_established(cls, est: Established, address: str | None, trusted: bool) -> Self:
        return cls(
            public_key=est.public_key,
            fingerprint=est.fingerprint,
            mode=est.mode,
            version=est.version,
            caps=est.caps,
            agent=est.agent,
            session_id=est.session_id,
            address=address,
            trusted=trusted,
        )


Handler = Callable[["LinkSession", Any], Awaitable[Message | None]]
StreamHandler = Callable[["LinkSession", IncomingStream], Awaitable[None]]


class Router:
    """Which coroutine handles which message type / stream kind; shared by many sessions.

    A request handler returns the response message (or raises ``RejectRequest`` to
    answer with an error); a one-way handler returns None. A stream handler consumes
    the ``IncomingStream`` it is given; a stream it leaves unread is aborted.
    """

    def __init__(self) -> None:
        self._handlers: dict[type[Message], Handler] = {}
        self._stream_handlers: dict[str, StreamHandler] = {}

    def on(
        self, message_type: type[M], handler: Callable[[LinkSession, M], Awaitable[Message | None]]
    ) -> None:
        """Handle every received ``message_type`` with ``handler(session, message)``."""
        if message_type.KIND is Kind.RESPONSE:
            raise TypeError(f"{message_type.TYPE} is a response; await request() instead")
        if issubclass(message_type, _INTERNAL_TYPES):
            raise TypeError(f"{message_type.TYPE} is handled by the session itself")
        self._handlers[message_type] = handler

    def on_stream(self, kind: str, handler: StreamHandler) -> None:
        """Handle incoming streams whose ``kind`` matches (e.g. "bundle", "artifact")."""
        self._stream_handlers[kind] = handler

    def handler(self, message_type: type[Message]) -> Handler | None:
        return self._handlers.get(message_type)

    def stream_handler(self, kind: str) -> StreamHandler | None:
        return self._stream_handlers.get(kind)


class LinkSession:
    """An established, authenticated link to one peer. Create via ``connect`` or ``LinkServer``."""

    def __init__(
        self,
        conn: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerInfo,
        *,
        router: Router | None = None,
        config: SessionConfig | None = None,
    ) -> None:
        if conn.state is not State.ESTABLISHED:
            raise LocalProtocolError("a session needs an established connection")
        self.peer = peer
        self.router = router or Router()
        self.config = config or SessionConfig()
        self._conn = conn
        self._reader = reader
        self._writer = writer
        self._pending: dict[int, asyncio.Future[tuple[Message, int]]] = {}
        # Request ids, like stream ids, have the parity of the side that chose them.
        self._next_rid = 1 if conn.role is Role.INITIATOR else 2
        self._peer_rid_parity = 0 if conn.role is Role.INITIATOR else 1
        # Stream ids never collide: the initiator uses odd ids, the responder even ones.
        self._next_sid = 1 if conn.role is Role.INITIATOR else 2
        self._peer_sid_parity = 0 if conn.role is Role.INITIATOR else 1
        self._last_peer_sid = 0
        self._out_streams: dict[int, OutgoingStream] = {}
        self._in_streams: dict[int, IncomingStream] = {}
        self._oneway: asyncio.Queue[Message] = asyncio.Queue(self.config.max_pending_oneway)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inflight = 0
        self._last_rx = time.monotonic()
        self._rx_blocked = False
        self._ping_seq = 0
        self._error: LinkError | None = None
        self._done = asyncio.Event()
        # The cut-off for a peer that does not take our close frame; cancelled once the
        # transport has closed by itself (see wait_closed).
        self._abort_timer: asyncio.TimerHandle | None = None
        self._started = False
        transport = writer.transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start reading, dispatching and heartbeats (``connect``/``LinkServer`` do this)."""
        if self._started:
            return
        self._started = True
        self._spawn(self._read_loop(), "reader")
        self._spawn(self._oneway_loop(), "dispatch")
        self._spawn(self._heartbeat_loop(), "heartbeat")

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def close_error(self) -> LinkError | None:
        """Why the session ended (``LinkClosed`` for a clean close), None while open."""
        return self._error

    async def close(self, reason: CloseReason = CloseReason.NORMAL, message: str = "") -> None:
        """Tell the peer why, close the socket, stop every task; idempotent."""
        self._shutdown(
            LinkClosed(f"closed locally: {message or reason.name.lower()}", reason=reason),
            notify=reason,
            message=message,
        )
        await self.wait_closed()

    async def wait_closed(self) -> LinkError:
        """Wait until the session has ended and cleaned up; return the reason."""
        await self._done.wait()
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await self._writer.wait_closed()
        except TimeoutError:
            # The peer is not taking our last bytes; do not wait for it forever.
            self._writer.transport.abort()
        except OSError:
            pass
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        assert self._error is not None
        return self._error

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- sending ----------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Send a one-way message and wait until the transport accepted it (back-pressure)."""
        if message.KIND is not Kind.ONEWAY:
            raise LocalProtocolError(f"{message.TYPE} is a {message.KIND.value}; use request()")
        if isinstance(message, _INTERNAL_TYPES):
            raise LocalProtocolError(f"{message.TYPE} is sent by the session itself")
        await self._send(message)

    @overload
    async def request(
        self,
        message: Message,
        expect: type[R],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> R: ...
    @overload
    async def request(
        self,
        message: Message,
        expect: None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message: ...

    async def request(
        self,
        message: Message,
        expect: type[Message] | None = None,
        *,
        # The request's own deadline: on expiry it raises RequestTimeout and forgets the
        # rid, so a late answer is dropped; a caller's cancel scope cannot do that.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message:
        """Send a request and return the peer's response.

        Raises ``RequestFailed`` if the peer answered with an error, ``RequestTimeout``
        after ``timeout`` (default ``config.request_timeout``), ``LinkClosed`` if the
        session ends first, and ``RemoteProtocolError`` if the reply is not ``expect``.
        """
        if message.KIND is not Kind.REQUEST:
            raise LocalProtocolError(f"{message.TYPE} is not a request")
        self._check_open()
        rid = self._next_rid
        self._next_rid += 2
        future: asyncio.Future[tuple[Message, int]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._write(self._conn.send(message, rid))
            await self._drain()
            try:
                async with asyncio.timeout(timeout or self.config.request_timeout):
                    reply, _ = await future
            except TimeoutError:
                raise RequestTimeout(f"{message.TYPE} got no answer in time") from None
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply, Error):
            raise RequestFailed(reply.code, reply.message)
        if expect is not None and not isinstance(reply, expect):
            raise RemoteProtocolError(f"{message.TYPE} answered with {reply.TYPE}")
        return reply

    async def send_stream(
        self,
        source: bytes | bytearray | memoryview | AsyncIterator[bytes],
        *,
        kind: str,
        name: str = "",
        size: int | None = None,
        meta: dict[str, str] | None = None,
    ) -> bytes:
        """Stream ``source`` to the peer in chunks, respecting its credit; return the SHA-256.

        Memory stays bounded: buffers are sliced, iterators are consumed one item at a
        time, and we wait for credit and for the transport to drain. If the source
        fails or we are cancelled, the peer gets ``stream_abort``.
        """
        self._check_open()
        if size is None and isinstance(source, bytes | bytearray | memoryview):
            size = memoryview(source).nbytes
        sid = self._next_sid
        self._next_sid += 2
        out = OutgoingStream(sid)
        self._out_streams[sid] = out
        hasher = BackgroundSha256()
        finished = False
        try:
            await self._send(StreamOpen(sid, kind, name, size, meta or {}))
            async for piece in iter_chunks(source, self.config.chunk_size):
                await out.take(len(piece))
                hasher.update(piece)
                self._check_open()
                self._write(self._conn.send(StreamChunk(sid, piece)))
                await self._drain()
                if hasher.pending > STREAM_WINDOW:
                    await hasher.settle()  # pieces are pinned until hashed: bound them
            digest = await hasher.digest()
            await self._send(StreamEnd(sid, digest))
            finished = True
            return digest
        finally:
            self._out_streams.pop(sid, None)
            hasher.discard()
            if not finished and not self.closed and out.error is None:
                with contextlib.suppress(LinkError, OSError, RuntimeError):
                    self._write(self._conn.send(StreamAbort(sid, "sender gave up")))

    async def send_file(
        self, path: Path, *, kind: str, name: str = "", meta: dict[str, str] | None = None
    ) -> bytes:
        """Stream a file (read in a worker thread, one chunk at a time)."""
        size = (await asyncio.to_thread(path.stat)).st_size
        return await self.send_stream(
            _file_chunks(path, self.config.chunk_size),
            kind=kind,
            name=name or path.name,
            size=size,
            meta=meta,
        )

    async def _send(self, message: Message, rid: int = 0) -> None:
        self._check_open()
        self._write(self._conn.send(message, rid))
        await self._drain()

    def _write(self, data: bytes | bytearray) -> None:
        """Put bytes on the transport. Sealing and writing happen with no await between,
        so frames go out in counter order."""
        if not data:
            return
        self._writer.write(data)
        if self._writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self._shutdown(
                LinkClosed(
                    "peer is not reading; write buffer overflow", reason=CloseReason.OVERLOAD
                ),
                notify=None,
                abort=True,
            )
            self._check_open()

    async def _drain(self) -> None:
        """Wait for the transport; a peer that takes longer than dead_after is dead."""
        try:
            async with asyncio.timeout(self.config.dead_after):
                await self._writer.drain()
        except TimeoutError:
            self._shutdown(PeerTimeout("peer stopped reading"), notify=None, abort=True)
        except (ConnectionError, OSError) as exc:
            self._shutdown(
                LinkClosed(
                    f"connection lost: {exc}", reason=CloseReason.CONNECTION_LOST, by_peer=True
                ),
                notify=None,
            )
        self._check_open()

    def _control(self, message: Message) -> None:
        """Send a session-internal reply without waiting (see the module docstring)."""
        if self.closed:
            return
        try:
            self._write(self._conn.send(message))
        except LinkError as exc:
            self._shutdown(exc, notify=None)

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._closed_error()

    def _closed_error(self) -> LinkClosed:
        error = self._error
        assert error is not None
        if isinstance(error, LinkClosed):
            by_peer = error.by_peer
        else:
            by_peer = isinstance(error, RemoteProtocolError)
        closed = LinkClosed(f"session closed: {error}", reason=error.reason, by_peer=by_peer)
        closed.__cause__ = error
        return closed

    # -- shutdown ---------------------------------------------------------------------

    def _shutdown(
        self,
        error: LinkError,
        *,
        notify: CloseReason | None,
        message: str = "",
        abort: bool = False,
    ) -> None:
        """End the session: first error wins, runs once, never awaits.

        ``notify`` is the close reason to send the peer (None: send nothing, e.g. the
        connection is gone); ``abort`` drops unsent bytes at once, for a peer that does
        not read (flushing would never finish).
        """
        if self._error is not None:
            return
        self._error = error
        if error.reason not in (
            CloseReason.NORMAL,
            CloseReason.GOING_AWAY,
            CloseReason.PAIRING_COMPLETE,
        ):
            _LOGGER.info("link to %s closed: %s", self.peer.fingerprint_hex[:16], error)
        # close() also seals after a remote protocol error (our direction is intact).
        farewell: bytes | bytearray = b""
        with contextlib.suppress(LinkError):
            farewell = self._conn.close(notify if notify is not None else error.reason, message)
        if notify is not None and not abort and farewell:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write(farewell)
        transport = self._writer.transport
        if abort:
            transport.abort()
        else:
            # transport.close() flushes what is buffered (the close frame) first; a peer
            # that does not take it within CLOSE_GRACE is cut off.
            self._writer.close()
            self._abort_timer = asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._closed_error())
        for incoming in self._in_streams.values():
            incoming.fail(self._closed_error())
        for outgoing in self._out_streams.values():
            outgoing.fail(self._closed_error())
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._done.set()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"link-{self.peer.fingerprint_hex[:8]}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- receiving --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        receiver: SessionReceiver | None = None
        try:
            while True:
                event = self._conn.next_event()
                if event is NEED_DATA:
                    if receiver is not None:
                        more = await receiver.wait()
                        self._last_rx = time.monotonic()
                        if not more:
                            self._conn.receive_data(b"")  # EOF
                        continue
                    # Until the stream reader is empty, read through it; then read
                    # into the frame buffer directly (meshd.link.receiver).
                    data = await self._reader.read(READ_SIZE)
                    self._last_rx = time.monotonic()
                    self._conn.receive_data(data)
                    if 0 < len(data) < READ_SIZE and not self._reader.at_eof():
                        receiver = SessionReceiver.install(self._conn, self._writer)
                elif isinstance(event, MessageReceived):
                    await self._dispatch(event)
                elif isinstance(event, ConnectionClosed):
                    self._shutdown(
                        LinkClosed(
                            f"peer closed the link: {event.message or event.reason}",
                            reason=close_reason(event.reason),
                            by_peer=True,
                        ),
                        notify=None,
                    )
                    return
                else:
                    raise RemoteProtocolError(f"unexpected event {event!r}")
        except LinkError as exc:
            notify = exc.reason if isinstance(exc, RemoteProtocolError) else None
            self._shutdown(exc, notify=notify)
        except (ConnectionError, OSError) as exc:
            self._shutdown(
                LinkClosed(
                    f"connection lost: {exc}", reason=CloseReason.CONNECTION_LOST, by_peer=True
                ),
                notify=None,
            )

    async def _dispatch(self, event: MessageReceived) -> None:
        message, rid = event.message, event.rid
        if isinstance(message, UnknownMessage):
            self._on_unknown(message, rid)
            return
        if not self.peer.trusted and not message.PRE_TRUST:
            if message.KIND is Kind.REQUEST:
                self._control_reply(Error(ErrorCode.FORBIDDEN, "not trusted"), rid)
            return
        if message.KIND is Kind.RESPONSE:
            future = self._pending.get(rid)
            if future is not None and not future.done():
                future.set_result((message, rid))
            return
        if isinstance(message, Ping):
            self._control(Pong(message.seq))
        elif isinstance(message, Pong):
            pass
        elif isinstance(message, StreamOpen | StreamChunk | StreamEnd | StreamAbort | StreamWindow):
            self._on_stream_message(message)
        elif message.KIND is Kind.REQUEST:
            self._start_request(message, rid)
        else:
            self._rx_blocked = True
            try:
                await self._oneway.put(message)
            finally:
                self._rx_blocked = False
                self._last_rx = time.monotonic()

    def _on_unknown(self, message: UnknownMessage, rid: int) -> None:
        """A type this version does not know: answer it if it is a request, else drop it."""
        if rid == 0:
            _LOGGER.debug("ignoring unknown one-way message %r", message.type)
        elif rid % 2 == self._peer_rid_parity:
            self._control_reply(
                Error(ErrorCode.UNSUPPORTED, f"unknown request type {message.type!r}"), rid
            )
        else:
            future = self._pending.get(rid)
            if future is not None and not future.done():
                future.set_exception(
                    RemoteProtocolError(f"request answered with unknown type {message.type!r}")
                )

    def _control_reply(self, message: Message, rid: int) -> None:
        if self.closed:
            return
        try:
            self._write(self._conn.send(message, rid))
        except LinkError as exc:
            self._shutdown(exc, notify=None)

    def _start_request(self, message: Message, rid: int) -> None:
        handler = self.router.handler(type(message))
        if handler is None:
            self._control_reply(Error(ErrorCode.UNSUPPORTED, f"no handler for {message.TYPE}"), rid)
        elif self._inflight >= self.config.max_inflight_requests:
            self._control_reply(Error(ErrorCode.BUSY, "too many requests in flight"), rid)
        else:
            self._inflight += 1
            self._spawn(self._serve_request(handler, message, rid), f"req-{message.TYPE}")

    async def _serve_request(self, handler: Handler, message: Message, rid: int) -> None:
        try:
            try:
                reply = await handler(self, message)
            except RejectRequest as exc:
                reply = Error(exc.code, exc.message)
            except LinkError as exc:
                if self.closed:
                    return
                # e.g. a stream the handler sent was aborted: the request still gets
                # its answer, so the requester never waits on it.
                _LOGGER.info("handler for %s gave up: %s", message.TYPE, exc)
                reply = Error(ErrorCode.INTERNAL, f"handler gave up: {exc}")
            except Exception:
                # a handler bug answers "internal", never kills the link
                _LOGGER.exception("handler for %s failed", message.TYPE)
                reply = Error(ErrorCode.INTERNAL, "internal error")
            if reply is None or reply.KIND is not Kind.RESPONSE:
                _LOGGER.error("handler for %s returned %r, not a response", message.TYPE, reply)
                reply = Error(ErrorCode.INTERNAL, "handler returned no response")
            with contextlib.suppress(LinkError):
                await self._send(reply, rid)
        finally:
            self._inflight -= 1

    async def _oneway_loop(self) -> None:
        while True:
            message = await self._oneway.get()
            handler = self.router.handler(type(message))
            if handler is None:
                _LOGGER.debug("no handler for %s; dropped", message.TYPE)
                continue
            try:
                await handler(self, message)
            except LinkError:
                if self.closed:
                    return
                _LOGGER.warning("handler for %s raised", message.TYPE, exc_info=True)
            except Exception:
                # one bad handler call must not end the session
                _LOGGER.exception("handler for %s failed", message.TYPE)

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        tick = min(cfg.heartbeat_interval, cfg.dead_after / 4)
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            silent = now - self._last_rx
            if not self._in_streams and not self._out_streams:
                # No stream under way: give back what a burst grew (cheap if nothing
                # did; what a frame in progress holds is kept).
                self._conn.trim_buffers()
            if silent > cfg.dead_after and not self._rx_blocked:
                self._shutdown(
                    PeerTimeout(f"peer silent for {silent:.1f}s"),
                    notify=CloseReason.HEARTBEAT_TIMEOUT,
                )
                return
            if now - last_ping >= cfg.heartbeat_interval:
                last_ping = now
                self._ping_seq += 1
                self._control(Ping(self._ping_seq))

    # -- streams ----------------------------------------------------------------------

    def _on_stream_message(
        self, message: StreamOpen | StreamChunk | StreamEnd | StreamAbort | StreamWindow
    ) -> None:
        if isinstance(message, StreamWindow):
            out = self._out_streams.get(message.sid)
            if out is not None:
                out.add_credit(message.credit)
            return
        if isinstance(message, StreamOpen):
            self._open_incoming(message)
            return
        if isinstance(message, StreamAbort) and message.sid % 2 != self._peer_sid_parity:
            out = self._out_streams.get(message.sid)
            if out is not None:
                out.fail(StreamError(f"peer aborted stream {message.sid}: {message.reason}"))
            return
        incoming = self._in_streams.get(message.sid)
        if incoming is None:
            if message.sid % 2 == self._peer_sid_parity and message.sid <= self._last_peer_sid:
                return  # a stream we already ended or aborted: in-flight leftovers
            raise RemoteProtocolError(f"stream {message.sid} was never opened")
        if isinstance(message, StreamChunk):
            incoming.feed(bytes(message.data))
        elif isinstance(message, StreamEnd):
            del self._in_streams[message.sid]
            incoming.end(message.sha256)
        else:
            del self._in_streams[message.sid]
            incoming.fail(StreamError(f"sender aborted stream {message.sid}: {message.reason}"))

    def _open_incoming(self, message: StreamOpen) -> None:
        sid = message.sid
        if sid % 2 != self._peer_sid_parity or sid <= self._last_peer_sid:
            raise RemoteProtocolError(f"stream id {sid} out of sequence")
        if len(self._in_streams) >= MAX_STREAMS:
            raise RemoteProtocolError("too many concurrent streams", reason=CloseReason.OVERLOAD)
        self._last_peer_sid = sid
        handler = self.router.stream_handler(message.kind)
        if handler is None:
            self._control(StreamAbort(sid, f"no handler for stream kind {message.kind!r}"))
            return
        incoming = IncomingStream(message, self._grant)
        self._in_streams[sid] = incoming
        self._spawn(self._serve_stream(handler, incoming), f"stream-{sid}")

    def _grant(self, sid: int, credit: int) -> None:
        self._control(StreamWindow(sid, credit))

    async def _serve_stream(self, handler: StreamHandler, incoming: IncomingStream) -> None:
        reason = ""
        try:
            await handler(self, incoming)
        except LinkError as exc:
            reason = str(exc)
        except Exception:
            # a stream handler bug aborts that stream only
            _LOGGER.exception("stream handler for %s failed", incoming.kind)
            reason = "receiver failed"
        if not incoming.finished:
            # The handler stopped early: tell the sender, forget the stream.
            self._in_streams.pop(incoming.sid, None)
            incoming.fail(StreamError("abandoned by the receiver"))
            self._control(StreamAbort(incoming.sid, reason or "receiver stopped reading"))


async def _file_chunks(path: Path, chunk_size: int) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, chunk_size):
            yield chunk
    finally:
        handle.close()
