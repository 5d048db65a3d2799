"""Control-API endpoints for the compile cache: ``GET /api/v1/cache`` (stats) and
``POST /api/v1/cache/clear`` (docs/API.md).

:class:`CacheControl` owns the node's view of its caches: reading the counters runs
``ccache --print-stats`` once per cache directory, so it happens in a thread, and the
totals are kept on ``NodeFacts.compile_cache`` for ``/status`` and ``/metrics`` (which
must not run a subprocess per scrape). The daemon refreshes them after every compile.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from aiohttp import web

from meshd.api.state import NodeFacts
from meshd.api.validation import ApiError
from meshd.api.wire import API_PREFIX
from meshd.toolchain.ccache import CacheStats, CacheUnavailable, CompileCache, CompileCaches


def _one(name: str, cache: CompileCache, stats: CacheStats) -> dict[str, Any]:
    return {"name": name, "directory": str(cache.directory), **stats.to_dict()}


class CacheControl:
    """The compile caches as the API shows them (``caches`` None: the cache is off)."""

    def __init__(self, caches: CompileCaches | None, node: NodeFacts) -> None:
        self.caches = caches
        self.node = node
        self._lock = asyncio.Lock()

    def _report(self) -> dict[str, Any]:
        if self.caches is None:
            return {"enabled": False}
        # Receivers add to the shared store as they build: keep it within the budget.
        self.caches.trim_shared()
        entries = []
        total = CacheStats()
        for cache in self.caches.all():
            stats = cache.stats()
            total = total + stats
            name = (
                "local"
                if cache.directory.parent == self.caches.root
                else (f"peer:{cache.directory.name}")
            )
            entries.append(_one(name, cache, stats))
        return {
            "enabled": True,
            "directory": str(self.caches.root),
            "max_size": self.caches.max_size,
            "shared_size_bytes": self.caches.shared_size(),
            **total.to_dict(),
            "caches": entries,
        }

    async def refresh(self) -> dict[str, Any]:
        """Read every cache's counters now; keep the totals for ``/status`` and metrics."""
        async with self._lock:
            report = await asyncio.to_thread(self._report)
        self.node.compile_cache = {k: v for k, v in report.items() if k != "caches"}
        return report

    async def clear(self) -> dict[str, Any]:
        if self.caches is not None:
            async with self._lock:
                await asyncio.to_thread(self.caches.clear)
        return await self.refresh()


def cache_routes(control: CacheControl) -> list[web.AbstractRouteDef]:
    async def stats(_request: web.Request) -> web.Response:
        try:
            return web.json_response(await control.refresh())
        except (CacheUnavailable, OSError, subprocess.SubprocessError) as exc:
            raise ApiError(500, "cache_unavailable", str(exc)) from None

    async def clear(_request: web.Request) -> web.Response:
        try:
            return web.json_response(await control.clear())
        except (CacheUnavailable, OSError, subprocess.SubprocessError) as exc:
            raise ApiError(500, "cache_unavailable", str(exc)) from None

    return [
        web.get(f"{API_PREFIX}/cache", stats),
        web.post(f"{API_PREFIX}/cache/clear", clear),
    ]
