"""HTTP/1.1 requests for the CLI's client: h11 over an asyncio stream, one connection each.

Why not aiohttp, which the server runs on: importing its client costs about 0.2 s
(it builds TLS contexts at import, among much else), most of the 0.3 s a command
like ``meshd status`` may take in all (tests/bench/bench_cli.py). h11 (the sans-IO
HTTP/1.1 state machine, python-hyper) imports in milliseconds; this module only
moves its bytes, the way meshd's link core and session split the work. The events
websocket still uses aiohttp, imported only by the commands that follow jobs (see
``meshd.api.client``).

Every failure to talk HTTP (refused, reset, EOF mid-message, a malformed answer, a
timeout) is a :class:`TransportError`; HTTP error statuses are answers, not failures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

# Answers of the local API are small JSON documents (a job list is the largest); a
# body beyond this is a wrong or hostile server, not a slow one.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
READ_CHUNK = 64 * 1024


class TransportError(Exception):
    """No complete HTTP answer: connection refused or lost, bad framing, timeout."""


@dataclass(frozen=True)
class Origin:
    """Where requests go: ``http://HOST:PORT`` plus an optional path prefix."""

    host: str
    port: int
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> Origin:
        """``http://127.0.0.1:6055``, ``http://[::1]:6055/base``; only plain HTTP."""
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise TransportError(f"{url!r}: only http:// URLs are supported")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise TransportError(f"{url!r}: {exc}") from None
        if not parts.hostname:
            raise TransportError(f"{url!r}: no host")
        return cls(parts.hostname, port, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    body: bytes


class _Exchange:
    """One request and its response on a fresh connection (``Connection: close``)."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.conn = h11.Connection(h11.CLIENT)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self, connect_timeout: float) -> None:
        try:
            async with asyncio.timeout(connect_timeout):
                self.reader, self.writer = await asyncio.open_connection(
                    self.origin.host, self.origin.port
                )
        except TimeoutError:
            raise TransportError(f"no connection within {connect_timeout:.0f} s") from None
        except OSError as exc:
            raise TransportError(exc.strerror or str(exc)) from None

    async def send(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes | None
    ) -> None:
        assert self.writer is not None
        all_headers = [
            ("Host", self.origin.authority),
            ("Connection", "close"),
            *headers,
        ]
        if body is not None or method not in ("GET", "HEAD", "DELETE"):
            all_headers.append(("Content-Length", str(len(body or b""))))
        try:
            data = self.conn.send(
                h11.Request(method=method, target=self.origin.prefix + target, headers=all_headers)
            )
            if body:
                data += self.conn.send(h11.Data(data=body))
            data += self.conn.send(h11.EndOfMessage())
            self.writer.write(data)
            await self.writer.drain()
        except h11.LocalProtocolError as exc:
            raise TransportError(f"cannot send the request: {exc}") from None
        except OSError as exc:
            raise TransportError(exc.strerror or str(exc)) from None

    async def next_event(self) -> h11.Event:
        assert self.reader is not None
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise TransportError(f"malformed HTTP answer: {exc}") from None
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Event)
                if isinstance(event, h11.ConnectionClosed):
                    raise TransportError("the connection closed before the answer was complete")
                return event
            try:
                data = await self.reader.read(READ_CHUNK)
            except OSError as exc:
                raise TransportError(exc.strerror or str(exc)) from None
            # b"" is EOF: h11 turns an EOF mid-message into a RemoteProtocolError.
            self.conn.receive_data(data)

    async def head(self) -> h11.Response:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Response):
                return event
            # An InformationalResponse (100 Continue) precedes the real one.

    async def body_chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


@contextlib.asynccontextmanager
async def stream(
    origin: Origin,
    method: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    connect_timeout: float,
) -> AsyncIterator[tuple[h11.Response, AsyncIterator[bytes]]]:
    """Send a request; yield its response head and an iterator over its body."""
    exchange = _Exchange(origin)
    try:
        await exchange.open(connect_timeout)
        await exchange.send(method, target, headers, body)
        yield await exchange.head(), exchange.body_chunks()
    finally:
        await exchange.close()


async def request(
    origin: Origin,
    method: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    connect_timeout: float,
) -> Response:
    """One whole request and response (the caller bounds the time with ``asyncio.timeout``)."""
    async with stream(
        origin, method, target, headers=headers, body=body, connect_timeout=connect_timeout
    ) as (head, chunks):
        received = bytearray()
        async for chunk in chunks:
            received += chunk
            if len(received) > MAX_RESPONSE_BYTES:
                raise TransportError(f"answer larger than {MAX_RESPONSE_BYTES} bytes")
    return Response(head.status_code, head.reason.decode("latin-1"), bytes(received))


async def lines(chunks: AsyncIterator[bytes], *, max_line: int) -> AsyncIterator[bytes]:
    """Split a body into lines (without the ``\\n``); a line over ``max_line`` is cut."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line
        while len(pending) > max_line:
            yield pending[:max_line]
            pending = pending[max_line:]
    if pending:
        yield pending
