"""The link does what PROTOCOL.md says, seen from the wire by a peer built on the sans-IO
core alone (as a second implementation would be): version refusals, answers to
requests of unknown types, request-id parity, and which close code each error sends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgpack
import pytest

from meshd.link import (
    CloseReason,
    ErrorCode,
    HandshakeError,
    IncomingStream,
    LinkSession,
    RemoteProtocolError,
    RequestFailed,
    Router,
    SessionConfig,
    StreamError,
)
from meshd.link.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    MessageReceived,
    Role,
)
from meshd.link.limits import MAX_STREAMS, STREAM_WINDOW
from meshd.link.messages import (
    BlobReply,
    BlobRequest,
    Error,
    HaveQuery,
    HaveReply,
    StreamChunk,
    StreamOpen,
)
from meshd.link.server import run_handshake
from meshd.mesh.security.identity import Identity

from .conftest import FAST, LOOPBACK, Harness
from .peers import accept_all


@dataclass
class RawPeer:
    """A handshaken connection driven by hand: bytes in, events out."""

    conn: Connection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def send_plaintext(self, envelope: list[object]) -> None:
        """Seal any ``[type, rid, body]``, valid or not, as the next frame."""
        sealer = self.conn._sealer_or_fail()
        self.writer.write(sealer.seal(msgpack.packb(envelope, use_bin_type=True)))

    async def events(self, timeout: float = 10.0) -> list[object]:
        """Every event until the peer closes (close frame or EOF)."""
        seen: list[object] = []
        async with asyncio.timeout(timeout):
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    self.conn.receive_data(await self.reader.read(65536))
                    continue
                seen.append(event)
                if isinstance(event, ConnectionClosed):
                    return seen

    async def until(self, wanted: type, timeout: float = 10.0) -> object:
        """The next message of type ``wanted`` (pings and credit are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    self.conn.receive_data(await self.reader.read(65536))
                elif isinstance(event, MessageReceived) and isinstance(event.message, wanted):
                    return event
                elif isinstance(event, ConnectionClosed):
                    raise AssertionError(f"closed while waiting for {wanted}: {event}")


async def raw_client(harness: Harness, port: int, identity: Identity) -> RawPeer:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    harness.writers.append(writer)
    conn = Connection(Role.INITIATOR, identity.private_key)
    await run_handshake(conn, reader, writer, accept_all)
    return RawPeer(conn, reader, writer)


def closed_with(events: list[object]) -> int:
    last = events[-1]
    assert isinstance(last, ConnectionClosed) and last.by_peer, events
    return last.reason


# -- versions -------------------------------------------------------------------------


async def test_version_refusal_body_reaches_the_initiator(harness: Harness, bob: Identity) -> None:
    server = await harness.server(bob)
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    harness.writers.append(writer)
    conn = Connection(Role.INITIATOR, Identity.generate().private_key, versions=(2, 3))
    writer.write(conn.initiate())
    everything = await asyncio.wait_for(reader.read(), 10)  # until the server hangs up
    # length 6, MAGIC, 0x00, the responder's highest version (1): and nothing else.
    assert everything == bytes.fromhex("00000006") + b"MSHD" + bytes([0, 1])


async def test_initiator_reports_no_common_version(harness: Harness, bob: Identity) -> None:
    server = await harness.server(bob)
    reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
    harness.writers.append(writer)
    conn = Connection(Role.INITIATOR, Identity.generate().private_key, versions=(2, 3))
    with pytest.raises(HandshakeError) as info:
        await run_handshake(conn, reader, writer, accept_all)
    assert info.value.reason is CloseReason.VERSION_MISMATCH
    assert "highest is 1" in str(info.value)


# -- requests: every one is answered ------------------------------------------------------


async def test_unknown_request_type_is_answered_unsupported(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    server = await harness.server(bob)
    peer = await raw_client(harness, server.port, alice)
    peer.send_plaintext(["x_future_request", 7, {"question": "anything new?"}])
    event = await peer.until(Error)
    assert isinstance(event, MessageReceived) and event.rid == 7
    assert isinstance(event.message, Error) and event.message.code == ErrorCode.UNSUPPORTED
    # ...and the session carries on: a known request still gets its (UNSUPPORTED) answer.
    peer.send_plaintext(["have_query", 9, {"digests": []}])
    event = await peer.until(Error)
    assert isinstance(event, MessageReceived) and event.rid == 9
    assert [s.closed for s in server.sessions] == [False]


async def test_unknown_one_way_type_is_ignored_silently(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    router = Router()

    async def answer(_s: LinkSession, m: HaveQuery) -> HaveReply:
        return HaveReply(m.digests)

    router.on(HaveQuery, answer)
    server = await harness.server(bob, router=router)
    peer = await raw_client(harness, server.port, alice)
    peer.send_plaintext(["x_future_notice", 0, {"minutes": 3}])
    peer.send_plaintext(["have_query", 1, {"digests": []}])
    event = await peer.until(HaveReply)  # the first answer is the have_reply: nothing for rid 0
    assert isinstance(event, MessageReceived) and event.rid == 1


async def test_answer_of_unknown_type_fails_the_request_at_once(
    harness: Harness, alice: Identity
) -> None:
    """A responder answering our request with a type we do not know: the request fails
    now with a protocol error, instead of waiting for its timeout."""

    async def odd_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.RESPONDER, Identity.generate().private_key)
        await run_handshake(conn, reader, writer, accept_all)
        peer = RawPeer(conn, reader, writer)
        request = await peer.until(HaveQuery)
        assert isinstance(request, MessageReceived)
        peer.send_plaintext(["x_future_reply", request.rid, {}])
        await asyncio.Event().wait()

    port = await harness.raw_server(odd_answers)
    config = SessionConfig(heartbeat_interval=0.2, dead_after=3.0, request_timeout=3600.0)
    client = await harness.connect(alice, port, config=config)
    with pytest.raises(RemoteProtocolError, match="unknown type 'x_future_reply'"):
        await asyncio.wait_for(client.request(HaveQuery(())), 10)
    assert not client.closed


async def test_request_ids_have_the_senders_parity(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    seen: list[int] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.RESPONDER, bob.private_key)
        await run_handshake(conn, reader, writer, accept_all)
        peer = RawPeer(conn, reader, writer)
        for _ in range(3):
            request = await peer.until(HaveQuery)
            assert isinstance(request, MessageReceived)
            seen.append(request.rid)
            writer.write(conn.send(HaveReply(()), request.rid))
        await asyncio.Event().wait()

    port = await harness.raw_server(record)
    client = await harness.connect(alice, port)
    for _ in range(3):
        await client.request(HaveQuery(()), HaveReply)
    assert seen == [1, 3, 5]  # the initiator's requests: odd

    # The responder's requests are even: a raw initiator sees them.
    async def ask(session: LinkSession) -> None:
        with pytest.raises(RequestFailed):
            await session.request(BlobRequest(()), BlobReply)

    server = await harness.server(bob, on_session=ask)
    peer = await raw_client(harness, server.port, alice)
    event = await peer.until(BlobRequest)
    assert isinstance(event, MessageReceived) and event.rid == 2
    peer.writer.write(peer.conn.send(Error(ErrorCode.NOT_FOUND, "no"), event.rid))


async def test_handler_that_gives_up_still_answers(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    async def gives_up(_s: LinkSession, m: HaveQuery) -> HaveReply:
        raise StreamError("the blob stream was aborted")

    router = Router()
    router.on(HaveQuery, gives_up)
    server = await harness.server(bob, router=router)
    client = await harness.connect(alice, server.port)
    with pytest.raises(RequestFailed) as info:
        await client.request(HaveQuery(()))
    assert info.value.code == ErrorCode.INTERNAL and "aborted" in info.value.detail
    assert not client.closed


# -- which error sends which close code ------------------------------------------------------


async def test_malformed_message_gets_close_protocol_error(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    server = await harness.server(bob)
    peer = await raw_client(harness, server.port, alice)
    peer.send_plaintext(["have_query", 0, {"digests": []}])  # a request without a rid
    assert closed_with(await peer.events()) == CloseReason.PROTOCOL_ERROR


async def test_tampered_frame_gets_close_protocol_error(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    server = await harness.server(bob)
    peer = await raw_client(harness, server.port, alice)
    frame = bytearray(peer.conn.send(HaveQuery(()), 1))
    frame[-1] ^= 0x01
    peer.writer.write(bytes(frame))
    assert closed_with(await peer.events()) == CloseReason.PROTOCOL_ERROR


async def test_too_many_streams_gets_close_overload(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    async def never_reads(_s: LinkSession, stream: IncomingStream) -> None:
        await asyncio.Event().wait()

    router = Router()
    router.on_stream("blob", never_reads)
    server = await harness.server(bob, router=router)
    peer = await raw_client(harness, server.port, alice)
    for i in range(MAX_STREAMS + 1):
        peer.writer.write(peer.conn.send(StreamOpen(2 * i + 1, "blob", "0" * 64, 1)))
    assert closed_with(await peer.events()) == CloseReason.OVERLOAD


async def test_credit_overrun_gets_close_flow_control(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    async def never_reads(_s: LinkSession, stream: IncomingStream) -> None:
        await asyncio.Event().wait()

    router = Router()
    router.on_stream("blob", never_reads)
    server = await harness.server(bob, router=router)
    peer = await raw_client(harness, server.port, alice)
    peer.writer.write(peer.conn.send(StreamOpen(1, "blob", "0" * 64)))
    chunk = bytes(256 * 1024)
    for _ in range(STREAM_WINDOW // len(chunk) + 1):
        peer.writer.write(peer.conn.send(StreamChunk(1, chunk)))
    assert closed_with(await peer.events()) == CloseReason.FLOW_CONTROL


async def test_silent_peer_gets_close_heartbeat_timeout(
    harness: Harness, alice: Identity, bob: Identity
) -> None:
    config = SessionConfig(heartbeat_interval=0.1, dead_after=0.6)
    server = await harness.server(bob, config=config)
    peer = await raw_client(harness, server.port, alice)
    events = await peer.events()  # we read (its pings arrive) but never answer
    assert closed_with(events) == CloseReason.HEARTBEAT_TIMEOUT


def test_default_heartbeat_matches_the_spec_and_the_daemon() -> None:
    from meshd.config import DEFAULT_HEARTBEAT

    config = SessionConfig()
    assert config.heartbeat_interval == DEFAULT_HEARTBEAT == 10.0
    assert config.dead_after == 30.0
    assert SessionConfig.from_heartbeat(FAST.heartbeat_interval).dead_after == pytest.approx(0.6)
