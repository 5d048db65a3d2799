"""Stream bookkeeping for the session: incoming streams with credit, outgoing credit.

A stream carries one large payload (a bundle, an artifact) as ``stream_chunk``
messages between ``stream_open`` and ``stream_end`` (which carries the SHA-256 of all
the bytes). Flow control is credit based, as in HTTP/2: the sender may have at most
``STREAM_WINDOW`` bytes that the receiver's consumer has not yet taken; the receiver
returns credit with ``stream_window`` as its consumer reads. So the session reader
never blocks on a slow consumer (heartbeats keep flowing) and a receiver buffers at
most one window per stream; a sender that overruns its credit is a protocol violation.

Both ends hash with ``meshd.link.hashing`` (on a worker thread where there are cores
to spare). The receiver compares the digest when its consumer reaches the end, after
the last byte has been hashed, so a mismatch still surfaces as ``StreamError`` from
the iteration, never as success.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Self

from meshd.link.errors import CloseReason, LinkError, RemoteProtocolError, StreamError
from meshd.link.hashing import BackgroundSha256
from meshd.link.limits import STREAM_WINDOW
from meshd.link.messages import StreamOpen


class IncomingStream:
    """A stream the peer is sending us; iterate it for chunks (``bytes``) in order.

    Iteration ends after the last chunk if the SHA-256 matched, and raises
    ``StreamError`` if it did not or the sender aborted, or the session's error if the
    link died. Credit goes back to the sender as chunks are consumed, so memory stays
    bounded by one window however slow the consumer is.
    """

    def __init__(
        self,
        opened: StreamOpen,
        grant: Callable[[int, int], None],
        window: int = STREAM_WINDOW,
    ) -> None:
        self.sid = opened.sid
        self.kind = opened.kind
        self.name = opened.name
        self.size = opened.size
        self.meta = dict(opened.meta)
        self.received = 0
        self.digest: bytes | None = None
        self._grant = grant
        self._window = window
        self._limit = window  # total bytes the sender may have sent so far
        self._consumed = 0
        self._granted_at = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._hasher = BackgroundSha256()
        self._expected: bytes | None = None  # stream_end's digest, checked at the end
        self._ended = False
        self._error: LinkError | None = None
        self._wakeup = asyncio.Event()

    # -- fed by the session reader (synchronous, never blocks) -------------------------

    def feed(self, data: bytes) -> None:
        """Queue one chunk; overrunning the credit or the declared size is fatal."""
        if self._ended or self._error is not None:
            return
        self.received += len(data)
        if self.received > self._limit:
            raise RemoteProtocolError(
                f"stream {self.sid}: sender exceeded its flow-control window",
                reason=CloseReason.FLOW_CONTROL,
            )
        if self.size is not None and self.received > self.size:
            raise RemoteProtocolError(f"stream {self.sid}: more bytes than its declared size")
        self._hasher.update(data)
        self._chunks.append(data)
        self._wakeup.set()

    def end(self, sha256: bytes) -> None:
        """The sender finished; the digest is compared once the consumer gets there."""
        if self._ended or self._error is not None:
            return
        self._ended = True
        self._expected = sha256
        if self.size is not None and self.received != self.size:
            self._error = StreamError(
                f"stream {self.sid}: got {self.received} bytes, {self.size} declared"
            )
            self._hasher.discard()
        self._wakeup.set()

    def fail(self, error: LinkError) -> None:
        """The sender aborted or the link died: wake the consumer with ``error``."""
        if self._ended and self._error is None:
            return  # everything arrived; let the consumer finish (and check the digest)
        if self._error is None:
            self._error = error
        self._chunks.clear()
        self._hasher.discard()
        self._wakeup.set()

    async def _verify(self) -> None:
        """At the end: the digest of every byte received against ``stream_end``'s."""
        assert self._expected is not None
        self.digest = await self._hasher.digest()
        if not hmac.compare_digest(self.digest, self._expected):
            self._error = StreamError(f"stream {self.sid} ({self.name}): SHA-256 mismatch")
        self._expected = None

    @property
    def finished(self) -> bool:
        """True once the consumer has seen the end (or an error)."""
        return (self._ended or self._error is not None) and not self._chunks

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (at most one window)."""
        return self.received - self._consumed

    # -- consumer side ----------------------------------------------------------------

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._ended:
                if self._expected is not None:
                    await self._verify()
                    continue
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        if self._hasher.pending > self._window:
            # Chunks the consumer has taken stay pinned until hashed: bound them too.
            await self._hasher.settle()
        chunk = self._chunks.popleft()
        self._consumed += len(chunk)
        if self._consumed - self._granted_at >= self._window // 2:
            credit = self._consumed - self._granted_at
            self._granted_at = self._consumed
            self._limit += credit
            self._grant(self.sid, credit)
        return chunk

    async def read_all(self, max_size: int) -> bytes:
        """The whole stream as bytes, refusing streams larger than ``max_size``."""
        parts: list[bytes] = []
        total = 0
        async for chunk in self:
            total += len(chunk)
            if total > max_size:
                raise StreamError(f"stream {self.sid} larger than {max_size} bytes")
            parts.append(chunk)
        return b"".join(parts)


class OutgoingStream:
    """Credit left for a stream we send; ``wait_credit`` blocks until there is some."""

    def __init__(self, sid: int, window: int = STREAM_WINDOW) -> None:
        self.sid = sid
        self.credit = window
        self.error: LinkError | None = None
        self._wakeup = asyncio.Event()

    def add_credit(self, credit: int) -> None:
        self.credit += credit
        self._wakeup.set()

    def fail(self, error: LinkError) -> None:
        if self.error is None:
            self.error = error
        self._wakeup.set()

    async def take(self, size: int) -> None:
        """Wait until ``size`` bytes may be sent, then spend them."""
        while self.credit < size:
            if self.error is not None:
                raise self.error
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.error is not None:
            raise self.error
        self.credit -= size


async def iter_chunks(
    source: bytes | bytearray | memoryview | AsyncIterator[bytes], chunk_size: int
) -> AsyncIterator[memoryview | bytes]:
    """Cut a buffer or an async iterator of bytes into pieces of at most ``chunk_size``.

    Buffers are sliced with memoryview (no copies); large iterator items are split.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source).cast("B")
        for start in range(0, len(view), chunk_size):
            yield view[start : start + chunk_size]
        return
    async for item in source:
        if len(item) <= chunk_size:
            if item:
                yield item
            continue
        view = memoryview(item).cast("B")
        for start in range(0, len(view), chunk_size):
            yield view[start : start + chunk_size]
