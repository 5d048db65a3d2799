"""Content-store entries that do not match their digest, and stray files, are removed
and never served or built from."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.link import (
    ErrorCode,
    IncomingStream,
    LinkServer,
    LinkSession,
    RequestFailed,
    Router,
    connect,
)
from meshd.link.messages import BlobReply, BlobRequest
from meshd.mesh.content.blobs import BLOB_STREAM, BlobExchange
from meshd.mesh.content.store import STALE_TEMP_SECONDS, TEMP_PREFIX, ContentStore
from meshd.mesh.content.stores import StoreSet
from meshd.mesh.security.identity import Identity


def _corrupt(store: ContentStore, digest: str, data: bytes = b"rotten") -> None:
    path = store.path(digest)
    path.write_bytes(data)
    # A later mtime, as any write has; bit rot with an unchanged stat is caught at the
    # next start, when nothing is remembered as verified.
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))


def test_a_blob_that_no_longer_matches_is_removed_and_reported_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ContentStore(tmp_path / "cas")
    good = store.put_bytes(b"kitchen.yaml contents")
    other = store.put_bytes(b"secrets.yaml contents")
    _corrupt(store, good)
    with caplog.at_level(logging.WARNING, logger="meshd.mesh.content.store"):
        assert store.missing([good, other]) == [good]
    assert not store.path(good).exists()
    assert any(good[:12] in r.getMessage() for r in caplog.records)
    # Putting the content again repairs it (it was not wrongly taken as present).
    assert store.put_bytes(b"kitchen.yaml contents") == good
    assert store.has(good) and store.path(good).read_bytes() == b"kitchen.yaml contents"


def test_a_blob_rotten_before_start_is_caught_by_a_fresh_store(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "cas")
    digest = store.put_bytes(b"firmware image")
    path = store.path(digest)
    stat = path.stat()
    path.write_bytes(b"firmware imagf")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    assert ContentStore(tmp_path / "cas").has(digest) is False


def test_opening_the_store_sweeps_away_what_is_not_a_blob(tmp_path: Path) -> None:
    root = tmp_path / "cas"
    store = ContentStore(root)
    digest = store.put_bytes(b"keep me")
    shard = store.path(digest).parent
    stray = [
        root / "notes.txt",
        root / "zz",
        shard / "not-a-digest",
        shard / ("f" * 64),  # a digest name in the wrong shard
    ]
    stray[0].write_text("hello")
    stray[1].mkdir()
    (stray[1] / "deep").write_text("x")
    stray[2].write_text("x")
    stray[3].write_text("x")
    link = shard / hashlib.sha256(b"elsewhere").hexdigest()
    target = tmp_path / "outside"
    target.write_bytes(b"elsewhere")
    link.symlink_to(target)
    old_temp = shard / f"{TEMP_PREFIX}crashed"
    old_temp.write_bytes(b"half a blob")
    then = time.time() - STALE_TEMP_SECONDS - 60
    os.utime(old_temp, (then, then))
    fresh_temp = shard / f"{TEMP_PREFIX}in-progress"
    fresh_temp.write_bytes(b"being written")

    ContentStore(root)
    assert store.has(digest)
    assert not any(p.exists() or p.is_symlink() for p in [*stray, link, old_temp])
    assert target.exists(), "a link's target outside the store is never touched"
    assert fresh_temp.exists(), "a write in progress is left alone"


# -- a damaged blob is never served over a real link -------------------------------------


@pytest.fixture
async def blob_link(
    tmp_path: Path,
) -> AsyncIterator[tuple[ContentStore, BlobExchange, LinkSession, list[str]]]:
    """A server serving blob_request from its store; a client session that records the
    name of every blob stream it is sent."""
    served_set = StoreSet(tmp_path / "server-cas")
    received_set = StoreSet(tmp_path / "client-cas")
    served = served_set.own
    server_blobs = BlobExchange(served_set, max_blob=1 << 20, accept_unrequested=lambda _s: False)
    client_blobs = BlobExchange(received_set, max_blob=1 << 20, accept_unrequested=lambda _s: False)
    streams: list[str] = []

    async def serve(session: LinkSession, message: BlobRequest) -> BlobReply:
        await server_blobs.push(session, [d.hex() for d in message.digests])
        return BlobReply(len(message.digests))

    async def receive(session: LinkSession, incoming: IncomingStream) -> None:
        streams.append(incoming.name)
        await client_blobs.on_stream(session, incoming)

    server_router = Router()
    server_router.on(BlobRequest, serve)
    client_router = Router()
    client_router.on_stream(BLOB_STREAM, receive)
    server = LinkServer(Identity.generate(), authorize=lambda _c: True, router=server_router)
    await server.start("127.0.0.1", 0)
    session = await connect(
        "127.0.0.1", server.port, Identity.generate(), authorize=lambda _c: True,
        router=client_router,
    )  # fmt: skip
    try:
        yield served, client_blobs, session, streams
    finally:
        client_blobs.forget(session)
        await session.close()
        await server.close()


async def test_a_damaged_blob_is_answered_not_found_and_nothing_is_sent(
    blob_link: tuple[ContentStore, BlobExchange, LinkSession, list[str]],
) -> None:
    served, client_blobs, session, streams = blob_link
    intact = served.put_bytes(b"bootloader image")
    damaged = served.put_bytes(b"application image")
    _corrupt(served, damaged, b"application imagE")
    [arrived] = client_blobs.expect(session, [intact])
    assert await session.request(BlobRequest((bytes.fromhex(intact),)), BlobReply) == BlobReply(1)
    await asyncio.wait_for(arrived, 10)
    client_blobs.expect(session, [damaged])
    with pytest.raises(RequestFailed) as info:
        await session.request(BlobRequest((bytes.fromhex(damaged),)), BlobReply)
    assert info.value.code == ErrorCode.NOT_FOUND
    # Streams travel before the answer that follows them: none was opened for it.
    assert streams == [intact]
    assert client_blobs.store.has(intact) and not client_blobs.store.path(damaged).exists()
    assert not served.path(damaged).exists()
