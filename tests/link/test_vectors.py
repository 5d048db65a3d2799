"""The golden vectors in protocol/vectors replay byte for byte against the implementation."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshd.link.connection import (
    NEED_DATA,
    Connection,
    ConnectionClosed,
    Established,
    MessageReceived,
    PeerAuthenticated,
    Role,
)
from meshd.link.framing import FrameBuffer, FrameOpener
from meshd.link.handshake import Mode
from meshd.link.limits import MAX_FRAME
from meshd.link.messages import decode, encode

from .vectors import generator, load

GEN = generator()
HANDSHAKES = ["handshake.json", "handshake_pairing.json"]


def test_stored_vectors_equal_a_fresh_generation() -> None:
    for name, content in GEN.build().items():
        assert (GEN.HERE / name).read_text() == content, f"{name} is stale: run generate.py"


def _connections(v: dict[str, Any]) -> tuple[Connection, Connection]:
    inputs = {k: bytes.fromhex(h) for k, h in v["inputs"].items()}
    initiator = Connection(
        Role.INITIATOR,
        Ed25519PrivateKey.from_private_bytes(inputs["initiator_identity_seed"]),
        mode=Mode(v["mode"]),
        caps=tuple(v["initiator_caps"]),
        agent=v["agent"],
        ephemeral=X25519PrivateKey.from_private_bytes(inputs["initiator_ephemeral_private"]),
        nonce=inputs["initiator_nonce"],
    )
    responder = Connection(
        Role.RESPONDER,
        Ed25519PrivateKey.from_private_bytes(inputs["responder_identity_seed"]),
        caps=tuple(v["responder_caps"]),
        agent=v["agent"],
        ephemeral=X25519PrivateKey.from_private_bytes(inputs["responder_ephemeral_private"]),
        nonce=inputs["responder_nonce"],
    )
    return initiator, responder


def _feed(conn: Connection, data: bytes, bytewise: bool) -> list[object]:
    """Feed ``data`` whole or one byte at a time, collecting every event."""
    events: list[object] = []
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, PeerAuthenticated | ConnectionClosed):
                break
    return events


@pytest.mark.parametrize("name", HANDSHAKES)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_responder_replays_handshake(name: str, bytewise: bool) -> None:
    v = load(name)
    _, responder = _connections(v)
    assert _feed(responder, bytes.fromhex(v["hs1"]), bytewise) == []
    assert responder.data_to_send().hex() == v["hs2"]
    [auth] = _feed(responder, bytes.fromhex(v["hs3"]), bytewise)
    assert isinstance(auth, PeerAuthenticated)
    assert auth.public_key.hex() == v["initiator_public_key"]
    assert auth.fingerprint.hex() == v["initiator_fingerprint"]
    assert auth.mode == Mode(v["mode"])
    responder.accept_peer()
    assert isinstance(responder.next_event(), Established)
    assert responder.data_to_send().hex() == v["hello"]
    assert responder.session_id.hex() == v["key_schedule"]["h4_session_id"]
    for f in v["frames"]:
        message, rid = GEN.message_from_json(f["message"])
        if f["direction"] == "r2i":
            assert responder.send(message, rid).hex() == f["wire"]
        else:
            [got] = _feed(responder, bytes.fromhex(f["wire"]), bytewise)
            assert got == MessageReceived(message, rid)
    [closed] = _feed(responder, bytes.fromhex(v["initiator_close"]["wire"]), bytewise)
    assert closed == ConnectionClosed(0, "", by_peer=True)


@pytest.mark.parametrize("name", HANDSHAKES)
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_initiator_replays_handshake(name: str, bytewise: bool) -> None:
    v = load(name)
    initiator, _ = _connections(v)
    assert initiator.initiate().hex() == v["hs1"]
    [auth] = _feed(initiator, bytes.fromhex(v["hs2"]), bytewise)
    assert isinstance(auth, PeerAuthenticated)
    assert auth.public_key.hex() == v["responder_public_key"]
    initiator.accept_peer()
    assert initiator.data_to_send().hex() == v["hs3"]
    [est] = _feed(initiator, bytes.fromhex(v["hello"]), bytewise)
    assert isinstance(est, Established)
    assert list(est.caps) == v["negotiated_caps"]
    ks = initiator.keys
    expected = v["key_schedule"]
    assert {
        "h1": ks.h1.hex(),
        "h2": ks.h2.hex(),
        "h3": ks.h3.hex(),
        "h4_session_id": ks.h4.hex(),
        "x25519_shared": ks.shared.hex(),
        "k_hs_r2i": ks.k_hs_r2i.hex(),
        "k_hs_i2r": ks.k_hs_i2r.hex(),
        "k_i2r": ks.k_i2r.hex(),
        "k_r2i": ks.k_r2i.hex(),
    } == expected
    for f in v["frames"]:
        message, rid = GEN.message_from_json(f["message"])
        if f["direction"] == "i2r":
            assert initiator.send(message, rid).hex() == f["wire"]
        else:
            [got] = _feed(initiator, bytes.fromhex(f["wire"]), bytewise)
            assert got == MessageReceived(message, rid)
    assert initiator.close().hex() == v["initiator_close"]["wire"]


def test_whole_conversation_concatenated() -> None:
    """All responder-bound bytes in one receive_data call still replay exactly."""
    v = load("handshake.json")
    _, responder = _connections(v)
    i2r = [f["wire"] for f in v["frames"] if f["direction"] == "i2r"]
    responder.receive_data(bytes.fromhex(v["hs1"] + v["hs3"] + "".join(i2r)))
    assert isinstance(responder.next_event(), PeerAuthenticated)
    assert responder.data_to_send().hex() == v["hs2"]
    responder.accept_peer()
    assert isinstance(responder.next_event(), Established)
    received = []
    while (event := responder.next_event()) is not NEED_DATA:
        assert isinstance(event, MessageReceived)
        received.append(event)
    assert len(received) == len(i2r)


def test_frames_vector_every_type() -> None:
    v = load("frames.json")
    buffer = FrameBuffer(MAX_FRAME)
    opener = FrameOpener(bytes.fromhex(v["key"]))
    for f in v["frames"]:
        message, rid = GEN.message_from_json(f["message"])
        assert encode(message, rid).hex() == f["plaintext"]
        buffer.feed(bytes.fromhex(f["wire"]))
        got = buffer.next_frame()
        assert got is not None
        plaintext = opener.open(*got)
        assert plaintext.hex() == f["plaintext"]
        assert decode(plaintext) == (message, rid)
    assert buffer.pending == 0


def test_stream_vector_reassembles_with_digest() -> None:
    v = load("stream.json")
    buffer = FrameBuffer(MAX_FRAME)
    opener = FrameOpener(bytes.fromhex(v["key"]))
    buffer.feed(b"".join(bytes.fromhex(f["wire"]) for f in v["frames"]))
    data = b""
    digest = b""
    while (got := buffer.next_frame()) is not None:
        message, _ = decode(opener.open(*got))
        if message.TYPE == "stream_chunk":
            data += bytes(message.data)  # type: ignore[union-attr]
        elif message.TYPE == "stream_end":
            digest = message.sha256  # type: ignore[union-attr]
    assert data.hex() == v["data"]
    assert digest == hashlib.sha256(data).digest()
    assert digest.hex() == v["sha256"]
