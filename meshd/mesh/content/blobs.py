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

Which store a blob lands in depends on why it came: a blob we asked for (artifacts
of our own offloaded build) goes to the node's own store; one an offloader pushes
(its bundle) goes to *that offloader's* store (:mod:`~meshd.mesh.content.stores`),
within its quota of bytes in flight and bytes and blobs at rest.
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
from meshd.mesh.content.stores import StoreSet, peer_key

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
        stores: StoreSet,
        *,
        max_blob: int,
        accept_unrequested: Callable[[LinkSession], bool],
    ) -> None:
        """``accept_unrequested(session)``: may this peer push blobs we did not ask for?"""
        self.stores = stores
        self.store: ContentStore = stores.own
        self.max_blob = max_blob
        self._accept_unrequested = accept_unrequested
        self._sessions: dict[LinkSession, _SessionBlobs] = {}
        # Declared bytes of pushed blobs still arriving, per peer (all its sessions).
        self._in_flight: dict[str, int] = {}

    def store_for(self, session: LinkSession) -> ContentStore:
        """The store of the offloader on the other end of ``session`` (receiver side)."""
        return self.stores.for_peer(session.peer.fingerprint_hex)

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
        key = peer_key(session.peer.fingerprint_hex)
        counted = 0
        try:
            size = self._admissible(session, incoming, requested=waiter is not None)
            store = self.store if waiter is not None else self.store_for(session)
            if await asyncio.to_thread(store.has, digest):
                async for _chunk in incoming:
                    pass
            else:
                if waiter is None:
                    self._check_quota(key, store, size)
                    counted = size
                    self._in_flight[key] = self._in_flight.get(key, 0) + size
                out = await asyncio.to_thread(store.writer, digest, size)
                try:
                    async for chunk in incoming:
                        out.write(chunk)
                except BaseException:
                    out.abort()
                    raise
                await asyncio.to_thread(out.commit)
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
        finally:
            if counted:
                left = self._in_flight.get(key, 0) - counted
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)
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

    def _check_quota(self, key: str, store: ContentStore, size: int) -> None:
        """Refuse a pushed blob that would take its offloader over its quota."""
        quota = self.stores.quota
        flying = self._in_flight.get(key, 0)
        if flying + size > quota.in_flight_bytes:
            raise ContentError(
                f"over quota: {flying + size} bytes in flight from this peer "
                f"(limit {quota.in_flight_bytes})"
            )
        if store.bytes + flying + size > quota.at_rest_bytes:
            raise ContentError(
                f"over quota: {store.bytes + flying + size} bytes stored for this peer "
                f"(limit {quota.at_rest_bytes})"
            )
        if store.count >= quota.at_rest_blobs:
            raise ContentError(
                f"over quota: {store.count} blobs stored for this peer "
                f"(limit {quota.at_rest_blobs})"
            )

    def over_quota(self, session: LinkSession) -> str | None:
        """Why this offloader's store is full (for ``compile_reject busy``), or None."""
        store = self.store_for(session)
        quota = self.stores.quota
        if store.bytes > quota.at_rest_bytes:
            return f"your content here is {store.bytes} bytes (quota {quota.at_rest_bytes})"
        if store.count > quota.at_rest_blobs:
            return f"you have {store.count} blobs here (quota {quota.at_rest_blobs})"
        return None

    async def settle(self, session: LinkSession, timeout: float = SETTLE_TIMEOUT) -> None:  # noqa: ASYNC109
        """Wait until every blob stream this session has opened so far has landed."""
        state = self._state(session)
        pending = list(state.receiving)
        if pending:
            async with asyncio.timeout(timeout):
                await asyncio.wait(pending)

    # -- sending ------------------------------------------------------------------------

    async def push(
        self, session: LinkSession, digests: Iterable[str], store: ContentStore | None = None
    ) -> int:
        """Send blobs from ``store`` (default: our own); returns how many bytes were sent."""
        source = self.store if store is None else store
        sent = 0
        for digest in digests:
            try:
                path = source.path(digest)
            except ContentError as exc:
                raise RejectRequest(ErrorCode.BAD_REQUEST, str(exc)) from None
            # re-verified: a damaged blob is never served
            if not await asyncio.to_thread(source.has, digest):
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
