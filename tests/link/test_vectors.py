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
from meshd.link.errors import CloseReason, HandshakeError
from meshd.link.framing import FrameBuffer, FrameOpener
from meshd.link.handshake import Mode
from meshd.link.limits import MAX_FRAME
from meshd.link.messages import REGISTRY, Message, UnknownMessage, decode, encode
from meshd.mesh.security.pairing import PairingCode, pairing_proof

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


def _send(conn: Connection, frame: dict[str, Any]) -> bytes:
    """Seal one vector frame as ``conn`` would send it (unknown types: raw plaintext)."""
    message, rid = GEN.message_from_json(frame["message"])
    if isinstance(message, UnknownMessage):
        return conn._sealer_or_fail().seal(bytes.fromhex(frame["plaintext"]))
    assert encode(message, rid).hex() == frame["plaintext"]
    return conn.send(message, rid)


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
            assert _send(responder, f).hex() == f["wire"]
        else:
            [got] = _feed(responder, bytes.fromhex(f["wire"]), bytewise)
            assert got == MessageReceived(message, rid)
    [closed] = _feed(responder, bytes.fromhex(v["initiator_close"]["wire"]), bytewise)
    assert closed == ConnectionClosed(v["initiator_close"]["reason"], "", by_peer=True)


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
            assert _send(initiator, f).hex() == f["wire"]
        else:
            [got] = _feed(initiator, bytes.fromhex(f["wire"]), bytewise)
            assert got == MessageReceived(message, rid)
    reason = CloseReason(v["initiator_close"]["reason"])
    assert initiator.close(reason).hex() == v["initiator_close"]["wire"]


def _rid_parity_ok(frame: dict[str, Any]) -> bool:
    """Requests carry the sender's parity (initiator odd), responses the requester's."""
    message, rid = GEN.message_from_json(frame["message"])
    if rid == 0:
        return True
    sent_by_initiator = frame["direction"] == "i2r"
    is_response = isinstance(message, Message) and message.KIND.value == "response"
    initiator_chose = sent_by_initiator != is_response
    return (rid % 2 == 1) == initiator_chose


@pytest.mark.parametrize("name", HANDSHAKES)
def test_request_ids_follow_the_parity_rule(name: str) -> None:
    assert all(_rid_parity_ok(f) for f in load(name)["frames"])


def test_normal_vector_answers_an_unknown_request_unsupported() -> None:
    frames = load("handshake.json")["frames"]
    unknown = [f for f in frames if f["message"]["type"] not in REGISTRY]
    assert [f["direction"] for f in unknown] == ["i2r"]
    rid = unknown[0]["message"]["rid"]
    [answer] = [f for f in frames if f["direction"] == "r2i" and f["message"]["rid"] == rid]
    assert answer["message"]["type"] == "error"
    assert answer["message"]["body"]["code"] == 2  # UNSUPPORTED


def test_pairing_vector_carries_only_pre_trust_traffic() -> None:
    v = load("handshake_pairing.json")
    types = [f["message"]["type"] for f in v["frames"]]
    assert all(REGISTRY[t].PRE_TRUST for t in types), types
    assert "pair_proof" in types and "pair_accept" in types
    assert v["initiator_close"]["reason"] == CloseReason.PAIRING_COMPLETE


def test_pairing_proof_vector_matches_the_implementation() -> None:
    v = load("handshake_pairing.json")
    p = v["pairing"]
    h4 = bytes.fromhex(v["key_schedule"]["h4_session_id"])
    joiner = bytes.fromhex(v["initiator_public_key"])
    receiver = bytes.fromhex(v["responder_public_key"])
    assert pairing_proof(p["secret"], h4, joiner, receiver).hex() == p["proof"]
    assert pairing_proof(p["wrong_secret"], h4, joiner, receiver).hex() == p["wrong_proof"]
    assert bytes.fromhex(p["proof_input"]) == p["proof_label"].encode() + h4 + joiner + receiver
    code = PairingCode.parse(p["code"])
    assert code.secret == p["secret"] and code.prefix == p["code_fingerprint_prefix"]
    assert code.matches(bytes.fromhex(v["responder_fingerprint"]))
    assert str(code) == p["code"]
    [proof_frame] = [f for f in v["frames"] if f["message"]["type"] == "pair_proof"]
    assert proof_frame["message"]["body"]["proof"] == {"$bin": p["proof"]}


def _versioned(v: dict[str, Any], case: dict[str, Any]) -> tuple[Connection, Connection]:
    inputs = {k: bytes.fromhex(h) for k, h in v["inputs"].items()}
    initiator = Connection(
        Role.INITIATOR,
        Ed25519PrivateKey.from_private_bytes(inputs["initiator_identity_seed"]),
        caps=tuple(GEN.INITIATOR_CAPS),
        agent=GEN.AGENT,
        versions=tuple(case["initiator_versions"]),
        ephemeral=X25519PrivateKey.from_private_bytes(inputs["initiator_ephemeral_private"]),
        nonce=inputs["initiator_nonce"],
    )
    responder = Connection(
        Role.RESPONDER,
        Ed25519PrivateKey.from_private_bytes(inputs["responder_identity_seed"]),
        caps=tuple(GEN.RESPONDER_CAPS),
        agent=GEN.AGENT,
        versions=tuple(case["responder_versions"]),
        ephemeral=X25519PrivateKey.from_private_bytes(inputs["responder_ephemeral_private"]),
        nonce=inputs["responder_nonce"],
    )
    return initiator, responder


@pytest.mark.parametrize("case", ["initiator_too_new", "responder_too_new"])
def test_version_refusal_vector(case: str) -> None:
    v = load("version.json")
    c = v["cases"][case]
    initiator, responder = _versioned(v, c)
    assert initiator.initiate().hex() == c["hs1"]
    responder.receive_data(bytes.fromhex(c["hs1"]))
    with pytest.raises(HandshakeError) as refused:
        responder.next_event()
    assert refused.value.reason is CloseReason.VERSION_MISMATCH
    refusal = responder.data_to_send()
    assert refusal.hex() == c["refusal"]
    assert refusal[4:8] == b"MSHD" and refusal[8] == 0 and refusal[9] == c["responder_versions"][1]
    initiator.receive_data(refusal)
    with pytest.raises(HandshakeError) as seen:
        initiator.next_event()
    assert seen.value.reason is CloseReason.VERSION_MISMATCH


def test_wider_version_range_picks_the_highest_common() -> None:
    v = load("version.json")
    c = v["cases"]["wider_initiator_range"]
    initiator, responder = _versioned(v, c)
    assert initiator.initiate().hex() == c["hs1"]
    responder.receive_data(bytes.fromhex(c["hs1"]))
    assert responder.next_event() is NEED_DATA
    assert responder.data_to_send().hex() == c["hs2"]
    initiator.receive_data(bytes.fromhex(c["hs2"]))
    auth = initiator.next_event()
    assert isinstance(auth, PeerAuthenticated) and auth.version == c["chosen_version"] == 1


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
        if message.TYPE == "stream_open":
            # The one stream kind of version 1: a content blob named by its digest.
            assert message.kind == "blob"  # type: ignore[union-attr]
            assert message.name == v["sha256"]  # type: ignore[union-attr]
            assert message.size == len(bytes.fromhex(v["data"]))  # type: ignore[union-attr]
        elif message.TYPE == "stream_chunk":
            data += bytes(message.data)  # type: ignore[union-attr]
        elif message.TYPE == "stream_end":
            digest = message.sha256  # type: ignore[union-attr]
    assert data.hex() == v["data"]
    assert digest == hashlib.sha256(data).digest()
    assert digest.hex() == v["sha256"]
