"""Session-level caps, each refused one step past its limit."""

from __future__ import annotations

import asyncio
import socket

import pytest

from meshd.link import (
    CloseReason,
    ErrorCode,
    IncomingStream,
    LinkSession,
    RemoteProtocolError,
    RequestFailed,
    Router,
    SessionConfig,
    StreamError,
)
from meshd.link import session as session_mod
from meshd.link.connection import Connection, Role
from meshd.link.errors import LinkClosed
from meshd.link.handshake import Payload
from meshd.link.limits import MAX_CAPS, MAX_STREAMS
from meshd.link.messages import HaveQuery, HaveReply, Ping, StreamOpen
from meshd.link.server import run_handshake
from meshd.mesh.security.identity import Identity

from .conftest import FAST, LOOPBACK, Harness
from .peers import accept_all


async def _pair(
    harness: Harness, server_id: Identity, client_id: Identity, **server_kwargs: object
) -> tuple[LinkSession, LinkSession]:
    accepted: asyncio.Queue[LinkSession] = asyncio.Queue()

    async def on_session(session: LinkSession) -> None:
        await accepted.put(session)

    server = await harness.server(server_id, on_session=on_session, **server_kwargs)
    client = await harness.connect(client_id, server.port)
    return client, await asyncio.wait_for(accepted.get(), 5)


async def test_max_streams(harness: Harness, alice: Identity, bob: Identity) -> None:
    async def never_reads(_s: LinkSession, stream: IncomingStream) -> None:
        await asyncio.Event().wait()

    router = Router()
    router.on_stream("bundle", never_reads)
    client, server = await _pair(harness, bob, alice, router=router)
    for i in range(MAX_STREAMS):
        client._writer.write(client._conn.send(StreamOpen(2 * i + 1, "bundle")))
    await asyncio.sleep(0.2)
    assert not server.closed  # MAX_STREAMS open streams are fine
    client._writer.write(client._conn.send(StreamOpen(2 * MAX_STREAMS + 1, "bundle")))
    error = await asyncio.wait_for(server.wait_closed(), 5)
    assert isinstance(error, RemoteProtocolError) and error.reason is CloseReason.OVERLOAD


async def test_max_inflight_requests(harness: Harness, alice: Identity, bob: Identity) -> None:
    release = asyncio.Event()

    async def stall(_s: LinkSession, m: HaveQuery) -> HaveReply:
        await release.wait()
        return HaveReply(())

    router = Router()
    router.on(HaveQuery, stall)
    config = SessionConfig(
        heartbeat_interval=FAST.heartbeat_interval, dead_after=FAST.dead_after,
        max_inflight_requests=1,
    )  # fmt: skip
    client, _server = await _pair(harness, bob, alice, router=router, config=config)
    first = asyncio.ensure_future(client.request(HaveQuery(())))
    await asyncio.sleep(0.1)
    with pytest.raises(RequestFailed) as info:
        await client.request(HaveQuery(()))
    assert info.value.code == ErrorCode.BUSY
    release.set()
    assert await first == HaveReply(())


async def test_handshake_timeout(harness: Harness, bob: Identity) -> None:
    server = await harness.server(bob, handshake_timeout=0.3)
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # server hung up
    finally:
        writer.close()


async def test_max_connections(harness: Harness, bob: Identity) -> None:
    server = await harness.server(bob, max_connections=1)
    _r1, w1 = await asyncio.open_connection(LOOPBACK, server.port)
    await asyncio.sleep(0.1)
    r2, w2 = await asyncio.open_connection(LOOPBACK, server.port)
    try:
        assert await asyncio.wait_for(r2.read(), 5) == b""  # refused at once
    finally:
        w1.close()
        w2.close()


async def test_peer_that_never_reads_is_cut_off(
    harness: Harness, alice: Identity, bob: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer flooding pings while never reading our pongs must not grow our buffer."""
    monkeypatch.setattr(session_mod, "MAX_WRITE_BUFFER", 128 * 1024)
    accepted: asyncio.Queue[LinkSession] = asyncio.Queue()

    async def on_session(session: LinkSession) -> None:
        await accepted.put(session)

    server = await harness.server(bob, on_session=on_session)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((LOOPBACK, server.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        conn = Connection(Role.INITIATOR, alice.private_key)
        await run_handshake(conn, reader, writer, accept_all)
        session = await asyncio.wait_for(accepted.get(), 5)
        # Small kernel buffers on both ends, so the pongs pile up in the transport.
        server_sock = session._writer.get_extra_info("socket")
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        for batch in range(20):
            writer.write(b"".join(conn.send(Ping(batch * 10_000 + i)) for i in range(10_000)))
            await asyncio.sleep(0)
            if session.closed:
                break
        error = await asyncio.wait_for(session.wait_closed(), 20)
        assert isinstance(error, LinkClosed) and error.reason is CloseReason.OVERLOAD
    finally:
        writer.close()


def test_handshake_payload_caps() -> None:
    import msgpack

    def payload(caps: list[str]) -> bytes:
        body = {"id": b"i" * 32, "sig": b"s" * 64, "caps": caps, "agent": ""}
        return msgpack.packb(body, use_bin_type=True)

    Payload.parse(payload([f"c{i}" for i in range(MAX_CAPS)]))
    with pytest.raises(RemoteProtocolError):
        Payload.parse(payload([f"c{i}" for i in range(MAX_CAPS + 1)]))


async def test_stream_digest_mismatch_is_reported() -> None:
    grants: list[tuple[int, int]] = []
    stream = IncomingStream(StreamOpen(1, "bundle"), lambda sid, n: grants.append((sid, n)))
    stream.feed(b"hello")
    stream.end(b"\x00" * 32)
    got: list[bytes] = []
    with pytest.raises(StreamError, match="mismatch"):
        async for chunk in stream:
            got.append(chunk)
    assert got == [b"hello"]
