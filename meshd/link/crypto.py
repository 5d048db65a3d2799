"""Cryptographic building blocks of the link: fingerprints, key schedule, nonces, AEAD.

Only ``cryptography`` primitives are used (X25519, Ed25519, HKDF-SHA256,
ChaCha20-Poly1305). Every label is a distinct ASCII string starting with the protocol
name so no signature, key or MAC can be replayed in another context.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from meshd.link.errors import HandshakeError
from meshd.link.limits import MAX_NONCE

PROTOCOL_NAME: Final = b"meshd-link-v1"

# Domain-separation labels (PROTOCOL.md "Key schedule"). Never reuse one for two jobs.
LABEL_SIG_RESPONDER: Final = PROTOCOL_NAME + b" sig responder"
LABEL_SIG_INITIATOR: Final = PROTOCOL_NAME + b" sig initiator"
INFO_HS_R2I: Final = PROTOCOL_NAME + b" hs r2i"
INFO_HS_I2R: Final = PROTOCOL_NAME + b" hs i2r"
INFO_I2R: Final = PROTOCOL_NAME + b" i2r"
INFO_R2I: Final = PROTOCOL_NAME + b" r2i"

KEY_SIZE: Final = 32
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
NONCE_SIZE: Final = 32
FINGERPRINT_SIZE: Final = 32

_NONCE_PREFIX: Final = b"\x00\x00\x00\x00"
_COUNTER = struct.Struct(">Q")


def fingerprint(public_key: bytes) -> bytes:
    """SHA-256 of the raw 32-byte Ed25519 public key: the name of a node."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).digest()


def raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of the public half of an Ed25519 key."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def transcript_start() -> bytes:
    """h0 = SHA-256(protocol name): the empty transcript."""
    return hashlib.sha256(PROTOCOL_NAME).digest()


def mix(h: bytes, data: bytes) -> bytes:
    """Chain ``data`` into the transcript hash: SHA-256(h || data)."""
    return hashlib.sha256(h + data).digest()


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) producing one 32-byte key."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(ikm)


def aead_nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce: four zero bytes, then the 64-bit BE counter."""
    if not 0 <= counter <= MAX_NONCE:
        raise OverflowError("nonce counter exhausted")
    return _NONCE_PREFIX + _COUNTER.pack(counter)


def sign(private_key: Ed25519PrivateKey, label: bytes, h: bytes, public_key: bytes) -> bytes:
    """Ed25519 signature over label || transcript hash || signer's own public key."""
    return private_key.sign(label + h + public_key)


def verify(public_key: bytes, signature: bytes, label: bytes, h: bytes) -> None:
    """Check a ``sign`` result; raise HandshakeError if it does not verify."""
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, label + h + public_key)
    except (InvalidSignature, ValueError) as exc:
        raise HandshakeError("peer's transcript signature does not verify") from exc


def seal_once(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt one handshake payload under a single-use key (nonce counter 0)."""
    return ChaCha20Poly1305(key).encrypt(aead_nonce(0), plaintext, aad)


def open_once(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt one handshake payload; a wrong key or altered byte is a HandshakeError."""
    try:
        return ChaCha20Poly1305(key).decrypt(aead_nonce(0), ciphertext, aad)
    except InvalidTag as exc:
        raise HandshakeError("handshake payload failed authentication") from exc
