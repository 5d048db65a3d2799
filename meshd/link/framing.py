"""Frames: a 4-byte big-endian length, then a body; after the handshake, a sealed body.

``FrameBuffer`` cuts a byte stream into frame bodies and refuses an oversize length
as soon as the 4 prefix bytes are in, so a hostile peer can never make us buffer more
than one maximum frame. ``FrameSealer``/``FrameOpener`` hold one direction's key and
nonce counter: every frame is sealed with ChaCha20-Poly1305 under nonce = the counter,
with the length prefix as associated data, and the counter advances by one. A replayed,
reordered, dropped, truncated or altered frame therefore fails authentication on the
receiver, which treats that as fatal: there is no resynchronisation.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshd.link.crypto import aead_nonce
from meshd.link.errors import LocalProtocolError, RemoteProtocolError
from meshd.link.limits import LENGTH_PREFIX_SIZE, MAX_FRAME, MAX_NONCE, TAG_SIZE

_LENGTH = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    """Length-prefix an unsealed body (handshake messages)."""
    return _LENGTH.pack(len(body)) + body


class FrameBuffer:
    """Accumulates received bytes and yields complete frame bodies, one at a time."""

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (any split, any size)."""
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buf)

    def next_frame(self) -> tuple[bytes, bytes] | None:
        """(length prefix, body) of the next complete frame, or None if more is needed."""
        buf = self._buf
        if len(buf) < LENGTH_PREFIX_SIZE:
            return None
        (length,) = _LENGTH.unpack_from(buf)
        if length > self.max_frame:
            raise RemoteProtocolError(f"frame length {length} exceeds limit {self.max_frame}")
        end = LENGTH_PREFIX_SIZE + length
        if len(buf) < end:
            return None
        prefix = bytes(buf[:LENGTH_PREFIX_SIZE])
        with memoryview(buf) as view:
            body = bytes(view[LENGTH_PREFIX_SIZE:end])
        # Deleting a bytearray's prefix is O(1) in CPython (it moves the start offset).
        del buf[:end]
        return prefix, body


class FrameSealer:
    """Seals outgoing frames for one direction: key, and a counter starting at 0."""

    def __init__(self, key: bytes, max_frame: int = MAX_FRAME) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0
        self.max_frame = max_frame

    def seal(self, plaintext: bytes) -> bytes:
        """The complete wire frame (prefix + ciphertext + tag) for ``plaintext``."""
        length = len(plaintext) + TAG_SIZE
        if length > self.max_frame:
            raise LocalProtocolError(f"message of {length} bytes exceeds frame limit")
        if self.counter > MAX_NONCE:
            raise LocalProtocolError("nonce counter exhausted; the session must be renewed")
        prefix = _LENGTH.pack(length)
        sealed = self._aead.encrypt(aead_nonce(self.counter), plaintext, prefix)
        self.counter += 1
        return prefix + sealed


class FrameOpener:
    """Opens incoming frames for one direction, insisting on the next counter value."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0

    def open(self, prefix: bytes, body: bytes) -> bytes:
        """Plaintext of the frame; RemoteProtocolError if it is not exactly the next one."""
        if len(body) < TAG_SIZE:
            raise RemoteProtocolError("sealed frame shorter than its tag")
        if self.counter > MAX_NONCE:
            raise RemoteProtocolError("nonce counter exhausted")
        try:
            plaintext = self._aead.decrypt(aead_nonce(self.counter), body, prefix)
        except InvalidTag as exc:
            raise RemoteProtocolError(
                "frame failed authentication (altered, replayed, reordered or dropped)"
            ) from exc
        self.counter += 1
        return plaintext
