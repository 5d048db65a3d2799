"""The session's direct receive path (meshd.link.receiver) over real sockets: it takes
over from the stream reader without losing or reordering a byte, and treats hostile
bytes, hang-ups and floods exactly as the stream path did."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import pytest

from meshd.link import (
    CloseReason,
    IncomingStream,
    LinkSession,
    RemoteProtocolError,
    Router,
    hashing,
)
from meshd.link.limits import STREAM_WINDOW
from meshd.link.messages import CachePut, Ping, Pong, StreamChunk, StreamEnd, StreamOpen
from meshd.link.receiver import HIGH_WATER, MIN_READ, READ_CHUNK, SessionReceiver
from meshd.link.session import SessionConfig
from meshd.mesh.security.identity import Identity

from .conftest import FAST, Harness
from .test_conformance import RawPeer, closed_with, raw_client


async def _poll(condition: object, what: str, timeout: float = 10.0) -> None:
    assert callable(condition)
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def _taken_over(
    harness: Harness, bob: Identity, alice: Identity, **server_kwargs: object
) -> tuple[RawPeer, LinkSession]:
    """A raw client and the server's session, once the server reads directly."""
    sessions: asyncio.Queue[LinkSession] = asyncio.Queue()

    async def on_session(session: LinkSession) -> None:
        await sessions.put(session)

    server = await harness.server(bob, on_session=on_session, **server_kwargs)
    peer = await raw_client(harness, server.port, alice)
    session = await asyncio.wait_for(sessions.get(), 10)
    peer.writer.write(peer.conn.send(Ping(1)))
    await peer.until(Pong)
    protocol = session._writer.transport.get_protocol()
    assert isinstance(protocol, SessionReceiver)  # the ping's read handed over
    return peer, session


async def _trickle(peer: RawPeer, data: bytes, rng: random.Random, biggest: int) -> None:
    pos = 0
    while pos < len(data):
        step = rng.randint(1, biggest)
        peer.writer.write(data[pos : pos + step])
        await peer.writer.drain()
        pos += step


@pytest.mark.parametrize("offload", [True, False], ids=["hash-thread", "hash-inline"])
async def test_a_stream_in_ragged_pieces_arrives_whole(
    harness: Harness, alice: Identity, bob: Identity, offload: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashing, "OFFLOAD", offload)
    got: asyncio.Queue[tuple[bytes, bytes | None]] = asyncio.Queue()

    async def collect(_s: LinkSession, stream: IncomingStream) -> None:
        data = await stream.read_all(1 << 24)
        await got.put((data, stream.digest))

    router = Router()
    router.on_stream("bundle", collect)
    peer, _session = await _taken_over(harness, bob, alice, router=router)
    rng = random.Random(7)
    payload = os.urandom(700_000)
    chunks = [payload[:1], payload[1:3000], payload[3000:300_000], payload[300_000:]]
    wire = peer.conn.send(StreamOpen(1, "bundle", "n", len(payload)))
    for chunk in chunks:
        wire += peer.conn.send(StreamChunk(1, chunk))
    wire += peer.conn.send(StreamEnd(1, hashlib.sha256(payload).digest()))
    head = 5000  # the first frames one byte at a time, the rest in ragged pieces
    await _trickle(peer, bytes(wire[:head]), rng, 1)
    await _trickle(peer, bytes(wire[head:]), rng, 3 * READ_CHUNK)
    data, digest = await asyncio.wait_for(got.get(), 20)
    assert data == payload and digest == hashlib.sha256(payload).digest()


async def test_a_tampered_frame_after_takeover_gets_close_protocol_error(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    peer, session = await _taken_over(harness, bob, alice)
    frame = bytearray(peer.conn.send(Ping(2)))
    frame[10] ^= 0x20
    await _trickle(peer, bytes(frame), random.Random(1), 3)
    assert closed_with(await peer.events()) == CloseReason.PROTOCOL_ERROR
    error = await asyncio.wait_for(session.wait_closed(), 10)
    assert isinstance(error, RemoteProtocolError) and "authentication" in str(error)


async def test_an_oversize_length_after_takeover_is_refused_from_its_prefix(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    peer, session = await _taken_over(harness, bob, alice)
    peer.writer.write((2**31).to_bytes(4, "big"))  # no body needed to be refused
    assert closed_with(await peer.events()) == CloseReason.PROTOCOL_ERROR
    error = await asyncio.wait_for(session.wait_closed(), 10)
    assert isinstance(error, RemoteProtocolError) and "exceeds limit" in str(error)


async def test_hanging_up_inside_a_frame_after_takeover_is_a_protocol_error(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    peer, session = await _taken_over(harness, bob, alice)
    frame = peer.conn.send(Ping(3))
    peer.writer.write(frame[: len(frame) // 2])
    peer.writer.write_eof()
    error = await asyncio.wait_for(session.wait_closed(), 10)
    assert isinstance(error, RemoteProtocolError) and "inside a frame" in str(error)


async def test_a_clean_hang_up_after_takeover_closes_the_session(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    peer, session = await _taken_over(harness, bob, alice)
    peer.writer.write_eof()
    error = await asyncio.wait_for(session.wait_closed(), 10)
    assert error.reason is CloseReason.CONNECTION_LOST and not isinstance(
        error, RemoteProtocolError
    )


async def test_reading_pauses_while_the_session_cannot_keep_up(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    release = asyncio.Event()
    handled: list[int] = []

    async def slow(_s: LinkSession, message: CachePut) -> None:
        await release.wait()
        handled.append(len(message.data))

    router = Router()
    router.on(CachePut, slow)
    config = SessionConfig(
        heartbeat_interval=FAST.heartbeat_interval,
        dead_after=FAST.dead_after,
        max_pending_oneway=1,
    )
    peer, session = await _taken_over(harness, bob, alice, router=router, config=config)
    entry = os.urandom(900 * 1024)
    count = 30  # ~26 MiB: past what the server may hold unread plus both kernel buffers
    sender = harness.spawn(
        _send_all(peer, [CachePut("job", f"key{i}", entry) for i in range(count)])
    )
    transport = session._writer.transport
    await _poll(lambda: not transport.is_reading(), "reading paused")
    assert session._conn.buffered <= HIGH_WATER + READ_CHUNK
    assert not sender.done()  # the peer is held back by TCP, not buffered by us
    release.set()
    await asyncio.wait_for(sender, 30)
    await _poll(lambda: len(handled) == count, "every entry handled", timeout=30)
    assert not session.closed


async def _send_all(peer: RawPeer, messages: list[CachePut]) -> None:
    for message in messages:
        peer.writer.write(peer.conn.send(message))
        await peer.writer.drain()


async def test_an_idle_session_gives_back_what_a_stream_grew(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    drained = asyncio.Event()

    async def drain(_s: LinkSession, stream: IncomingStream) -> None:
        async for _chunk in stream:
            pass
        drained.set()

    router = Router()
    router.on_stream("bundle", drain)
    peer, session = await _taken_over(harness, bob, alice, router=router)
    conn = session._conn
    payload = os.urandom(STREAM_WINDOW)  # all the credit a raw peer (no credit) may use
    wire = peer.conn.send(StreamOpen(1, "bundle", "n", len(payload)))
    for start in range(0, len(payload), 512 * 1024):
        wire += peer.conn.send(StreamChunk(1, payload[start : start + 512 * 1024]))
    wire += peer.conn.send(StreamEnd(1, hashlib.sha256(payload).digest()))
    peaks: list[int] = []

    async def watch() -> None:
        while True:
            peaks.append(conn._buffer.capacity)
            await asyncio.sleep(0)

    watcher = harness.spawn(watch())
    peer.writer.write(bytes(wire))  # one burst: the server's buffer grows to keep up
    await asyncio.wait_for(drained.wait(), 20)
    watcher.cancel()
    assert max(peaks) >= READ_CHUNK  # reads grew to the largest offer
    # The raw peer does not ping; our own pings' answers are all the traffic now.
    await _poll(lambda: conn._buffer.capacity <= MIN_READ, "the buffer shrank back")
    assert not session.closed


@pytest.mark.parametrize("offload", [True, False], ids=["hash-thread", "hash-inline"])
async def test_send_stream_digest_both_ways(
    harness: Harness, alice: Identity, bob: Identity, offload: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole session, both ends in this process, hashing on the thread or inline."""
    monkeypatch.setattr(hashing, "OFFLOAD", offload)
    got: asyncio.Queue[tuple[bytes, bytes | None]] = asyncio.Queue()

    async def collect(_s: LinkSession, stream: IncomingStream) -> None:
        await got.put((await stream.read_all(1 << 24), stream.digest))

    router = Router()
    router.on_stream("bundle", collect)
    server = await harness.server(bob, router=router)
    client = await harness.connect(alice, server.port)
    payload = os.urandom(5 * 1024 * 1024 + 3)
    digest = await client.send_stream(payload, kind="bundle")
    data, received = await asyncio.wait_for(got.get(), 20)
    assert digest == received == hashlib.sha256(payload).digest() and data == payload
