"""What built a compile job: the esphome version, where, for which platform, and proof.

The jobs layer only keeps this record; it never makes or checks one. The runner that
built the job fills it through ``JobContext.record_build``: the local compile runner
(meshd.toolchain.runners) with the toolchain it really ran, the offloader
(meshd.mesh.dispatch.offloader) with the receiver's signed provenance *after* it
verified it. So nothing here imports the mesh: a verified provenance arrives as plain
values (hex digests, the raw record and signature), enough to show it and to verify it
again later with ``meshd.mesh.security.provenance.verify``.

Stored as JSON in the ``build`` column of ``jobs`` (``{"v": 1, ...}``). A value that
does not decode is not a reason to lose the job: it loads as an ``UnreadableBuild``
that keeps the stored text byte for byte (written back unchanged on the next save) and
says why, and the API shows that marker instead of a record.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

BUILD_FORMAT: Final = 1
"""The ``v`` of a stored record; a newer one still loads (unknown keys are ignored)."""

LOCAL_BUILDER: Final = "local"
"""``JobBuild.builder`` of a build made on this node."""

# How much of an unreadable stored value the API repeats (the database keeps all of it).
_RAW_SHOWN: Final = 2000


class BadBuildRecord(ValueError):
    """A stored build record this version cannot read; the message says why."""


@dataclass(frozen=True)
class ArtifactSum:
    """One artifact the receiver signed: path under ESPHome's data dir, role, SHA-256 (hex)."""

    path: str
    role: str
    sha256: str


@dataclass(frozen=True)
class BuildProvenance:
    """A receiver's signed provenance, as the offloader verified it (PROTOCOL.md 14).

    The fields repeat what the record says; ``record`` and ``signature`` are the exact
    bytes (hex) that were verified, so the check can be made again with the receiver's
    key (``receiver`` is its fingerprint).
    """

    receiver: str
    """SHA-256 fingerprint of the receiver's Ed25519 key, hex."""
    offloader: str
    """Fingerprint of the node the build was for (this one), hex."""
    job_id: str
    """The offloader's job id the record names."""
    bundle: str
    """SHA-256 of the bundle manifest that was built, hex."""
    esphome_version: str
    platform: str
    artifacts: tuple[ArtifactSum, ...]
    signed_at: float
    """When the receiver signed (its clock), Unix seconds."""
    record: str
    """The canonical record bytes as signed, hex."""
    signature: str
    """The Ed25519 signature over ``meshd-provenance-v1`` || record, hex."""
    receiver_key: str
    """The receiver's raw Ed25519 public key (hex) the signature verified under, as
    authenticated in the link handshake: enough to verify the record again offline."""
    verified: bool = True
    """The offloader checked signature, job and artifact digests before writing anything
    (a record that failed its check is never stored)."""


@dataclass(frozen=True)
class JobBuild:
    """Who built a compile job, with which esphome, for which platform."""

    esphome_version: str | None
    """The esphome that actually built it; None when nobody can say (a local node whose
    esphome did not answer ``version``, or a receiver too old to sign its builds)."""
    builder: str
    """``local``, or the receiver's name (its fingerprint when the name is unknown)."""
    builder_fingerprint: str | None = None
    """The receiver's fingerprint (hex) for a remote build; None for a local one."""
    platform: str | None = None
    """esphome's target platform from the build's StorageJSON (``HOST``, ``ESP32S3``...)."""
    provenance: BuildProvenance | None = None
    """The verified signed record of a remote build; None for local builds and for
    receivers that do not sign (no ``provenance`` capability)."""

    @property
    def remote(self) -> bool:
        return self.builder_fingerprint is not None

    def to_api(self) -> dict[str, Any]:
        """The ``build`` object of a job in docs/API.md."""
        prov = self.provenance
        return {
            "esphome_version": self.esphome_version,
            "where": "remote" if self.remote else "local",
            "builder": self.builder,
            "builder_fingerprint": self.builder_fingerprint,
            "platform": self.platform,
            "verified": prov.verified if prov is not None else None,
            "provenance": _provenance_to_json(prov) if prov is not None else None,
        }

    def to_json(self) -> str:
        """The stored form (the ``build`` column)."""
        return json.dumps({"v": BUILD_FORMAT, **self.to_api()}, sort_keys=True)


@dataclass(frozen=True)
class UnreadableBuild:
    """A stored build record that did not decode: kept as it was, with the reason."""

    raw: str | bytes | int | float
    """The stored value exactly as it was (written back as it is)."""
    error: str

    def to_api(self) -> dict[str, Any]:
        shown = self.raw if isinstance(self.raw, str) else repr(self.raw)
        return {"unreadable": True, "error": self.error, "raw": shown[:_RAW_SHOWN]}

    def to_json(self) -> str | bytes | int | float:
        return self.raw


StoredBuild = JobBuild | UnreadableBuild


def _provenance_to_json(prov: BuildProvenance) -> dict[str, Any]:
    return {
        "verified": prov.verified,
        "receiver": prov.receiver,
        "offloader": prov.offloader,
        "job_id": prov.job_id,
        "bundle": prov.bundle,
        "esphome_version": prov.esphome_version,
        "platform": prov.platform,
        "artifacts": [{"path": a.path, "role": a.role, "sha256": a.sha256} for a in prov.artifacts],
        "signed_at": prov.signed_at,
        "record": prov.record,
        "signature": prov.signature,
        "receiver_key": prov.receiver_key,
    }


def decode_build(raw: object) -> StoredBuild | None:
    """The record stored as ``raw``; an ``UnreadableBuild`` (never an exception) if it is bad."""
    if raw is None:
        return None
    if isinstance(raw, bytes | int | float):
        return UnreadableBuild(raw, f"the stored value is {type(raw).__name__}, not text")
    if not isinstance(raw, str):
        return UnreadableBuild(repr(raw), f"the stored value is {type(raw).__name__}, not text")
    try:
        return _decode(raw)
    except BadBuildRecord as exc:
        return UnreadableBuild(raw, str(exc))


def _decode(raw: str) -> JobBuild:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadBuildRecord(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadBuildRecord("not a JSON object")
    version = data.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadBuildRecord(f"format {version!r:.40} is not a record format")
    prov = data.get("provenance")
    return JobBuild(
        esphome_version=_str(data, "esphome_version", optional=True),
        builder=_str(data, "builder") or "",
        builder_fingerprint=_str(data, "builder_fingerprint", optional=True),
        platform=_str(data, "platform", optional=True),
        provenance=None if prov is None else _decode_provenance(prov),
    )


def _decode_provenance(data: object) -> BuildProvenance:
    if not isinstance(data, dict):
        raise BadBuildRecord("provenance is not a JSON object")
    items = data.get("artifacts")
    if not isinstance(items, list):
        raise BadBuildRecord("provenance.artifacts is not a list")
    artifacts = []
    for item in items:
        if not isinstance(item, dict):
            raise BadBuildRecord("an artifact of the provenance is not an object")
        artifacts.append(
            ArtifactSum(
                _str(item, "path") or "", _str(item, "role") or "", _str(item, "sha256") or ""
            )
        )
    signed_at = data.get("signed_at")
    if (
        isinstance(signed_at, bool)
        or not isinstance(signed_at, int | float)
        or not math.isfinite(signed_at)
    ):
        raise BadBuildRecord(f"provenance.signed_at is {signed_at!r:.40}, not a time")
    verified = data.get("verified")
    if not isinstance(verified, bool):
        raise BadBuildRecord(f"provenance.verified is {verified!r:.40}, not true or false")
    return BuildProvenance(
        receiver=_str(data, "receiver") or "",
        offloader=_str(data, "offloader") or "",
        job_id=_str(data, "job_id") or "",
        bundle=_str(data, "bundle") or "",
        esphome_version=_str(data, "esphome_version") or "",
        platform=_str(data, "platform") or "",
        artifacts=tuple(artifacts),
        signed_at=float(signed_at),
        record=_str(data, "record") or "",
        signature=_str(data, "signature") or "",
        receiver_key=_str(data, "receiver_key") or "",
        verified=verified,
    )


def _str(data: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise BadBuildRecord(f"{key} is {value!r:.40}, not text")
    return value
