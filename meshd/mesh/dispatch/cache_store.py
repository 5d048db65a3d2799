"""The offloader's shared compile cache, served to the receivers that build for it.

``<data>/ccache/shared`` is a ccache *file* remote storage (``<2 chars>/<rest>``
entries): the node's own builds use it as ``CCACHE_REMOTE_STORAGE=file:<dir>``, and
receivers building this node's jobs read it (``cache_get``) and add to it
(``cache_put``) through their per-job gateway (meshd/mesh/serving/cache_gateway.py).
So an object compiled for this node anywhere in the mesh serves every later build of
it, here or on a receiver that never built for it.

Who may use it: only a session that is running one of this node's jobs right now
(``may_use(session, job_id)``): a peer this node sent the job to, which it already
trusts to build that firmware. Keys are checked (``valid_cache_key``) before they
become paths; entries are written to a temporary file and renamed into place.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from meshd.link import LinkSession, Router
from meshd.link.errors import ErrorCode, RejectRequest
from meshd.link.messages import MAX_CACHE_ENTRY, CacheEntry, CacheGet, CachePut
from meshd.mesh.content.cache_keys import valid_cache_key


class SharedCacheStore:
    def __init__(self, directory: Path, may_use: Callable[[LinkSession, str], bool]) -> None:
        self.directory = directory
        self._may_use = may_use
        self.served = 0
        self.stored = 0

    def register(self, router: Router) -> None:
        router.on(CacheGet, self._on_get)
        router.on(CachePut, self._on_put)

    def _path(self, key: str) -> Path | None:
        return self.directory / key if valid_cache_key(key) else None

    async def _on_get(self, session: LinkSession, message: CacheGet) -> CacheEntry:
        if not self._may_use(session, message.job_id):
            raise RejectRequest(ErrorCode.FORBIDDEN, "not building a job of this node")
        path = self._path(message.key)
        if path is None:
            raise RejectRequest(ErrorCode.BAD_REQUEST, "malformed cache key")
        data = await asyncio.to_thread(_read, path)
        if data is None:
            raise RejectRequest(ErrorCode.NOT_FOUND, "no such entry")
        self.served += 1
        return CacheEntry(data)

    async def _on_put(self, session: LinkSession, message: CachePut) -> None:
        path = self._path(message.key)
        if path is None or not self._may_use(session, message.job_id):
            return
        await asyncio.to_thread(_write, path, message.data)
        self.stored += 1


def _read(path: Path) -> bytes | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CACHE_ENTRY + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return data if len(data) <= MAX_CACHE_ENTRY else None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".put-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
