"""The sans-IO connection: handshakes in memory, refusals, and every way bytes go bad."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.link.connection import (
    NEED_DATA,
    TRANSITIONS,
    Connection,
    ConnectionClosed,
    Input,
    MessageReceived,
    Role,
    State,
)
from meshd.link.errors import (
    CloseReason,
    HandshakeError,
    LinkClosed,
    LinkError,
    LocalProtocolError,
    RemoteProtocolError,
    TrustRefused,
)
from meshd.link.framing import FrameSealer
from meshd.link.handshake import Mode
from meshd.link.limits import MAX_FRAME, MAX_HANDSHAKE_FRAME, MAX_NONCE
from meshd.link.messages import HaveQuery, LogLine, Ping, StreamChunk
from tests.support.connection_pair import ConnectionPair


def established(mode: Mode = Mode.NORMAL) -> tuple[Connection, Connection]:
    """An initiator and a responder after a full handshake in memory."""
    pair = ConnectionPair(mode)
    pair.handshake()
    return pair.initiator, pair.responder


def test_both_sides_agree() -> None:
    i, r = established()
    assert i.session_id == r.session_id and len(i.session_id) == 32
    assert i.established is not None and r.established is not None
    assert i.established.public_key == r._identity_public
    assert r.established.public_key == i._identity_public
    assert i.state is r.state is State.ESTABLISHED


def test_messages_flow_both_ways() -> None:
    i, r = established()
    r.receive_data(i.send(HaveQuery((b"x" * 32,)), rid=1) + i.send(Ping(2)))
    assert r.next_event() == MessageReceived(HaveQuery((b"x" * 32,)), 1)
    assert r.next_event() == MessageReceived(Ping(2), 0)
    assert r.next_event() is NEED_DATA
    i.receive_data(r.send(LogLine("j", "hi")))
    assert i.next_event() == MessageReceived(LogLine("j", "hi"), 0)


def test_pairing_mode_is_carried_to_both_sides() -> None:
    i, r = established(Mode.PAIRING)
    assert i.established is not None and r.established is not None
    assert i.established.mode is r.established.mode is Mode.PAIRING


def test_transition_table_is_data_and_refuses_unknown_inputs() -> None:
    assert (State.ESTABLISHED, Input.SEND_MESSAGE) in TRANSITIONS
    i = Connection(Role.INITIATOR, Ed25519PrivateKey.generate())
    with pytest.raises(LocalProtocolError):
        i.accept_peer()  # nothing to accept before HS2
    with pytest.raises(LocalProtocolError):
        i.send(Ping(1))
    r = Connection(Role.RESPONDER, Ed25519PrivateKey.generate())
    with pytest.raises(LocalProtocolError):
        r.initiate()


# -- refusals ------------------------------------------------------------------------


def test_responder_refusal_reaches_initiator_as_trust_refused() -> None:
    pair = ConnectionPair()
    i, r = pair.initiator, pair.responder
    pair.hs1()
    pair.hs2()
    pair.hs3()
    r.refuse_peer(CloseReason.UNTRUSTED, "not trusted")
    assert r.state is State.CLOSED
    i.receive_data(r.data_to_send())
    with pytest.raises(TrustRefused) as info:
        i.next_event()
    assert info.value.reason is CloseReason.UNTRUSTED
    assert info.value.by_peer  # the responder refused: callers tell this from our own refusal
    assert "not trusted" in str(info.value)


def test_initiator_refusal_sends_nothing() -> None:
    pair = ConnectionPair()
    i = pair.initiator
    pair.hs1()
    pair.hs2()
    i.refuse_peer(CloseReason.UNTRUSTED)
    assert i.data_to_send() == b""  # no HS3: our identity never left
    assert i.state is State.CLOSED


def test_no_common_version() -> None:
    i = Connection(Role.INITIATOR, Ed25519PrivateKey.generate(), versions=(2, 3))
    r = Connection(Role.RESPONDER, Ed25519PrivateKey.generate())
    r.receive_data(i.initiate())
    with pytest.raises(HandshakeError) as info:
        r.next_event()
    assert info.value.reason is CloseReason.VERSION_MISMATCH
    i.receive_data(r.data_to_send())  # the plaintext refusal
    with pytest.raises(HandshakeError) as info2:
        i.next_event()
    assert info2.value.reason is CloseReason.VERSION_MISMATCH


def test_hangup_during_handshake() -> None:
    r = Connection(Role.RESPONDER, Ed25519PrivateKey.generate())
    r.receive_data(b"")
    with pytest.raises(LinkClosed):
        r.next_event()


# -- hostile bytes -------------------------------------------------------------------


def expect_fatal(conn: Connection, data: bytes, error: type[LinkError]) -> LinkError:
    conn.receive_data(data)
    with pytest.raises(error) as info:
        while conn.next_event() is not NEED_DATA:
            pass
    assert conn.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        conn.next_event()  # an errored connection refuses all further use
    with pytest.raises(LocalProtocolError):
        conn.send(Ping(1))
    return info.value


def test_replayed_frame() -> None:
    i, r = established()
    frame = i.send(Ping(1))
    r.receive_data(frame)
    assert r.next_event() == MessageReceived(Ping(1), 0)
    expect_fatal(r, frame, RemoteProtocolError)


def test_reordered_frames() -> None:
    i, r = established()
    first, second = i.send(Ping(1)), i.send(Ping(2))
    expect_fatal(r, second + first, RemoteProtocolError)


def test_dropped_frame() -> None:
    i, r = established()
    i.send(Ping(1))
    expect_fatal(r, i.send(Ping(2)), RemoteProtocolError)


@pytest.mark.parametrize("position", [0, 3, 4, 10, -1])
def test_flipped_bit(position: int) -> None:
    i, r = established()
    frame = bytearray(i.send(LogLine("job", "a line of output")))
    frame[position] ^= 0x01
    error = expect_fatal(r, bytes(frame), RemoteProtocolError)
    assert error.reason is CloseReason.PROTOCOL_ERROR


def test_truncated_frame() -> None:
    i, r = established()
    frame = i.send(LogLine("job", "a line of output"))
    r.receive_data(frame[:-5])
    assert r.next_event() is NEED_DATA
    error = expect_fatal(r, b"", RemoteProtocolError)
    assert "inside a frame" in str(error)


def test_clean_eof_is_connection_closed() -> None:
    _, r = established()
    r.receive_data(b"")
    event = r.next_event()
    assert event == ConnectionClosed(int(CloseReason.CONNECTION_LOST), "connection lost", True)


def test_oversize_length_prefix_fails_before_buffering() -> None:
    _, r = established()
    error = expect_fatal(r, struct.pack(">I", MAX_FRAME + 1), RemoteProtocolError)
    assert "exceeds" in str(error)


def test_max_frame_itself_is_accepted() -> None:
    i, r = established()
    sealer_limit_chunk = StreamChunk(1, bytes(512 * 1024))
    r.receive_data(i.send(sealer_limit_chunk))
    assert isinstance(r.next_event(), MessageReceived)
    sealer = FrameSealer(b"k" * 32)
    sealer.seal(bytes(MAX_FRAME - 16))  # exactly MAX_FRAME on the wire
    with pytest.raises(LocalProtocolError):
        sealer.seal(bytes(MAX_FRAME - 15))


def test_oversize_handshake_frame() -> None:
    r = Connection(Role.RESPONDER, Ed25519PrivateKey.generate())
    expect_fatal(r, struct.pack(">I", MAX_HANDSHAKE_FRAME + 1), RemoteProtocolError)


def test_not_a_meshd_peer() -> None:
    r = Connection(Role.RESPONDER, Ed25519PrivateKey.generate())
    body = b"GET / HTTP/1.1\r\n" + b"x" * 60
    expect_fatal(r, struct.pack(">I", len(body)) + body, RemoteProtocolError)


def test_swapped_ephemeral_key_fails_authentication() -> None:
    """A man in the middle replacing the initiator's ephemeral key breaks the HS2 AEAD
    (different shared secret), so the initiator refuses."""
    i = Connection(Role.INITIATOR, Ed25519PrivateKey.generate())
    r = Connection(Role.RESPONDER, Ed25519PrivateKey.generate())
    hs1 = bytearray(i.initiate())
    hs1[4 + 8 : 4 + 40] = Connection(Role.INITIATOR, Ed25519PrivateKey.generate()).initiate()[12:44]
    r.receive_data(bytes(hs1))
    r.next_event()
    expect_fatal(i, r.data_to_send(), HandshakeError)


def test_tampered_hs3_fails() -> None:
    pair = ConnectionPair()
    i, r = pair.initiator, pair.responder
    pair.hs1()
    pair.hs2()
    i.accept_peer()
    hs3 = bytearray(i.data_to_send())
    hs3[20] ^= 0x80
    expect_fatal(r, bytes(hs3), HandshakeError)


def test_nonce_counter_exhaustion_is_refused() -> None:
    i, _r = established()
    assert i._sealer is not None
    i._sealer.counter = MAX_NONCE + 1
    with pytest.raises(LocalProtocolError):
        i.send(Ping(1))


def test_hello_twice_is_a_protocol_error() -> None:
    pair = ConnectionPair()
    r, hello = pair.responder, pair.handshake().hello
    # Replaying the responder's own hello towards it fails authentication (wrong key).
    expect_fatal(r, hello, RemoteProtocolError)
