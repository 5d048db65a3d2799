"""Node fingerprints for tests: 64 hex digits, as ``Identity.fingerprint_hex`` gives them."""

from __future__ import annotations

import secrets

FINGERPRINT_BYTES = 32  # SHA-256 of the Ed25519 public key


def random_fingerprint() -> str:
    """A fresh, valid-looking fingerprint no real node has."""
    return secrets.token_hex(FINGERPRINT_BYTES)
