"""Signed build provenance: who built which job, with which esphome, producing what.

When a receiver serves the artifacts of a compile, it signs a small record with its
Ed25519 identity: the offloader's fingerprint and job id, the bundle manifest it
built, the esphome version and target platform that built it, the SHA-256 of every
artifact it serves, and the time. The offloader checks the signature against the key
it authenticated in the handshake, that the record is about *its* job, and that the
artifacts it received are exactly the signed ones, before it writes anything where
``esphome upload`` would use it. It then keeps the record with the job.

Sans-IO: pure functions over bytes and keys; no clock (the caller gives the time), no
files, no sockets. The wire form is specified in protocol/PROTOCOL.md ("Build
provenance") with a golden vector in protocol/vectors/provenance.json.

Canonical encoding: a msgpack map with keys in sorted (byte) order, integers and
lengths in their shortest form, strings as str and digests as bin, artifacts sorted by
path. ``decode`` accepts only bytes that re-encode identically, so one meaning has one
encoding and a stored record is exactly what was signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgpack
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meshd.link.messages import MAX_PROVENANCE
from meshd.mesh.security.identity import Identity, short_fingerprint

# Domain separation: a provenance signature can never be mistaken for (or replayed
# as) a handshake signature, which signs "meshd-link-v1 sig ..." || transcript.
SIGNING_LABEL: Final = b"meshd-provenance-v1"
RECORD_FORMAT: Final = 1
MAX_RECORD: Final = MAX_PROVENANCE
SIGNATURE_SIZE: Final = 64
# The same caps as the artifact manifest (meshd/mesh/content/artifacts.py): at most 32
# files, roles of at most 32 characters, paths of at most 512.
MAX_ARTIFACTS: Final = 32
MAX_ROLE: Final = 32
MAX_PATH: Final = 512
MAX_TEXT: Final = 256
_DIGEST: Final = 32

_KEYS: Final = (
    "artifacts",
    "bundle",
    "esphome_version",
    "job_id",
    "offloader",
    "platform",
    "receiver",
    "time_ms",
    "v",
)
_ARTIFACT_KEYS: Final = ("path", "role", "sha256")


class ProvenanceError(Exception):
    """The provenance of a remote build does not check out; ``reason`` says how."""

    reason: ClassVar[str] = "invalid"


class MalformedProvenance(ProvenanceError):
    """Missing, oversized, non-canonical or ill-typed record (or signature)."""

    reason = "malformed"


class BadSignature(ProvenanceError):
    """The signature does not verify under the receiver's key."""

    reason = "bad_signature"


class WrongJob(ProvenanceError):
    """A valid record, but about another offloader, job, bundle or receiver."""

    reason = "wrong_job"


class WrongVersion(ProvenanceError):
    """A valid record for this job, built with another esphome than required."""

    reason = "wrong_version"


class ArtifactMismatch(ProvenanceError):
    """What was received is not what was signed (a digest, role or file differs)."""

    reason = "artifact_mismatch"


@dataclass(frozen=True, order=True)
class ArtifactDigest:
    """One served artifact: its path (relative to ESPHome's data dir), role and SHA-256."""

    path: str
    role: str
    sha256: bytes

    def __post_init__(self) -> None:
        _text(self.path, "artifact path", MAX_PATH, min_len=1)
        _text(self.role, "artifact role", MAX_ROLE, min_len=1)
        _digest(self.sha256, "artifact sha256")


@dataclass(frozen=True)
class ProvenanceRecord:
    """What a receiver attests about one build it serves."""

    receiver: bytes
    """Fingerprint (SHA-256 of the Ed25519 public key) of the receiver that built it."""
    offloader: bytes
    """Fingerprint of the offloader the build was for."""
    job_id: str
    """The offloader's job id (``compile_request.job_id``)."""
    bundle: bytes
    """SHA-256 of the bundle manifest blob that was built (``bundle_digest``)."""
    esphome_version: str
    platform: str
    """esphome's target platform from its build record (``HOST``, ``ESP32S3``...)."""
    artifacts: tuple[ArtifactDigest, ...]
    time_ms: int
    """When the receiver signed, Unix time in milliseconds (the receiver's clock)."""

    def __post_init__(self) -> None:
        _digest(self.receiver, "receiver")
        _digest(self.offloader, "offloader")
        _digest(self.bundle, "bundle")
        _text(self.job_id, "job_id", MAX_TEXT, min_len=1)
        _text(self.esphome_version, "esphome_version", MAX_TEXT, min_len=1)
        _text(self.platform, "platform", MAX_TEXT)
        if isinstance(self.time_ms, bool) or not isinstance(self.time_ms, int):
            raise MalformedProvenance("time_ms is not an integer")
        if not 0 <= self.time_ms < 2**64:
            raise MalformedProvenance("time_ms is out of range")
        artifacts = tuple(sorted(self.artifacts))
        if len(artifacts) > MAX_ARTIFACTS:
            raise MalformedProvenance(f"more than {MAX_ARTIFACTS} artifacts")
        paths = [a.path for a in artifacts]
        if len(set(paths)) != len(paths):
            raise MalformedProvenance("an artifact path appears twice")
        object.__setattr__(self, "artifacts", artifacts)

    def to_wire(self) -> dict[str, Any]:
        """The canonical map (keys in sorted order, artifacts sorted by path)."""
        body: dict[str, Any] = {
            "artifacts": [
                {"path": a.path, "role": a.role, "sha256": a.sha256} for a in self.artifacts
            ],
            "bundle": self.bundle,
            "esphome_version": self.esphome_version,
            "job_id": self.job_id,
            "offloader": self.offloader,
            "platform": self.platform,
            "receiver": self.receiver,
            "time_ms": self.time_ms,
            "v": RECORD_FORMAT,
        }
        return body

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(self.to_wire(), use_bin_type=True)
        if len(data) > MAX_RECORD:
            raise MalformedProvenance(f"record of {len(data)} bytes (limit {MAX_RECORD})")
        return data

    @classmethod
    def decode(cls, data: bytes) -> ProvenanceRecord:
        """Parse canonical record bytes (hostile input); ``MalformedProvenance`` if not."""
        if not isinstance(data, bytes) or not 0 < len(data) <= MAX_RECORD:
            raise MalformedProvenance(f"a record is 1..{MAX_RECORD} bytes")
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise MalformedProvenance(f"record is not msgpack: {exc}") from None
        if not isinstance(raw, dict):
            raise MalformedProvenance("record is not a map")
        try:
            canonical = msgpack.packb(_sorted(raw), use_bin_type=True)
        except (ValueError, TypeError, OverflowError) as exc:
            raise MalformedProvenance(f"record cannot be re-encoded: {exc}") from None
        if canonical != data:
            raise MalformedProvenance("record is not in canonical form")
        if raw.get("v") != RECORD_FORMAT:
            raise MalformedProvenance(f"unsupported record format {raw.get('v')!r}")
        missing = [k for k in _KEYS if k not in raw]
        if missing:
            raise MalformedProvenance(f"record lacks {', '.join(missing)}")
        # Unknown keys are signed like the rest and ignored here (newer receivers).
        items = raw["artifacts"]
        if not isinstance(items, list) or len(items) > MAX_ARTIFACTS:
            raise MalformedProvenance(f"artifacts is not a list of at most {MAX_ARTIFACTS}")
        artifacts = []
        for item in items:
            if not isinstance(item, dict) or any(k not in item for k in _ARTIFACT_KEYS):
                raise MalformedProvenance("an artifact entry lacks path, role or sha256")
            artifacts.append(ArtifactDigest(item["path"], item["role"], item["sha256"]))
        record = cls(
            receiver=raw["receiver"],
            offloader=raw["offloader"],
            job_id=raw["job_id"],
            bundle=raw["bundle"],
            esphome_version=raw["esphome_version"],
            platform=raw["platform"],
            artifacts=tuple(artifacts),
            time_ms=raw["time_ms"],
        )
        if [a.path for a in record.artifacts] != [a.path for a in artifacts]:
            raise MalformedProvenance("artifacts are not sorted by path")
        return record


@dataclass(frozen=True)
class SignedProvenance:
    """Record bytes as signed, and the 64-byte Ed25519 signature over them."""

    record: bytes
    signature: bytes


@dataclass(frozen=True)
class ExpectedJob:
    """What the offloader asked for: the record must be about exactly this."""

    offloader: bytes
    job_id: str
    bundle: bytes
    esphome_version: str | None = None
    """Required version (policy ``provision``/``exact``); None accepts any."""


def signing_input(record: bytes) -> bytes:
    """The exact bytes the Ed25519 signature covers: label, then the record."""
    return SIGNING_LABEL + record


def sign(record: ProvenanceRecord, identity: Identity) -> SignedProvenance:
    """Encode ``record`` canonically and sign it as ``identity`` (the receiver)."""
    if record.receiver != identity.fingerprint:
        raise ValueError("a receiver signs only records that name it as the receiver")
    data = record.encode()
    return SignedProvenance(data, identity.sign(signing_input(data)))


def verify(
    record: bytes,
    signature: bytes,
    receiver_public_key: bytes,
    expected_job: ExpectedJob,
    received_artifact_digests: Iterable[ArtifactDigest],
) -> ProvenanceRecord:
    """Check a receiver's provenance for ``expected_job``; the record, or a ProvenanceError.

    Order: sizes, then the signature (nothing unauthenticated is parsed further), then
    the record's form, then that it names this receiver, offloader, job and bundle
    (and version, if one is required), then that ``received_artifact_digests`` are
    exactly the signed artifacts: same paths, roles and SHA-256, none missing, none extra.
    """
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise MalformedProvenance(f"a signature is {SIGNATURE_SIZE} bytes")
    if not isinstance(record, bytes) or not 0 < len(record) <= MAX_RECORD:
        raise MalformedProvenance(f"a record is 1..{MAX_RECORD} bytes")
    try:
        key = Ed25519PublicKey.from_public_bytes(receiver_public_key)
        key.verify(signature, signing_input(record))
    except (InvalidSignature, ValueError):
        raise BadSignature(
            "the build provenance signature does not verify under the receiver's key "
            f"{short_fingerprint(hashlib.sha256(receiver_public_key).digest())}"
        ) from None
    parsed = ProvenanceRecord.decode(record)
    if parsed.receiver != hashlib.sha256(receiver_public_key).digest():
        raise WrongJob("the provenance names another receiver than the one that signed it")
    if parsed.offloader != expected_job.offloader:
        raise WrongJob(
            f"the provenance is for offloader {short_fingerprint(parsed.offloader)}, "
            f"not this node ({short_fingerprint(expected_job.offloader)})"
        )
    if parsed.job_id != expected_job.job_id:
        raise WrongJob(f"the provenance is for job {parsed.job_id!r}, not {expected_job.job_id!r}")
    if parsed.bundle != expected_job.bundle:
        raise WrongJob(
            f"the provenance is for bundle {parsed.bundle.hex()[:16]}, "
            f"not the one sent ({expected_job.bundle.hex()[:16]})"
        )
    wanted = expected_job.esphome_version
    if wanted is not None and parsed.esphome_version != wanted:
        raise WrongVersion(
            f"the receiver built with esphome {parsed.esphome_version}, not {wanted}"
        )
    _check_artifacts(parsed.artifacts, received_artifact_digests)
    return parsed


def _check_artifacts(
    signed: tuple[ArtifactDigest, ...], received: Iterable[ArtifactDigest]
) -> None:
    by_path = {a.path: a for a in signed}
    seen: set[str] = set()
    for item in received:
        if item.path in seen:
            raise ArtifactMismatch(f"artifact {item.path!r} was received twice")
        seen.add(item.path)
        expected = by_path.get(item.path)
        if expected is None:
            raise ArtifactMismatch(f"artifact {item.path!r} was received but never signed")
        if expected.sha256 != item.sha256:
            raise ArtifactMismatch(
                f"artifact {item.path!r} has SHA-256 {item.sha256.hex()[:16]}…, "
                f"the signed one is {expected.sha256.hex()[:16]}…"
            )
        if expected.role != item.role:
            raise ArtifactMismatch(
                f"artifact {item.path!r} arrived as {item.role!r}, signed as {expected.role!r}"
            )
    unreceived = sorted(set(by_path) - seen)
    if unreceived:
        raise ArtifactMismatch(f"signed artifacts not received: {', '.join(unreceived)}")


def _sorted(value: Any) -> Any:
    """``value`` with every map's keys in sorted order (the canonical form)."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _digest(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != _DIGEST:
        raise MalformedProvenance(f"{what} is not a 32-byte digest")


def _text(value: object, what: str, limit: int, *, min_len: int = 0) -> None:
    if not isinstance(value, str) or not min_len <= len(value) <= limit:
        raise MalformedProvenance(f"{what} is not a string of {min_len}..{limit} characters")
