#!/usr/bin/env python3
"""Generate the golden vectors of the meshd peer link (deterministic).

    python protocol/vectors/generate.py          # rewrite the *.json files
    python protocol/vectors/generate.py --check  # exit 1 if they differ

Every input is fixed (identity seeds, ephemeral X25519 keys, handshake nonces), and
Ed25519 signatures, HKDF and ChaCha20-Poly1305 are deterministic, so the output is the
same on every run and platform. tests/link/test_vectors.py replays the files byte for
byte against the implementation; another implementation can do the same.

Encoding in the JSON: byte strings are lower-case hex; message bodies use
{"$bin": "<hex>"} for msgpack bin values so they survive JSON.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from meshd.link.connection import (  # noqa: E402
    Connection,
    Established,
    MessageReceived,
    PeerAuthenticated,
    Role,
)
from meshd.link.errors import CloseReason, ErrorCode, HandshakeError  # noqa: E402
from meshd.link.framing import FrameSealer  # noqa: E402
from meshd.link.handshake import Mode  # noqa: E402
from meshd.link.messages import (  # noqa: E402
    REGISTRY,
    BlobReply,
    BlobRequest,
    Error,
    HaveQuery,
    HaveReply,
    LaneStatus,
    Message,
    PairAccept,
    PairProof,
    Ping,
    Pong,
    StreamChunk,
    StreamEnd,
    StreamOpen,
    UnknownMessage,
    encode,
)
from meshd.mesh.security.identity import Identity  # noqa: E402
from meshd.mesh.security.provenance import (  # noqa: E402
    ArtifactDigest,
    ProvenanceRecord,
    SignedProvenance,
    sign,
    signing_input,
)

HERE = Path(__file__).resolve().parent

INPUTS: dict[str, str] = {
    "initiator_identity_seed": "11" * 32,
    "responder_identity_seed": "22" * 32,
    "initiator_ephemeral_private": "33" * 32,
    "responder_ephemeral_private": "44" * 32,
    "initiator_nonce": "55" * 32,
    "responder_nonce": "66" * 32,
}
INITIATOR_CAPS = ("pair", "stream")
RESPONDER_CAPS = ("stream", "x-future", "pair")
AGENT = "meshd/vectors"
FRAME_KEY = "77" * 32
STREAM_CHUNK = 1000
STREAM_TOTAL = 2500

# Pairing: the secret part of the receiver's one-time code (12 RFC 4648 base32
# characters, lower case) and the names both sides give themselves.
PAIRING_SECRET = "k7m2qx4tnabz"  # noqa: S105 - a published test input
PAIR_PROOF_LABEL = b"meshd-link-v1 pair proof"
JOINER_NAME = "pi"
RECEIVER_NAME = "desktop"
# A message type no version defines: how a request of an unknown type is answered.
UNKNOWN_REQUEST = ("x_future_request", {"question": "anything new?"})


def to_json(value: Any) -> Any:
    """Message field values -> JSON (bytes as {"$bin": hex})."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bin": bytes(value).hex()}
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(value: Any) -> Any:
    """Inverse of ``to_json`` (arrays come back as lists; messages make them tuples)."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def message_json(message: Message | UnknownMessage, rid: int) -> dict[str, Any]:
    if isinstance(message, UnknownMessage):
        return {"type": message.type, "rid": rid, "body": to_json(message.body)}
    return {"type": message.TYPE, "rid": rid, "body": to_json(message.to_wire())}


def message_from_json(data: dict[str, Any]) -> tuple[Message | UnknownMessage, int]:
    """A registered message, or ``UnknownMessage`` for a type no version defines."""
    cls = REGISTRY.get(data["type"])
    body = from_json(data["body"])
    if cls is None:
        return UnknownMessage(data["type"], body), int(data["rid"])
    return cls.from_wire(body), int(data["rid"])


def plaintext_of(message: Message | UnknownMessage, rid: int) -> bytes:
    """The msgpack plaintext ``[type, rid, body]`` (also for unknown types)."""
    if isinstance(message, UnknownMessage):
        import msgpack

        packed: bytes = msgpack.packb([message.type, rid, message.body], use_bin_type=True)
        return packed
    return encode(message, rid)


def pairing_code(fingerprint: bytes, secret: str) -> str:
    """The code a receiver shows: 20 base32 characters of its fingerprint, then the
    secret, upper case in groups of four (PROTOCOL.md "Pairing")."""
    text = (base64.b32encode(fingerprint).decode("ascii")[:20] + secret).upper()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def pairing_proof(secret: str, session_id: bytes, joiner_key: bytes, receiver_key: bytes) -> bytes:
    """HMAC-SHA256(secret, label || h4 || id_i || id_r), written here from the spec."""
    message = PAIR_PROOF_LABEL + session_id + joiner_key + receiver_key
    return hmac.new(secret.encode("ascii"), message, hashlib.sha256).digest()


def make_connections(mode: Mode) -> tuple[Connection, Connection]:
    """The two fixed-input connections every vector starts from."""

    def key(name: str) -> bytes:
        return bytes.fromhex(INPUTS[name])

    initiator = Connection(
        Role.INITIATOR,
        Ed25519PrivateKey.from_private_bytes(key("initiator_identity_seed")),
        mode=mode,
        caps=INITIATOR_CAPS,
        agent=AGENT,
        ephemeral=X25519PrivateKey.from_private_bytes(key("initiator_ephemeral_private")),
        nonce=key("initiator_nonce"),
    )
    responder = Connection(
        Role.RESPONDER,
        Ed25519PrivateKey.from_private_bytes(key("responder_identity_seed")),
        caps=RESPONDER_CAPS,
        agent=AGENT,
        ephemeral=X25519PrivateKey.from_private_bytes(key("responder_ephemeral_private")),
        nonce=key("responder_nonce"),
    )
    return initiator, responder


Traffic = list[tuple[str, Message | UnknownMessage, int]]


def normal_messages() -> Traffic:
    """A normal session after the handshake, in order: (direction, message, rid).

    Request ids have the requester's parity (initiator odd, responder even); the
    unknown request is answered UNSUPPORTED by the session itself.
    """
    digest_a, digest_b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    return [
        ("i2r", Ping(1), 0),
        ("r2i", Pong(1), 0),
        ("i2r", HaveQuery((digest_a, digest_b)), 1),
        ("r2i", HaveReply((digest_b,)), 1),
        ("r2i", LaneStatus(idle=True, running=0, queued=0, idle_since=1767225600.5), 0),
        ("r2i", BlobRequest((digest_a,)), 2),
        ("i2r", BlobReply(1), 2),
        ("i2r", UnknownMessage(*UNKNOWN_REQUEST), 3),
        ("r2i", Error(ErrorCode.UNSUPPORTED, "unknown request type 'x_future_request'"), 3),
    ]


def pairing_messages(initiator: Connection, responder: Connection) -> Traffic:
    """A pairing session: only pre-trust messages, the proof bound to this session."""
    proof = pairing_proof(
        PAIRING_SECRET,
        initiator.session_id,
        _public(initiator),
        _public(responder),
    )
    return [
        ("i2r", Ping(1), 0),
        ("r2i", Pong(1), 0),
        ("i2r", PairProof(proof, JOINER_NAME), 1),
        ("r2i", PairAccept(RECEIVER_NAME), 1),
    ]


def _public(conn: Connection) -> bytes:
    from meshd.link.crypto import raw_public_key

    return raw_public_key(conn._identity)


def handshake_vector(mode: Mode) -> dict[str, Any]:
    initiator, responder = make_connections(mode)
    hs1 = initiator.initiate()
    responder.receive_data(hs1)
    responder.next_event()
    hs2 = responder.data_to_send()
    initiator.receive_data(hs2)
    seen_by_initiator = initiator.next_event()
    assert isinstance(seen_by_initiator, PeerAuthenticated)
    initiator.accept_peer()
    hs3 = initiator.data_to_send()
    responder.receive_data(hs3)
    seen_by_responder = responder.next_event()
    assert isinstance(seen_by_responder, PeerAuthenticated)
    responder.accept_peer()
    established = responder.next_event()
    assert isinstance(established, Established)
    hello = responder.data_to_send()
    initiator.receive_data(hello)
    assert isinstance(initiator.next_event(), Established)
    frames = []
    pairing = mode is Mode.PAIRING
    traffic = pairing_messages(initiator, responder) if pairing else normal_messages()
    for direction, message, rid in traffic:
        sender, receiver = (initiator, responder) if direction == "i2r" else (responder, initiator)
        if pairing:
            assert not isinstance(message, UnknownMessage) and message.PRE_TRUST, message
        plaintext = plaintext_of(message, rid)
        wire = sender._sealer_or_fail().seal(plaintext)
        receiver.receive_data(wire)
        got = receiver.next_event()
        assert isinstance(got, MessageReceived) and got.message == message
        frames.append(
            {
                "direction": direction,
                "message": message_json(message, rid),
                "plaintext": plaintext.hex(),
                "wire": wire.hex(),
            }
        )
    close_reason = CloseReason.PAIRING_COMPLETE if pairing else CloseReason.NORMAL
    close = initiator.close(close_reason)
    k = initiator.keys
    extra: dict[str, Any] = {}
    if pairing:
        fingerprint = seen_by_initiator.fingerprint
        extra["pairing"] = {
            "secret": PAIRING_SECRET,
            "code": pairing_code(fingerprint, PAIRING_SECRET),
            "code_fingerprint_prefix": base64.b32encode(fingerprint).decode()[:20].lower(),
            "proof_label": PAIR_PROOF_LABEL.decode(),
            "proof_input": (
                PAIR_PROOF_LABEL
                + k.h4
                + seen_by_responder.public_key
                + seen_by_initiator.public_key
            ).hex(),
            "proof": pairing_proof(
                PAIRING_SECRET, k.h4, seen_by_responder.public_key, seen_by_initiator.public_key
            ).hex(),
            "wrong_secret": "aaaaaaaaaaaa",
            "wrong_proof": pairing_proof(
                "aaaaaaaaaaaa", k.h4, seen_by_responder.public_key, seen_by_initiator.public_key
            ).hex(),
        }
    return {
        "description": (
            f"full handshake ({mode.name.lower()} mode) then messages, both ways"
            + ("; only pre-trust messages, as a pairing session allows" if pairing else "")
        ),
        **extra,
        "mode": int(mode),
        "inputs": INPUTS,
        "initiator_caps": list(INITIATOR_CAPS),
        "responder_caps": list(RESPONDER_CAPS),
        "agent": AGENT,
        "initiator_public_key": seen_by_responder.public_key.hex(),
        "responder_public_key": seen_by_initiator.public_key.hex(),
        "initiator_fingerprint": seen_by_responder.fingerprint.hex(),
        "responder_fingerprint": seen_by_initiator.fingerprint.hex(),
        "hs1": hs1.hex(),
        "hs2": hs2.hex(),
        "hs3": hs3.hex(),
        "hello": hello.hex(),
        "negotiated_caps": list(established.caps),
        "key_schedule": {
            "h1": k.h1.hex(),
            "h2": k.h2.hex(),
            "h3": k.h3.hex(),
            "h4_session_id": k.h4.hex(),
            "x25519_shared": k.shared.hex(),
            "k_hs_r2i": k.k_hs_r2i.hex(),
            "k_hs_i2r": k.k_hs_i2r.hex(),
            "k_i2r": k.k_i2r.hex(),
            "k_r2i": k.k_r2i.hex(),
        },
        "frames": frames,
        "initiator_close": {"reason": int(close_reason), "message": "", "wire": close.hex()},
    }


def version_vector() -> dict[str, Any]:
    """Version negotiation: a wider range picks the highest common version; no common
    version gets the 6-byte refusal frame instead of HS2."""

    def hs(versions: tuple[int, int], responder_versions: tuple[int, int]) -> dict[str, Any]:
        initiator, responder = make_connections(Mode.NORMAL)
        initiator._versions = versions
        responder._versions = responder_versions
        hs1 = initiator.initiate()
        responder.receive_data(hs1)
        case: dict[str, Any] = {
            "initiator_versions": list(versions),
            "responder_versions": list(responder_versions),
            "hs1": hs1.hex(),
        }
        try:
            responder.next_event()
        except HandshakeError as exc:
            assert exc.reason is CloseReason.VERSION_MISMATCH
            refusal = responder.data_to_send()
            initiator.receive_data(refusal)
            try:
                initiator.next_event()
            except HandshakeError as seen:
                assert seen.reason is CloseReason.VERSION_MISMATCH
            else:
                raise AssertionError("initiator accepted a refusal") from None
            case["refusal"] = refusal.hex()
            return case
        hs2 = responder.data_to_send()
        case["hs2"] = hs2.hex()
        case["chosen_version"] = hs2[4 + 4]
        return case

    return {
        "description": (
            "protocol version negotiation (fixed inputs as in handshake.json): the "
            "responder picks min(its max, the initiator's max) or refuses with "
            "MAGIC || 0x00 || its max version, framed, instead of HS2"
        ),
        "inputs": INPUTS,
        "cases": {
            "wider_initiator_range": hs((1, 3), (1, 1)),
            "initiator_too_new": hs((2, 3), (1, 1)),
            "responder_too_new": hs((1, 1), (2, 2)),
        },
    }


def frames_vector() -> dict[str, Any]:
    """One of every registered message type, sealed under a fixed key, counters 0.."""
    from meshd.link.messages import (
        ArtifactReply,
        ArtifactRequest,
        BlobReply,
        BlobRequest,
        CacheEntry,
        CacheGet,
        CachePut,
        Cancel,
        Close,
        CompileAccept,
        CompileReject,
        CompileRequest,
        Error,
        Hello,
        JobState,
        LogLine,
        NodeInfo,
        PairAccept,
        PairProof,
        StreamAbort,
        StreamWindow,
    )

    digest = hashlib.sha256(b"bundle").digest()
    signed = provenance_sign(provenance_record())
    blob = b"\x00\x01\x02\x03"
    blob_name = hashlib.sha256(blob).hexdigest()
    samples: list[tuple[Message, int]] = [
        (Hello(("pair", "stream"), "meshd/0.1.0"), 0),
        (Ping(7), 0),
        (Pong(7), 0),
        (Close(9, "paired"), 0),
        (Error(4, "too many requests in flight"), 2),
        (PairProof(hashlib.sha256(b"proof").digest(), "pi"), 1),
        (PairAccept("desktop"), 2),
        (LaneStatus(False, 1, 2, None, "2026.6.5", ("2026.5.1",)), 0),
        (CompileRequest("a1b2c3d4e5f6", "kitchen.yaml", "2026.6.5", digest, 123456, True), 3),
        (CompileAccept("a1b2c3d4e5f6", 0), 4),
        (CompileReject("a1b2c3d4e5f6", "busy", "compile lane busy"), 6),
        (LogLine("a1b2c3d4e5f6", "Compiling src/main.cpp.o", "stdout"), 0),
        (JobState("a1b2c3d4e5f6", "running", 0.25, ""), 0),
        (Cancel("a1b2c3d4e5f6", "superseded"), 0),
        (HaveQuery((digest,)), 5),
        (HaveReply(()), 8),
        (ArtifactRequest("a1b2c3d4e5f6", "serial", True), 7),
        (ArtifactReply("a1b2c3d4e5f6", digest, 2048, signed.record, signed.signature), 10),
        (BlobRequest((digest,)), 9),
        (BlobReply(1), 12),
        (NodeInfo("desktop", "2026.6.5", True, True, ("2026.5.1",)), 0),
        (StreamOpen(3, "blob", blob_name, 4, {}), 0),
        (StreamChunk(3, blob), 0),
        (StreamEnd(3, hashlib.sha256(blob).digest()), 0),
        (StreamAbort(5, "disk full"), 0),
        (StreamWindow(4, 1048576), 0),
        (CacheGet("a1b2c3d4e5f6", "49/bd4508a93865d57668df59534c3a87c181f56b"), 11),
        (CacheEntry(b"cCrS\x00entry"), 14),
        (CachePut("a1b2c3d4e5f6", "f4/6161258e2bcfaab7a0c50f7c13a8e9eaf73e4a", b"obj"), 0),
    ]
    missing = set(REGISTRY) - {m.TYPE for m, _ in samples}
    assert not missing, f"frames vector lacks {sorted(missing)}"
    sealer = FrameSealer(bytes.fromhex(FRAME_KEY))
    out = []
    for counter, (message, rid) in enumerate(samples):
        plaintext = encode(message, rid)
        out.append(
            {
                "counter": counter,
                "message": message_json(message, rid),
                "plaintext": plaintext.hex(),
                "wire": sealer.seal(plaintext).hex(),
            }
        )
    return {
        "description": (
            "every message type, sealed in order under one direction key, as the "
            "initiator would send them: its requests carry odd rids, its responses the "
            "even rids of the responder's requests; its streams have odd ids"
        ),
        "key": FRAME_KEY,
        "frames": out,
    }


def stream_vector() -> dict[str, Any]:
    """A small stream (open, three chunks, end) sealed under a fixed key."""
    data = b"".join(
        hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(STREAM_TOTAL // 32 + 1)
    )[:STREAM_TOTAL]
    name = hashlib.sha256(data).hexdigest()
    messages: list[Message] = [StreamOpen(1, "blob", name, len(data), {})]
    messages += [
        StreamChunk(1, data[i : i + STREAM_CHUNK]) for i in range(0, len(data), STREAM_CHUNK)
    ]
    messages.append(StreamEnd(1, hashlib.sha256(data).digest()))
    sealer = FrameSealer(bytes.fromhex(FRAME_KEY))
    return {
        "description": (
            "a 2500-byte content blob as a stream of kind blob named by its hex "
            "SHA-256, in 1000-byte chunks, sealed under one key"
        ),
        "key": FRAME_KEY,
        "data": data.hex(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "frames": [
            {"message": message_json(m, 0), "wire": sealer.seal(encode(m)).hex()} for m in messages
        ],
    }


PROVENANCE_JOB = "a1b2c3d4e5f6"
PROVENANCE_TIME_MS = 1767225600500
PROVENANCE_ARTIFACTS = (
    ("app", "build/kitchen/.pioenvs/kitchen/program", b"program"),
    ("storage", "storage/kitchen.yaml.json", b"storage"),
    ("validated_config", "storage/kitchen.yaml.validated.yaml", b"validated"),
)


def _identity(name: str) -> Identity:
    return Identity.from_seed(bytes.fromhex(INPUTS[name]))


def provenance_record(**changes: Any) -> ProvenanceRecord:
    """The vector's record: the responder built job a1b2c3d4e5f6 for the initiator."""
    fields: dict[str, Any] = {
        "receiver": _identity("responder_identity_seed").fingerprint,
        "offloader": _identity("initiator_identity_seed").fingerprint,
        "job_id": PROVENANCE_JOB,
        "bundle": hashlib.sha256(b"bundle").digest(),
        "esphome_version": "2026.6.5",
        "platform": "HOST",
        "artifacts": tuple(
            ArtifactDigest(path, role, hashlib.sha256(content).digest())
            for role, path, content in PROVENANCE_ARTIFACTS
        ),
        "time_ms": PROVENANCE_TIME_MS,
    }
    fields.update(changes)
    return ProvenanceRecord(**fields)


def provenance_sign(record: ProvenanceRecord) -> SignedProvenance:
    return sign(record, _identity("responder_identity_seed"))


def _artifacts_json(artifacts: Any) -> list[dict[str, str]]:
    return [{"path": a.path, "role": a.role, "sha256": a.sha256.hex()} for a in artifacts]


def provenance_vector() -> dict[str, Any]:
    """A signed provenance record, and the ways verification must fail."""
    import msgpack

    receiver = _identity("responder_identity_seed")
    record = provenance_record()
    signed = provenance_sign(record)
    expected = {
        "offloader": record.offloader.hex(),
        "job_id": PROVENANCE_JOB,
        "bundle": record.bundle.hex(),
        "esphome_version": None,
    }
    received = _artifacts_json(record.artifacts)

    def case(description: str, error: str, **over: Any) -> dict[str, Any]:
        out = {
            "description": description,
            "record": signed.record.hex(),
            "signature": signed.signature.hex(),
            "receiver_public_key": receiver.public_key.hex(),
            "expected_job": expected,
            "received": received,
            "error": error,
        }
        out.update(over)
        return out

    other_job = provenance_sign(provenance_record(job_id="ffffffffffff"))
    flipped = bytearray(signed.signature)
    flipped[0] ^= 1
    tampered = [dict(a) for a in received]
    tampered[0]["sha256"] = hashlib.sha256(b"not the program").hexdigest()
    renamed = [dict(a) for a in received]
    renamed[1]["role"] = "app"
    wire = record.to_wire()
    unsorted = msgpack.packb(dict(reversed(list(wire.items()))), use_bin_type=True)
    offloader_key = _identity("initiator_identity_seed")
    return {
        "description": "build provenance: canonical msgpack record, Ed25519 over "
        "'meshd-provenance-v1' || record, by the receiver's identity",
        "inputs": {
            "receiver_identity_seed": INPUTS["responder_identity_seed"],
            "offloader_identity_seed": INPUTS["initiator_identity_seed"],
        },
        "receiver_public_key": receiver.public_key.hex(),
        "receiver_fingerprint": receiver.fingerprint.hex(),
        "offloader_fingerprint": record.offloader.hex(),
        "record_fields": to_json(wire),
        "record": signed.record.hex(),
        "signing_input": signing_input(signed.record).hex(),
        "signature": signed.signature.hex(),
        "expected_job": expected,
        "received": received,
        "failures": [
            case(
                "an artifact whose SHA-256 is not the signed one",
                "artifact_mismatch",
                received=tampered,
            ),
            case(
                "an artifact received under another role than signed",
                "artifact_mismatch",
                received=renamed,
            ),
            case(
                "an artifact received that was never signed",
                "artifact_mismatch",
                received=[
                    *received,
                    {"path": "extra.bin", "role": "extra", "sha256": "00" * 32},
                ],
            ),
            case("a signed artifact not received", "artifact_mismatch", received=received[1:]),
            case("one bit of the signature flipped", "bad_signature", signature=flipped.hex()),
            case(
                "signed by another key (the offloader's)",
                "bad_signature",
                signature=offloader_key.sign(signing_input(signed.record)).hex(),
            ),
            case(
                "a valid record of another job by the same receiver",
                "wrong_job",
                record=other_job.record.hex(),
                signature=other_job.signature.hex(),
            ),
            case(
                "a valid record, but the job requires esphome 2026.6.4",
                "wrong_version",
                expected_job={**expected, "esphome_version": "2026.6.4"},
            ),
            case(
                "the same fields with map keys out of order, validly signed",
                "malformed",
                record=unsorted.hex(),
                signature=receiver.sign(signing_input(unsorted)).hex(),
            ),
        ],
    }


def build() -> dict[str, str]:
    """File name -> exact file content."""
    vectors = {
        "handshake.json": handshake_vector(Mode.NORMAL),
        "handshake_pairing.json": handshake_vector(Mode.PAIRING),
        "frames.json": frames_vector(),
        "stream.json": stream_vector(),
        "provenance.json": provenance_vector(),
        "version.json": version_vector(),
    }
    return {name: json.dumps(v, indent=2, sort_keys=True) + "\n" for name, v in vectors.items()}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, content in build().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != content:
                stale.append(name)
        else:
            path.write_text(content)
    if stale:
        print("stale vectors:", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
