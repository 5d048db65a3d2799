"""Moving content-store blobs over a link session, in both directions.

A blob travels as a link stream of kind ``blob`` named by its hex digest. The
receiving side writes it through ``ContentStore.writer``, so it becomes visible only
after its size and digest verify. Streams may still be finishing when the request
that triggered them is answered, so callers wait on ``settle`` (pushes) or on the
per-digest futures of ``fetch`` (pulls).

Limits are enforced before a byte is stored: a stream without a declared size, one
larger than the cap, or (on the fetching side) a blob nobody asked for is refused.
A blob this node cannot write (disk full, I/O error) fails its waiter with a
``LocalWriteError``: the fetching job fails here, and the sender is not blamed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshd.jobs.diskio import LocalWriteError, is_write_error
from meshd.link import IncomingStream, LinkSession, RejectRequest
from meshd.link.errors import ErrorCode, LinkError
from meshd.mesh.content.store import ContentError, ContentStore, check_digest

_LOGGER = logging.getLogger(__name__)

BLOB_STREAM = "blob"

# How long a request handler waits for blob streams of the same session to land.
SETTLE_TIMEOUT = 120.0


@dataclass
class _SessionBlobs:
    receiving: set[asyncio.Task[None]] = field(default_factory=set)
    expected: dict[str, asyncio.Future[None]] = field(default_factory=dict)


class BlobExchange:
    def __init__(
        self,
        store: ContentStore,
        *,
        max_blob: int,
        accept_unrequested: Callable[[LinkSession], bool],
    ) -> None:
        """``accept_unrequested(session)``: may this peer push blobs we did not ask for?"""
        self.store = store
        self.max_blob = max_blob
        self._accept_unrequested = accept_unrequested
        self._sessions: dict[LinkSession, _SessionBlobs] = {}

    def _state(self, session: LinkSession) -> _SessionBlobs:
        return self._sessions.setdefault(session, _SessionBlobs())

    def forget(self, session: LinkSession) -> None:
        state = self._sessions.pop(session, None)
        if state is None:
            return
        for future in state.expected.values():
            if not future.done():
                future.set_exception(LinkError("session closed before the blob arrived"))
            future.exception()  # mark retrieved: nobody may be waiting any more

    # -- receiving ----------------------------------------------------------------------

    async def on_stream(self, session: LinkSession, incoming: IncomingStream) -> None:
        """Stream handler for kind ``blob``."""
        state = self._state(session)
        task = asyncio.current_task()
        assert task is not None
        state.receiving.add(task)
        try:
            await self._receive(session, state, incoming)
        finally:
            state.receiving.discard(task)

    async def _receive(
        self, session: LinkSession, state: _SessionBlobs, incoming: IncomingStream
    ) -> None:
        digest = incoming.name
        waiter = state.expected.get(digest)
        try:
            size = self._admissible(session, incoming, requested=waiter is not None)
            if self.store.has(digest):
                async for _chunk in incoming:
                    pass
            else:
                with self.store.writer(digest, size) as out:
                    async for chunk in incoming:
                        out.write(chunk)
        except (ContentError, LinkError) as exc:
            _LOGGER.warning("refused blob from %s: %s", session.peer.fingerprint_hex[:12], exc)
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        except OSError as exc:
            if not is_write_error(exc):
                raise
            # Our disk, not the peer: whoever waits for this blob fails with where.
            error = LocalWriteError.of(exc, self.store.root)
            _LOGGER.error("cannot store blob %s: %s", digest[:12], error)  # noqa: TRY400
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _admissible(
        self, session: LinkSession, incoming: IncomingStream, *, requested: bool
    ) -> int:
        """The declared size of a blob stream we may store; ContentError otherwise."""
        digest = check_digest(incoming.name)
        if not requested and not self._accept_unrequested(session):
            raise ContentError(f"unrequested blob {digest[:12]} from this peer")
        size = incoming.size
        if size is None or size > self.max_blob:
            raise ContentError(f"blob {digest[:12]} size {size} exceeds {self.max_blob}")
        return size

    async def settle(self, session: LinkSession, timeout: float = SETTLE_TIMEOUT) -> None:  # noqa: ASYNC109
        """Wait until every blob stream this session has opened so far has landed."""
        state = self._state(session)
        pending = list(state.receiving)
        if pending:
            async with asyncio.timeout(timeout):
                await asyncio.wait(pending)

    # -- sending ------------------------------------------------------------------------

    async def push(self, session: LinkSession, digests: Iterable[str]) -> int:
        """Send blobs from our store; returns how many bytes were sent."""
        sent = 0
        for digest in digests:
            path = self.store.path(digest)
            if not self.store.has(digest):  # re-verified: a damaged blob is never served
                raise RejectRequest(ErrorCode.NOT_FOUND, f"no blob {digest[:12]}")
            await session.send_file(path, kind=BLOB_STREAM, name=digest)
            sent += path.stat().st_size
        return sent

    def expect(self, session: LinkSession, digests: Iterable[str]) -> list[asyncio.Future[None]]:
        """Register blobs we are about to ask for; await the futures for their arrival."""
        state = self._state(session)
        loop = asyncio.get_running_loop()
        futures = []
        for digest in digests:
            future = state.expected.get(digest)
            if future is None or future.done():
                future = loop.create_future()
                state.expected[digest] = future
            futures.append(future)
        return futures

    def done_expecting(self, session: LinkSession, digests: Iterable[str]) -> None:
        state = self._sessions.get(session)
        if state is None:
            return
        for digest in digests:
            state.expected.pop(digest, None)
