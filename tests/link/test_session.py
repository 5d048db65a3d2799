"""Two real sessions on 127.0.0.1: requests, one-way messages, streams, heartbeats,
closing, and hostile bytes from a proxy in the middle."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

import msgpack
import pytest

from meshd.link import (
    CloseReason,
    ErrorCode,
    IncomingStream,
    LinkClosed,
    LinkSession,
    PeerTimeout,
    RejectRequest,
    RemoteProtocolError,
    RequestFailed,
    RequestTimeout,
    Router,
    SessionConfig,
    StreamError,
)
from meshd.link.limits import DEFAULT_CHUNK_SIZE, MAX_FRAME, STREAM_WINDOW
from meshd.link.messages import (
    CompileAccept,
    CompileRequest,
    HaveQuery,
    HaveReply,
    LogLine,
    StreamChunk,
    StreamOpen,
)
from meshd.mesh.security.identity import Identity

from .conftest import Harness
from .peers import FIRST_SESSION_FRAME, frame_proxy, silent_server

DIGEST = hashlib.sha256(b"x").digest()


async def echo_have(_session: LinkSession, message: HaveQuery) -> HaveReply:
    return HaveReply(message.digests)


async def pair_up(
    harness: Harness,
    server_id: Identity,
    client_id: Identity,
    router: Router | None = None,
    client_router: Router | None = None,
) -> tuple[LinkSession, LinkSession]:
    """(client session, server session)."""
    accepted: asyncio.Queue[LinkSession] = asyncio.Queue()

    async def on_session(session: LinkSession) -> None:
        await accepted.put(session)

    server = await harness.server(server_id, router=router, on_session=on_session)
    client = await harness.connect(client_id, server.port, router=client_router)
    return client, await asyncio.wait_for(accepted.get(), 5)


# -- requests and one-way messages ------------------------------------------------------


async def test_request_reply(harness: Harness, alice: Identity, bob: Identity) -> None:
    router = Router()
    router.on(HaveQuery, echo_have)
    client, server = await pair_up(harness, bob, alice, router)
    reply = await client.request(HaveQuery((DIGEST,)), HaveReply)
    assert reply == HaveReply((DIGEST,))
    assert client.peer.fingerprint == bob.fingerprint
    assert server.peer.fingerprint == alice.fingerprint
    assert client.peer.session_id == server.peer.session_id


async def test_concurrent_requests_are_correlated(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    async def slow_echo(_s: LinkSession, m: HaveQuery) -> HaveReply:
        await asyncio.sleep(random.random() / 20)
        return HaveReply(m.digests)

    router = Router()
    router.on(HaveQuery, slow_echo)
    client, _ = await pair_up(harness, bob, alice, router)
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(40)]
    replies = await asyncio.gather(*(client.request(HaveQuery((d,)), HaveReply) for d in digests))
    assert [r.missing[0] for r in replies] == digests


async def test_error_replies(harness: Harness, alice: Identity, bob: Identity) -> None:
    async def reject(_s: LinkSession, m: CompileRequest) -> CompileAccept:
        raise RejectRequest(ErrorCode.FORBIDDEN, "you may not send work")

    async def crash(_s: LinkSession, m: HaveQuery) -> HaveReply:
        raise ZeroDivisionError

    router = Router()
    router.on(CompileRequest, reject)
    router.on(HaveQuery, crash)
    client, server = await pair_up(harness, bob, alice, router)
    with pytest.raises(RequestFailed) as info:
        await client.request(CompileRequest("j1", "a.yaml", "2026.6.5", DIGEST, 1))
    assert info.value.code == ErrorCode.FORBIDDEN and "may not" in info.value.detail
    with pytest.raises(RequestFailed) as info:
        await client.request(HaveQuery(()))
    assert info.value.code == ErrorCode.INTERNAL
    # Nobody handles have_query on the client side: the server gets UNSUPPORTED.
    with pytest.raises(RequestFailed) as info:
        await server.request(HaveQuery(()))
    assert info.value.code == ErrorCode.UNSUPPORTED
    assert not client.closed


async def test_request_timeout_leaves_session_usable(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    release = asyncio.Event()

    async def stall(_s: LinkSession, m: HaveQuery) -> HaveReply:
        if not m.digests:
            await release.wait()
        return HaveReply(m.digests)

    router = Router()
    router.on(HaveQuery, stall)
    client, _ = await pair_up(harness, bob, alice, router)
    with pytest.raises(RequestTimeout):
        await client.request(HaveQuery(()), timeout=0.2)
    release.set()
    assert await client.request(HaveQuery((DIGEST,)), HaveReply) == HaveReply((DIGEST,))


async def test_cancelled_request_is_not_swallowed(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    async def never(_s: LinkSession, m: HaveQuery) -> HaveReply:
        await asyncio.Event().wait()
        raise AssertionError

    router = Router()
    router.on(HaveQuery, never)
    client, _ = await pair_up(harness, bob, alice, router)
    task = asyncio.ensure_future(client.request(HaveQuery(())))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert not client.closed
    assert client._pending == {}


async def test_one_way_messages_arrive_in_order(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    lines: list[str] = []
    done = asyncio.Event()

    async def on_line(_s: LinkSession, m: LogLine) -> None:
        lines.append(m.line)
        if len(lines) == 200:
            done.set()

    router = Router()
    router.on(LogLine, on_line)
    client, _ = await pair_up(harness, bob, alice, router)
    for i in range(200):
        await client.send(LogLine("job", f"line {i}"))
    await asyncio.wait_for(done.wait(), 5)
    assert lines == [f"line {i}" for i in range(200)]


async def test_unknown_message_type_is_ignored(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    router = Router()
    router.on(HaveQuery, echo_have)
    client, server = await pair_up(harness, bob, alice, router)
    sealer = client._conn._sealer
    assert sealer is not None
    future = msgpack.packb(["lane_forecast", 0, {"minutes": 3}], use_bin_type=True)
    client._writer.write(sealer.seal(future))
    assert await client.request(HaveQuery((DIGEST,)), HaveReply) == HaveReply((DIGEST,))
    assert not server.closed


async def test_clean_close_with_reason(harness: Harness, alice: Identity, bob: Identity) -> None:
    client, server = await pair_up(harness, bob, alice)
    await client.close(CloseReason.GOING_AWAY, "shutting down")
    error = await asyncio.wait_for(server.wait_closed(), 5)
    assert isinstance(error, LinkClosed) and error.by_peer
    assert error.reason is CloseReason.GOING_AWAY
    assert "shutting down" in str(error)
    with pytest.raises(LinkClosed):
        await client.send(LogLine("j", "too late"))
    await client.close()  # idempotent: cleanup ran once


# -- streams -------------------------------------------------------------------------------


async def pattern(total: int, piece: int = 200_000) -> AsyncIterator[bytes]:
    """Deterministic bytes produced on demand: the sender never holds the whole payload."""
    block = hashlib.sha256(b"seed").digest() * (piece // 32 + 1)
    sent = 0
    counter = 0
    while sent < total:
        size = min(piece, total - sent)
        yield counter.to_bytes(8, "big") + block[: size - 8] if size >= 8 else block[:size]
        sent += size
        counter += 1


async def test_64_mib_stream_with_matching_digest(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    total = 64 * 1024 * 1024
    result: asyncio.Future[tuple[int, bytes, int]] = asyncio.get_running_loop().create_future()

    async def sink(_s: LinkSession, stream: IncomingStream) -> None:
        hasher = hashlib.sha256()
        count = peak = 0
        async for chunk in stream:
            peak = max(peak, stream.buffered + len(chunk))
            hasher.update(chunk)
            count += len(chunk)
        result.set_result((count, hasher.digest(), peak))

    router = Router()
    router.on_stream("artifact", sink)
    client, _ = await pair_up(harness, bob, alice, router)
    expected = hashlib.sha256()
    async for piece in pattern(total):
        expected.update(piece)
    digest = await client.send_stream(pattern(total), kind="artifact", name="firmware.elf")
    count, received_digest, peak = await asyncio.wait_for(result, 60)
    assert count == total
    assert digest == received_digest == expected.digest()
    assert peak <= STREAM_WINDOW


async def test_slow_consumer_bounds_buffering(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    peaks: list[int] = []
    done = asyncio.Event()

    async def slow(_s: LinkSession, stream: IncomingStream) -> None:
        async for _chunk in stream:
            peaks.append(stream.buffered)
            await asyncio.sleep(0.002)
        done.set()

    router = Router()
    router.on_stream("bundle", slow)
    client, _ = await pair_up(harness, bob, alice, router)
    await client.send_stream(bytes(12 * 1024 * 1024), kind="bundle")
    await asyncio.wait_for(done.wait(), 30)
    assert max(peaks) <= STREAM_WINDOW
    assert len(peaks) == 12 * 1024 * 1024 // DEFAULT_CHUNK_SIZE  # the default chunks


async def test_stream_of_unknown_kind_is_aborted(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    client, _ = await pair_up(harness, bob, alice)
    with pytest.raises(StreamError, match="no handler"):
        await client.send_stream(bytes(3 * STREAM_WINDOW), kind="mystery")
    assert not client.closed


async def test_receiver_stopping_early_aborts_sender(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    async def first_chunk_only(_s: LinkSession, stream: IncomingStream) -> None:
        async for _chunk in stream:
            return

    router = Router()
    router.on_stream("bundle", first_chunk_only)
    client, _ = await pair_up(harness, bob, alice, router)
    with pytest.raises(StreamError):
        await client.send_stream(bytes(4 * STREAM_WINDOW), kind="bundle")
    assert not client.closed


async def test_sender_ignoring_flow_control_is_cut_off(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    async def never_reads(_s: LinkSession, stream: IncomingStream) -> None:
        await asyncio.Event().wait()

    router = Router()
    router.on_stream("bundle", never_reads)
    client, server = await pair_up(harness, bob, alice, router)
    conn = client._conn
    client._writer.write(conn.send(StreamOpen(1, "bundle")))
    chunk = bytes(256 * 1024)
    for _ in range(STREAM_WINDOW // len(chunk) + 1):
        client._writer.write(conn.send(StreamChunk(1, chunk)))
    error = await asyncio.wait_for(server.wait_closed(), 5)
    assert isinstance(error, RemoteProtocolError)
    assert error.reason is CloseReason.FLOW_CONTROL


# -- heartbeats ----------------------------------------------------------------------------


async def test_silent_peer_is_declared_dead(harness: Harness, alice: Identity) -> None:
    port = await silent_server(harness, Identity.generate().private_key)
    config = SessionConfig(heartbeat_interval=0.1, dead_after=0.6)
    client = await harness.connect(alice, port, config=config)
    error = await asyncio.wait_for(client.wait_closed(), 10)
    assert isinstance(error, PeerTimeout)
    assert error.reason is CloseReason.HEARTBEAT_TIMEOUT


async def test_heartbeats_keep_an_idle_session_alive(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    config = SessionConfig(heartbeat_interval=0.1, dead_after=0.5)
    server = await harness.server(bob, config=config)
    client = await harness.connect(alice, server.port, config=config)
    await asyncio.sleep(1.5)  # three dead_after periods with no application traffic
    assert not client.closed
    assert all(not s.closed for s in server.sessions) and len(server.sessions) == 1


# -- hostile bytes through a proxy -----------------------------------------------------------


async def _attack(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    mutate: object,
) -> tuple[LinkSession, LinkSession]:
    accepted: asyncio.Queue[LinkSession] = asyncio.Queue()

    async def on_session(session: LinkSession) -> None:
        await accepted.put(session)

    server = await harness.server(bob, on_session=on_session)
    port = await frame_proxy(harness, server.port, mutate)  # type: ignore[arg-type]
    client = await harness.connect(alice, port)
    server_session = await asyncio.wait_for(accepted.get(), 5)
    for i in range(3):
        try:
            await client.send(LogLine("job", f"line {i}"))
        except LinkClosed:
            break
    return client, server_session


def _on_first_session_frame(change: object) -> object:
    def mutate(index: int, frame: bytes) -> tuple[bytes, bool]:
        if index == FIRST_SESSION_FRAME:
            return change(frame)  # type: ignore[operator,no-any-return]
        return frame, False

    return mutate


async def _expect_refused(client: LinkSession, server: LinkSession, text: str) -> None:
    error = await asyncio.wait_for(server.wait_closed(), 5)
    assert isinstance(error, RemoteProtocolError), error
    assert text in str(error)
    client_error = await asyncio.wait_for(client.wait_closed(), 5)
    assert isinstance(client_error, LinkClosed)


async def test_replayed_frame_closes(harness: Harness, alice: Identity, bob: Identity) -> None:
    mutate = _on_first_session_frame(lambda f: (f + f, False))
    client, server = await _attack(harness, alice, bob, mutate)
    await _expect_refused(client, server, "authentication")


async def test_flipped_bit_closes(harness: Harness, alice: Identity, bob: Identity) -> None:
    def flip(frame: bytes) -> tuple[bytes, bool]:
        return frame[:-1] + bytes([frame[-1] ^ 0x04]), False

    client, server = await _attack(harness, alice, bob, _on_first_session_frame(flip))
    await _expect_refused(client, server, "authentication")


async def test_truncated_frame_closes(harness: Harness, alice: Identity, bob: Identity) -> None:
    client, server = await _attack(
        harness, alice, bob, _on_first_session_frame(lambda f: (f[: len(f) // 2], True))
    )
    await _expect_refused(client, server, "inside a frame")


async def test_oversize_length_prefix_closes(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    huge = (MAX_FRAME + 1).to_bytes(4, "big")
    client, server = await _attack(
        harness, alice, bob, _on_first_session_frame(lambda f: (huge, False))
    )
    await _expect_refused(client, server, "exceeds")
