"""This node's Ed25519 identity: created once in the data directory, loaded after.

The private key is the node's name on the mesh (its fingerprint is SHA-256 of the raw
public key), so it must never be readable by others and never be replaced by accident:
it is written to a temporary file with mode 0600, fsynced, and linked into place with
``os.link``, which fails if the file already exists. Two daemons starting at once on a
fresh data directory therefore end up with the same key, never two.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from meshd.link.crypto import fingerprint as _fingerprint
from meshd.link.crypto import raw_public_key

_LOGGER = logging.getLogger(__name__)

IDENTITY_FILE: Final = "identity.pem"

# Hex characters in the short human form: 64 bits, enough to tell a household's or a
# build farm's nodes apart at a glance. Never use it for a trust decision.
SHORT_HEX: Final = 16

_FINGERPRINT_HEX = re.compile(r"^[0-9a-f]{64}$")


class IdentityError(Exception):
    """The identity file exists but cannot be used (unreadable, not an Ed25519 key)."""


def format_fingerprint(fp: bytes) -> str:
    """Hex in groups of four: ``ab12 cd34 ...`` (how the CLI shows a fingerprint)."""
    text = fp.hex()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def short_fingerprint(fp: bytes) -> str:
    """The first 16 hex characters, for logs and tables."""
    return fp.hex()[:SHORT_HEX]


def parse_fingerprint(text: str) -> bytes:
    """Accept a fingerprint as typed: hex, any case, with spaces, colons or dashes."""
    cleaned = re.sub(r"[\s:\-]", "", text).lower()
    if not _FINGERPRINT_HEX.match(cleaned):
        raise ValueError("a fingerprint is 64 hex characters (SHA-256 of the public key)")
    return bytes.fromhex(cleaned)


@dataclass(frozen=True)
class Identity:
    """An Ed25519 key pair and the names derived from it."""

    private_key: Ed25519PrivateKey
    public_key: bytes
    fingerprint: bytes

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey) -> Identity:
        public = raw_public_key(key)
        return cls(key, public, _fingerprint(public))

    @classmethod
    def generate(cls) -> Identity:
        return cls.from_private_key(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A deterministic identity from a 32-byte seed (tests and vectors only)."""
        return cls.from_private_key(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @property
    def display(self) -> str:
        """Grouped hex, for humans comparing fingerprints."""
        return format_fingerprint(self.fingerprint)

    @property
    def short(self) -> str:
        return short_fingerprint(self.fingerprint)

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)

    def to_pem(self) -> bytes:
        return self.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def load_or_create(data_dir: Path) -> Identity:
    """The node identity in ``data_dir`` (created with mode 0600 on first use)."""
    path = data_dir / IDENTITY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        _create(path, Identity.generate())
    return load(path)


def load(path: Path) -> Identity:
    """Read an identity file, tightening its permissions if they were too open."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        _LOGGER.warning("identity file %s had mode %o; setting 0600", path, mode)
        path.chmod(0o600)
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not a readable private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return Identity.from_private_key(key)


def _create(path: Path, identity: Identity) -> None:
    """Write atomically and without clobbering: temp file (0600) + fsync + link."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.to_pem())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            _LOGGER.info("identity %s was created concurrently; using that one", path)
        else:
            _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
