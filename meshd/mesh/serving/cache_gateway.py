"""The receiver's loopback door from ccache to the job's offloader (the mesh cache).

A compile a receiver runs for offloader A may reuse objects A built itself or that
another receiver built for A: ccache's HTTP remote storage
(``CCACHE_REMOTE_STORAGE=http://127.0.0.1:PORT/<token>``) is pointed at this gateway
for that job only. Each ``GET /<token>/<key>`` becomes one ``cache_get`` request over
the authenticated link to *that job's* offloader (``cache_entry`` or ``not_found``);
each ``PUT`` becomes a one-way ``cache_put``. ``HEAD`` always answers 404, so ccache
does not spend a round trip before a put (the offloader's store overwrites in place).

Isolation: the token is random per job and dies with it, and it maps to exactly one
(session, offloader job id); another offloader's build, holding another token, reaches
only its own offloader. Entries from the mesh land in the job's per-offloader local
cache (ccache copies remote hits there), never in another's. A miss costs one link
round trip per lookup; a lost link or a slow offloader is a miss (bounded by
``LOOKUP_TIMEOUT``), never a failed build.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from meshd.jobs.model import Job
from meshd.link import LinkError, LinkSession
from meshd.link.messages import MAX_CACHE_ENTRY, CacheEntry, CacheGet, CachePut
from meshd.mesh.content.cache_keys import valid_cache_key

_LOGGER = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 10.0
"""Seconds one lookup may wait for the offloader before it counts as a miss."""
MAX_PUTS_PER_JOB = 20_000
"""Entries one job may send its offloader (an ESP32 build makes a few thousand)."""


@dataclass
class _Use:
    """One job's use of the gateway."""

    session: LinkSession
    remote_id: str
    gets: int = 0
    found: int = 0
    puts: int = 0


class CacheGateway:
    """An aiohttp server on 127.0.0.1 (random port), started on first use."""

    def __init__(self, session_of: Callable[[str], tuple[LinkSession, str] | None]) -> None:
        self._session_of = session_of
        self._uses: dict[str, _Use] = {}
        self._runner: web.AppRunner | None = None
        self._port = 0

    @contextlib.asynccontextmanager
    async def for_job(self, job: Job) -> AsyncIterator[str | None]:
        """The ``CCACHE_REMOTE_STORAGE`` URL for one compile, or None (not a peer's job)."""
        link = self._session_of(job.id) if job.options.offloader else None
        if link is None:
            yield None
            return
        await self._start()
        token = secrets.token_urlsafe(24)
        use = self._uses[token] = _Use(*link)
        try:
            yield f"http://127.0.0.1:{self._port}/{token}"
        finally:
            self._uses.pop(token, None)
            _LOGGER.debug(
                "mesh cache for %s: %d lookups, %d found, %d sent",
                job.id,
                use.gets,
                use.found,
                use.puts,
            )

    async def _start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=MAX_CACHE_ENTRY)
        app.router.add_route("*", "/{token}/{head}/{rest}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        self._port = int(sock.getsockname()[1])
        self._runner = runner

    async def close(self) -> None:
        self._uses.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        use = self._uses.get(request.match_info["token"])
        if use is None:
            return web.Response(status=403)
        key = f"{request.match_info['head']}/{request.match_info['rest']}"
        if not valid_cache_key(key):
            return web.Response(status=400)
        if request.method == "GET":
            return await self._get(use, key)
        if request.method == "HEAD":
            return web.Response(status=404)
        if request.method == "PUT":
            return await self._put(use, key, request)
        return web.Response(status=405)

    async def _get(self, use: _Use, key: str) -> web.Response:
        use.gets += 1
        try:
            entry = await use.session.request(
                CacheGet(use.remote_id, key), CacheEntry, timeout=LOOKUP_TIMEOUT
            )
        except LinkError:  # not found, forbidden, timed out, link gone: all a miss
            return web.Response(status=404)
        use.found += 1
        return web.Response(body=entry.data)

    async def _put(self, use: _Use, key: str, request: web.Request) -> web.Response:
        if use.puts >= MAX_PUTS_PER_JOB:
            return web.Response(status=429)
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.Response(status=413)
        use.puts += 1
        try:
            await use.session.send(CachePut(use.remote_id, key, data))
        except LinkError:
            return web.Response(status=503)
        return web.Response(status=201)
