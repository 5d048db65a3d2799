"""Handshake message layouts, signed payloads and the key schedule (pure functions).

Three handshake messages (PROTOCOL.md "Handshake"), each sent as a length-prefixed
frame of at most MAX_HANDSHAKE_FRAME bytes:

  HS1  I->R  plaintext  MAGIC | min_ver | max_ver | mode | flags | e_i | n_i [| ext]
  HS2  R->I  MAGIC | version | mode | flags | 0 | e_r | n_r   (plaintext header)
             AEAD(k_hs_r2i, payload_r, aad=h2)
  HS3  I->R  AEAD(k_hs_i2r, payload_i, aad=h3)

A payload is the msgpack map {"id": Ed25519 public key, "sig": signature, "caps":
[capability names], "agent": software name}. Identities only ever travel inside the
AEAD, and the responder reveals its identity first, so an initiator that does not like
the responder's key (wrong fingerprint, pairing code mismatch) hangs up without having
sent its own identity or any secret. The state machine that sequences these lives in
``connection``; this module only builds, parses and derives.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.link import crypto
from meshd.link.errors import CloseReason, HandshakeError, RemoteProtocolError
from meshd.link.limits import MAGIC, MAX_CAPS, MAX_NAME

# MAGIC(4) min(1) max(1) mode(1) flags(1) e(32) n(32)
HS1_SIZE = 4 + 4 + crypto.PUBLIC_KEY_SIZE + crypto.NONCE_SIZE
# MAGIC(4) version(1) mode(1) flags(1) reserved(1) e(32) n(32)
HS2_HEADER_SIZE = HS1_SIZE
# The refusal a responder sends instead of HS2 when no version is shared:
# MAGIC | 0x00 | its own max version.
HS2_REFUSAL_SIZE = 6

_HEAD = struct.Struct(">4sBBBB")


class Mode(enum.IntEnum):
    """What the initiator asks for: a normal session, or pairing with an unknown peer."""

    NORMAL = 0
    PAIRING = 1


@dataclass(frozen=True)
class Hs1:
    """Initiator's opening message."""

    min_version: int
    max_version: int
    mode: Mode
    ephemeral: bytes
    nonce: bytes

    def to_bytes(self) -> bytes:
        return (
            _HEAD.pack(MAGIC, self.min_version, self.max_version, self.mode, 0)
            + self.ephemeral
            + self.nonce
        )

    @classmethod
    def parse(cls, body: bytes) -> Hs1:
        """Parse HS1; trailing extension bytes are allowed (and hashed, never interpreted)."""
        if len(body) < HS1_SIZE:
            raise RemoteProtocolError("HS1 too short")
        magic, lo, hi, mode, _flags = _HEAD.unpack_from(body)
        if magic != MAGIC:
            raise RemoteProtocolError("not a meshd link (bad magic)")
        if lo == 0 or lo > hi:
            raise RemoteProtocolError(f"HS1 version range [{lo}, {hi}] invalid")
        try:
            parsed_mode = Mode(mode)
        except ValueError as exc:
            raise RemoteProtocolError(f"HS1 mode {mode} unknown") from exc
        return cls(lo, hi, parsed_mode, body[8:40], body[40:72])


@dataclass(frozen=True)
class Hs2Header:
    """Plaintext part of the responder's reply."""

    version: int
    mode: Mode
    ephemeral: bytes
    nonce: bytes

    def to_bytes(self) -> bytes:
        return _HEAD.pack(MAGIC, self.version, self.mode, 0, 0) + self.ephemeral + self.nonce

    @classmethod
    def parse(cls, body: bytes) -> tuple[Hs2Header, bytes]:
        """(header, sealed payload); a version-0 refusal raises HandshakeError."""
        if len(body) >= HS2_REFUSAL_SIZE and body[:4] == MAGIC and body[4] == 0:
            raise HandshakeError(
                f"peer speaks no common protocol version (its highest is {body[5]})",
                reason=CloseReason.VERSION_MISMATCH,
            )
        if len(body) < HS2_HEADER_SIZE + crypto.SIGNATURE_SIZE:
            raise RemoteProtocolError("HS2 too short")
        magic, version, mode, _flags, _reserved = _HEAD.unpack_from(body)
        if magic != MAGIC:
            raise RemoteProtocolError("HS2 bad magic")
        try:
            parsed_mode = Mode(mode)
        except ValueError as exc:
            raise RemoteProtocolError(f"HS2 mode {mode} unknown") from exc
        header = cls(version, parsed_mode, body[8:40], body[40:72])
        return header, body[HS2_HEADER_SIZE:]


def refusal(max_version: int) -> bytes:
    """The body a responder sends when it shares no protocol version with the initiator."""
    return MAGIC + bytes([0, max_version])


@dataclass(frozen=True)
class Payload:
    """The encrypted, signed part of HS2 and HS3."""

    identity: bytes
    signature: bytes
    caps: tuple[str, ...]
    agent: str

    def to_bytes(self) -> bytes:
        body = {
            "id": self.identity,
            "sig": self.signature,
            "caps": list(self.caps),
            "agent": self.agent,
        }
        packed: bytes = msgpack.packb(body, use_bin_type=True)
        return packed

    @classmethod
    def parse(cls, plaintext: bytes) -> Payload:
        try:
            body = msgpack.unpackb(plaintext, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise RemoteProtocolError(f"handshake payload undecodable: {exc}") from exc
        if not isinstance(body, dict):
            raise RemoteProtocolError("handshake payload is not a map")
        identity, sig = body.get("id"), body.get("sig")
        caps, agent = body.get("caps"), body.get("agent", "")
        if not isinstance(identity, bytes) or len(identity) != crypto.PUBLIC_KEY_SIZE:
            raise RemoteProtocolError("handshake payload: bad identity key")
        if not isinstance(sig, bytes) or len(sig) != crypto.SIGNATURE_SIZE:
            raise RemoteProtocolError("handshake payload: bad signature field")
        if not isinstance(caps, list) or len(caps) > MAX_CAPS:
            raise RemoteProtocolError("handshake payload: bad capability list")
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in caps):
            raise RemoteProtocolError("handshake payload: bad capability name")
        if not isinstance(agent, str) or len(agent) > MAX_NAME:
            raise RemoteProtocolError("handshake payload: bad agent")
        return cls(identity, sig, tuple(caps), agent)


def x25519_public(private: X25519PrivateKey) -> bytes:
    """Raw 32-byte X25519 public key."""
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 shared secret; a low-order peer key (all-zero result) fails the handshake."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise HandshakeError("peer's ephemeral key is invalid") from exc


@dataclass
class KeySchedule:
    """Every intermediate value of one handshake, for the state machine and the vectors."""

    h1: bytes = b""
    h2: bytes = b""
    h3: bytes = b""
    h4: bytes = b""
    shared: bytes = b""
    k_hs_r2i: bytes = b""
    k_hs_i2r: bytes = b""
    k_i2r: bytes = b""
    k_r2i: bytes = b""

    def after_hs2_header(self, shared: bytes) -> None:
        self.shared = shared
        self.k_hs_r2i = crypto.hkdf(shared, self.h2, crypto.INFO_HS_R2I)
        self.k_hs_i2r = crypto.hkdf(shared, self.h2, crypto.INFO_HS_I2R)

    def after_hs3(self) -> None:
        self.k_i2r = crypto.hkdf(self.shared, self.h4, crypto.INFO_I2R)
        self.k_r2i = crypto.hkdf(self.shared, self.h4, crypto.INFO_R2I)


def negotiate_caps(mine: tuple[str, ...], theirs: tuple[str, ...]) -> tuple[str, ...]:
    """Capabilities both sides offered, sorted so both compute the same tuple."""
    return tuple(sorted(set(mine) & set(theirs)))
