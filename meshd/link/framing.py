"""Frames: a 4-byte big-endian length, then a body; after the handshake, a sealed body.

``FrameBuffer`` cuts a byte stream into frame bodies and refuses an oversize length
as soon as the 4 prefix bytes are in, so a hostile peer can never make us buffer more
than one maximum frame. ``FrameSealer``/``FrameOpener`` hold one direction's key and
nonce counter: every frame is sealed with ChaCha20-Poly1305 under nonce = the counter,
with the length prefix as associated data, and the counter advances by one. A replayed,
reordered, dropped, truncated or altered frame therefore fails authentication on the
receiver, which treats that as fatal: there is no resynchronisation.

The transport path copies as little as it can, since a stream moves megabytes per
second through here: ``seal`` encrypts straight into the frame it returns (prefix,
ciphertext and tag in one fresh buffer), and ``FrameBuffer.open_next`` decrypts
straight from the receive buffer into the opener's reused plaintext buffer, so the
only per-frame allocation on the receiving side is whatever the message decoder keeps.
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
    """Accumulates received bytes and yields complete frame bodies, one at a time.

    The bytes live in one buffer between a read and a write offset. A socket can read
    straight into its free tail (``writable`` + ``commit``, for ``BufferedProtocol``),
    and consumed frames only move the read offset, so receiving costs no copy until a
    frame is opened. The buffer is never resized in place (a larger one replaces it),
    so a view handed out earlier never blocks it or dangles.
    """

    def __init__(self, max_frame: int) -> None:
        self._buf = bytearray()
        self._start = 0  # first unconsumed byte
        self._end = 0  # one past the last received byte
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (any split, any size)."""
        size = memoryview(data).nbytes
        self._make_room(size)
        self._buf[self._end : self._end + size] = data
        self._end += size

    def writable(self, size: int, most: int = 0) -> memoryview:
        """Free space at the end for a socket to read into: ``size`` bytes, or up to
        ``most`` if the buffer already has them (it grows only for ``size``); ``commit``
        then says how many bytes were written."""
        self._make_room(size)
        end = self._end
        return memoryview(self._buf)[end : min(len(self._buf), end + max(size, most))]

    def commit(self, size: int) -> None:
        """``size`` bytes were written at the start of the last ``writable`` view."""
        if not 0 <= size <= len(self._buf) - self._end:
            raise ValueError("committed more than the writable space")
        self._end += size

    def _make_room(self, size: int) -> None:
        free = len(self._buf) - self._end
        if free >= size:
            return
        start, held = self._start, self._end - self._start
        with memoryview(self._buf) as view, view[start : self._end] as kept:
            if start and len(self._buf) - held >= size and held <= start:
                # Slide the partial frame to the front: a same-length slice assignment
                # never resizes, and source and target do not overlap.
                self._buf[:held] = kept
            else:
                grown = bytearray(max(held + size, 2 * len(self._buf)))
                grown[:held] = kept
                self._buf = grown
        self._start, self._end = 0, held

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """Bytes of buffer held, used or not."""
        return len(self._buf)

    def trim(self) -> None:
        """Give back the space a burst (a stream) grew, if nothing is pending."""
        if self._start == self._end:
            self._buf = bytearray()
            self._start = self._end = 0

    def _frame_end(self) -> int | None:
        """End offset of the first frame if it is complete; refuses an oversize length
        as soon as its prefix is in."""
        start = self._start
        if self._end - start < LENGTH_PREFIX_SIZE:
            return None
        (length,) = _LENGTH.unpack_from(self._buf, start)
        if length > self.max_frame:
            raise RemoteProtocolError(f"frame length {length} exceeds limit {self.max_frame}")
        end = start + LENGTH_PREFIX_SIZE + length
        return end if self._end >= end else None

    def _consume(self, end: int) -> None:
        self._start = end
        if self._start == self._end:
            self._start = self._end = 0

    def next_frame(self) -> tuple[bytes, bytes] | None:
        """(length prefix, body) of the next complete frame, or None if more is needed."""
        end = self._frame_end()
        if end is None:
            return None
        start = self._start
        with memoryview(self._buf) as view:
            prefix = bytes(view[start : start + LENGTH_PREFIX_SIZE])
            body = bytes(view[start + LENGTH_PREFIX_SIZE : end])
        self._consume(end)
        return prefix, body

    def open_next(self, opener: FrameOpener) -> memoryview | None:
        """Authenticate and decrypt the next complete sealed frame in place, or None.

        Same limits as ``next_frame``; the body is read through a memoryview of the
        receive buffer, never copied. The plaintext is a view of ``opener``'s buffer,
        valid until its next ``open_view``: decode it before asking for another frame.
        """
        end = self._frame_end()
        if end is None:
            return None
        start = self._start
        with memoryview(self._buf) as view, view[start + LENGTH_PREFIX_SIZE : end] as body:
            prefix = bytes(view[start : start + LENGTH_PREFIX_SIZE])
            plaintext = opener.open_view(prefix, body)
        self._consume(end)
        return plaintext


class FrameSealer:
    """Seals outgoing frames for one direction: key, and a counter starting at 0."""

    def __init__(self, key: bytes, max_frame: int = MAX_FRAME) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0
        self.max_frame = max_frame

    def seal(self, plaintext: bytes | bytearray | memoryview) -> bytearray:
        """The complete wire frame (prefix + ciphertext + tag) for ``plaintext``.

        The frame is a fresh buffer each time (the transport may hold on to it until
        the peer has taken it), written once: no ``prefix + ciphertext`` copy.
        """
        size = memoryview(plaintext).nbytes
        length = size + TAG_SIZE
        if length > self.max_frame:
            raise LocalProtocolError(f"message of {length} bytes exceeds frame limit")
        if self.counter > MAX_NONCE:
            raise LocalProtocolError("nonce counter exhausted; the session must be renewed")
        out = bytearray(LENGTH_PREFIX_SIZE + length)
        _LENGTH.pack_into(out, 0, length)
        prefix = bytes(out[:LENGTH_PREFIX_SIZE])
        with memoryview(out) as view, view[LENGTH_PREFIX_SIZE:] as sealed:
            self._aead.encrypt_into(aead_nonce(self.counter), plaintext, prefix, sealed)
        self.counter += 1
        return out


class FrameOpener:
    """Opens incoming frames for one direction, insisting on the next counter value."""

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0
        # Reused plaintext buffer for open_view; grows to the largest frame seen (at most
        # MAX_FRAME), is replaced rather than resized so an old view never dangles.
        self._plain = bytearray()

    def trim(self) -> None:
        """Give back the plaintext buffer (it regrows to the next frame's size)."""
        self._plain = bytearray()

    def _check(self, body: bytes | memoryview) -> None:
        if len(body) < TAG_SIZE:
            raise RemoteProtocolError("sealed frame shorter than its tag")
        if self.counter > MAX_NONCE:
            raise RemoteProtocolError("nonce counter exhausted")

    def open(self, prefix: bytes, body: bytes | memoryview) -> bytes:
        """Plaintext of the frame; RemoteProtocolError if it is not exactly the next one."""
        self._check(body)
        try:
            plaintext = self._aead.decrypt(aead_nonce(self.counter), body, prefix)
        except InvalidTag as exc:
            raise _unauthentic() from exc
        self.counter += 1
        return plaintext

    def open_view(self, prefix: bytes, body: memoryview) -> memoryview:
        """As ``open``, decrypting into the reused buffer; the view is valid until the
        next call. On failure the buffer's contents are garbage and nothing is returned."""
        self._check(body)
        size = len(body) - TAG_SIZE
        if len(self._plain) < size:
            self._plain = bytearray(max(size, min(2 * len(self._plain), MAX_FRAME)))
        plaintext = memoryview(self._plain)[:size]
        try:
            self._aead.decrypt_into(aead_nonce(self.counter), body, prefix, plaintext)
        except InvalidTag as exc:
            plaintext.release()
            raise _unauthentic() from exc
        self.counter += 1
        return plaintext


def _unauthentic() -> RemoteProtocolError:
    return RemoteProtocolError(
        "frame failed authentication (altered, replayed, reordered or dropped)"
    )
