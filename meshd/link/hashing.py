"""SHA-256 of a stream, computed on a worker thread while the event loop moves bytes.

Every stream is hashed on both ends (``stream_end`` carries the digest). On the event
loop that is the biggest per-byte cost after the cipher, and it serialises with
everything else the loop does; ``hashlib`` releases the GIL for large updates, so on a
worker thread it runs beside the loop on another core instead.

That pays only with a core to spare: the hand-offs cost CPU of their own (up to a few
tenths of a ms per MiB per end, docs/PERFORMANCE.md "Peer link"), and on a 2-CPU
machine running both ends a link moved fewer MiB/s with the thread than without. So hashing
moves to the thread only when this process may run on more than two CPUs
(``OFFLOAD``); otherwise every update is hashed inline, in order, on the loop.

One daemon thread per process does all the hashing, taking batches from a FIFO queue,
so the updates of each hash run in the order they were made. Handing work to a thread
is not free (a futex wake, GIL hand-offs), so updates are batched to ``BATCH`` bytes,
and the loop hears back only when it asks (``settle``), not once per batch. Small
updates with nothing outstanding are hashed inline. Callers bound memory with
``pending`` (bytes handed over and not yet hashed, which they must keep unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
from typing import Final

Buffer = bytes | bytearray | memoryview

# Updates smaller than this are hashed inline when nothing is outstanding: a small
# message or blob is cheaper to hash than to hand to a thread.
INLINE_BELOW: Final = 64 * 1024

# Bytes collected before a batch goes to the worker (four default stream chunks).
BATCH: Final = 1024 * 1024


def _spare_cores() -> bool:
    try:
        return len(os.sched_getaffinity(0)) > 2
    except AttributeError:  # not Linux
        return (os.cpu_count() or 1) > 2


# Whether new hashes use the worker thread (read when each is created; tests and the
# benchmark set it to compare both ways).
OFFLOAD = _spare_cores()

_Work = tuple["BackgroundSha256", list[Buffer], int]
_queue: queue.SimpleQueue[_Work] = queue.SimpleQueue()
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def _submit(work: _Work) -> None:
    global _worker
    with _worker_lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work, name="meshd-link-sha256", daemon=True)
            _worker.start()
    _queue.put(work)


def _work() -> None:
    """The worker thread: hash batches in queue order, forever (it is a daemon)."""
    while True:
        hasher, batch, size = _queue.get()
        hasher._hash_batch(batch, size)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class BackgroundSha256:
    """An incremental SHA-256 whose large updates run on the hashing thread."""

    def __init__(self, offload: bool | None = None) -> None:
        """``offload``: use the worker thread (default: ``OFFLOAD``)."""
        self._offload = OFFLOAD if offload is None else offload
        self._hash = hashlib.sha256()
        self._batch: list[Buffer] = []
        self._batch_bytes = 0
        # Bytes submitted to / hashed by the worker. Only the loop writes _submitted,
        # only the worker writes _hashed and _failure; _lock pairs them with _waiter.
        self._submitted = 0
        self._hashed = 0
        self._failure: BaseException | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._lock = threading.Lock()
        self._digest: bytes | None = None

    @property
    def pending(self) -> int:
        """Bytes handed to ``update`` and not yet hashed (the caller still pins them)."""
        return self._batch_bytes + self._submitted - self._hashed

    def update(self, data: Buffer) -> None:
        """Hash ``data`` next, without blocking; it must not change until hashed."""
        if self._digest is not None:
            raise RuntimeError("digest already taken")
        size = memoryview(data).nbytes
        if not size:
            return
        if (not self._offload or size < INLINE_BELOW) and not self.pending:
            self._hash.update(data)  # the worker holds nothing of ours: safe inline
            return
        self._batch.append(data)
        self._batch_bytes += size
        if self._batch_bytes >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        self._submitted += size
        _submit((self, batch, size))

    def _hash_batch(self, batch: list[Buffer], size: int) -> None:
        """Worker thread: the only code touching the hash while work is outstanding."""
        try:
            if self._failure is None:
                for data in batch:
                    self._hash.update(data)
        except BaseException as exc:  # noqa: BLE001 - reported to whoever settles
            self._failure = exc
        with self._lock:
            self._hashed += size
            waiter = None
            if self._hashed == self._submitted and self._waiter is not None:
                waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, future = waiter
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_wake, future)

    async def settle(self) -> None:
        """Wait until everything handed to ``update`` so far has been hashed."""
        self._flush()
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._hashed == self._submitted:
                    break
                future = loop.create_future()
                self._waiter = (loop, future)
            await future
        if self._failure is not None:
            raise self._failure

    async def digest(self) -> bytes:
        """The SHA-256 of everything updated; no more updates after this."""
        if self._digest is None:
            await self.settle()
            self._digest = self._hash.digest()
        return self._digest

    def discard(self) -> None:
        """Forget the unsent batch (the stream failed); submitted work just finishes."""
        self._batch, self._batch_bytes = [], 0
