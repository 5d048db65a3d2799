"""Signed build provenance: the golden vector replays, and every forgery fails clearly."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.link.messages import ArtifactReply, decode, encode
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.provenance import (
    MAX_RECORD,
    ArtifactDigest,
    ArtifactMismatch,
    BadSignature,
    ExpectedJob,
    MalformedProvenance,
    ProvenanceError,
    ProvenanceRecord,
    WrongJob,
    sign,
    signing_input,
    verify,
)
from tests.link.vectors import generator, load

GEN = generator()
VECTOR = load("provenance.json")
RECEIVER = Identity.from_seed(bytes.fromhex(VECTOR["inputs"]["receiver_identity_seed"]))
OFFLOADER = Identity.from_seed(bytes.fromhex(VECTOR["inputs"]["offloader_identity_seed"]))


def _expected(data: dict[str, Any]) -> ExpectedJob:
    return ExpectedJob(
        bytes.fromhex(data["offloader"]),
        data["job_id"],
        bytes.fromhex(data["bundle"]),
        data["esphome_version"],
    )


def _received(items: list[dict[str, str]]) -> list[ArtifactDigest]:
    return [ArtifactDigest(i["path"], i["role"], bytes.fromhex(i["sha256"])) for i in items]


def _record() -> ProvenanceRecord:
    record: ProvenanceRecord = GEN.provenance_record()
    return record


# -- the golden vector ------------------------------------------------------------------


def test_vector_record_encodes_and_signs_byte_for_byte() -> None:
    record = _record()
    assert record.encode().hex() == VECTOR["record"]
    assert msgpack.unpackb(bytes.fromhex(VECTOR["record"])) == GEN.from_json(
        VECTOR["record_fields"]
    )
    assert signing_input(record.encode()).hex() == VECTOR["signing_input"]
    assert VECTOR["signing_input"].startswith(b"meshd-provenance-v1".hex())
    signed = sign(record, RECEIVER)
    assert signed.signature.hex() == VECTOR["signature"]  # Ed25519 is deterministic
    assert RECEIVER.public_key.hex() == VECTOR["receiver_public_key"]
    assert RECEIVER.fingerprint.hex() == VECTOR["receiver_fingerprint"]
    assert OFFLOADER.fingerprint.hex() == VECTOR["offloader_fingerprint"]


def test_vector_verifies() -> None:
    got = verify(
        bytes.fromhex(VECTOR["record"]),
        bytes.fromhex(VECTOR["signature"]),
        bytes.fromhex(VECTOR["receiver_public_key"]),
        _expected(VECTOR["expected_job"]),
        _received(VECTOR["received"]),
    )
    assert got == _record()
    assert ProvenanceRecord.decode(bytes.fromhex(VECTOR["record"])) == got


@pytest.mark.parametrize("case", VECTOR["failures"], ids=lambda c: c["description"])
def test_vector_failures(case: dict[str, Any]) -> None:
    with pytest.raises(ProvenanceError) as caught:
        verify(
            bytes.fromhex(case["record"]),
            bytes.fromhex(case["signature"]),
            bytes.fromhex(case["receiver_public_key"]),
            _expected(case["expected_job"]),
            _received(case["received"]),
        )
    assert caught.value.reason == case["error"]
    assert str(caught.value)  # a sentence for the job log, not an empty error


def test_provenance_travels_in_artifact_reply() -> None:
    signed = sign(_record(), RECEIVER)
    manifest = hashlib.sha256(b"manifest").digest()
    reply = ArtifactReply("a1b2c3d4e5f6", manifest, 10, signed.record, signed.signature)
    message, rid = decode(encode(reply, 7))
    assert (message, rid) == (reply, 7)
    assert isinstance(message, ArtifactReply)
    assert message.provenance == signed.record and message.provenance_sig == signed.signature
    # A receiver that does not sign sends nil, and an old one omits the keys: both decode.
    legacy = msgpack.packb(
        ["artifact_reply", 7, {"job_id": "j1", "manifest_digest": b"\0" * 32, "manifest_size": 1}],
        use_bin_type=True,
    )
    old, _ = decode(legacy)
    assert isinstance(old, ArtifactReply) and old.provenance is None


# -- the clear errors -------------------------------------------------------------------


def _verify(
    record: bytes,
    signature: bytes,
    *,
    key: bytes = RECEIVER.public_key,
    expected: ExpectedJob | None = None,
    received: list[ArtifactDigest] | None = None,
) -> ProvenanceRecord:
    base = _record()
    return verify(
        record,
        signature,
        key,
        expected or ExpectedJob(base.offloader, base.job_id, base.bundle),
        base.artifacts if received is None else received,
    )


def test_tampered_digest_error_names_the_file_and_both_digests() -> None:
    signed = sign(_record(), RECEIVER)
    received = list(_record().artifacts)
    evil = hashlib.sha256(b"evil").digest()
    received[0] = ArtifactDigest(received[0].path, received[0].role, evil)
    with pytest.raises(ArtifactMismatch) as caught:
        _verify(signed.record, signed.signature, received=received)
    message = str(caught.value)
    assert received[0].path in message
    assert evil.hex()[:16] in message
    assert _record().artifacts[0].sha256.hex()[:16] in message


def test_a_record_naming_another_receiver_is_refused() -> None:
    """A receiver may not sign for another node's build (it signs, but names someone else)."""
    record = GEN.provenance_record(receiver=OFFLOADER.fingerprint)
    data = record.encode()
    signature = RECEIVER.sign(signing_input(data))
    with pytest.raises(WrongJob, match="another receiver"):
        _verify(data, signature)
    with pytest.raises(ValueError, match="name it as the receiver"):
        sign(record, RECEIVER)


def test_wrong_offloader_and_bundle_are_refused() -> None:
    signed = sign(_record(), RECEIVER)
    base = _record()
    with pytest.raises(WrongJob, match="offloader"):
        _verify(
            signed.record,
            signed.signature,
            expected=ExpectedJob(RECEIVER.fingerprint, base.job_id, base.bundle),
        )
    with pytest.raises(WrongJob, match="bundle"):
        _verify(
            signed.record,
            signed.signature,
            expected=ExpectedJob(base.offloader, base.job_id, b"\x01" * 32),
        )


@pytest.mark.parametrize(
    ("record", "signature", "key", "error"),
    [
        (b"", b"\0" * 64, RECEIVER.public_key, MalformedProvenance),
        (b"x" * (MAX_RECORD + 1), b"\0" * 64, RECEIVER.public_key, MalformedProvenance),
        (b"\x80", b"\0" * 63, RECEIVER.public_key, MalformedProvenance),
        (b"\x80", b"\0" * 64, b"short", BadSignature),
        (b"\x80", b"\0" * 64, RECEIVER.public_key, BadSignature),
    ],
)
def test_sizes_and_keys(record: bytes, signature: bytes, key: bytes, error: type) -> None:
    with pytest.raises(error):
        _verify(record, signature, key=key)


def _signed_raw(value: Any) -> tuple[bytes, bytes]:
    data = msgpack.packb(value, use_bin_type=True)
    return data, RECEIVER.sign(signing_input(data))


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda w: w.pop("job_id"), "lacks job_id"),
        (lambda w: w.update(v=2), "unsupported record format"),
        (lambda w: w.update(bundle=b"\0" * 31), "bundle is not a 32-byte digest"),
        (lambda w: w.update(time_ms=-1), "time_ms"),
        (lambda w: w.update(time_ms=True), "time_ms"),
        (lambda w: w.update(job_id=""), "job_id"),
        (lambda w: w.update(artifacts={}), "artifacts is not a list"),
        (lambda w: w.update(artifacts=[{"path": "a"}]), "lacks path, role or sha256"),
        (lambda w: w["artifacts"].reverse(), "not sorted by path"),
        (lambda w: w["artifacts"].append(dict(w["artifacts"][-1])), "appears twice"),
        (lambda w: w.update(artifacts=w["artifacts"] * 11), "at most 32"),
    ],
)
def test_malformed_but_validly_signed_records(mutate: Any, why: str) -> None:
    wire = _record().to_wire()
    mutate(wire)
    data, signature = _signed_raw({k: wire[k] for k in sorted(wire)})
    with pytest.raises(MalformedProvenance, match=why):
        _verify(data, signature)


def test_non_minimal_encoding_is_refused() -> None:
    """Same meaning, other bytes (an integer in a wider form than needed) is not canonical."""
    record = GEN.provenance_record(time_ms=5).encode()
    assert b"\xa7time_ms\x05" in record  # positive fixint
    wider = record.replace(b"\xa7time_ms\x05", b"\xa7time_ms\xcc\x05")  # uint8
    with pytest.raises(MalformedProvenance, match="canonical"):
        _verify(wider, RECEIVER.sign(signing_input(wider)))


def test_unknown_fields_are_signed_and_ignored() -> None:
    wire = _record().to_wire()
    wire["x_future"] = "a newer receiver's field"
    data, signature = _signed_raw({k: wire[k] for k in sorted(wire)})
    assert _verify(data, signature) == _record()
    # ...but they are covered by the signature like every other byte.
    altered = data.replace(b"a newer", b"A newer")
    with pytest.raises(BadSignature):
        _verify(altered, signature)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=600))
def test_arbitrary_bytes_only_ever_raise_provenance_errors(data: bytes) -> None:
    with pytest.raises(ProvenanceError):
        ProvenanceRecord.decode(data)
    # Signed garbage too: the signature checks, then the form fails cleanly.
    with pytest.raises(ProvenanceError):
        _verify(data, RECEIVER.sign(signing_input(data)))
