"""What the API's handlers share: node facts, the mesh's hooks, typed app keys.

Kept apart from the server and the routes so both can import it without a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshd.api.mesh_control import MeshControl
from meshd.jobs.engine import Engine


@dataclass
class NodeFacts:
    """What ``/api/v1/status`` says about this node (not the link's ``NodeInfo`` message)."""

    name: str
    version: str
    data_dir: str
    esphome_version: str | None = None
    """Filled in once ``esphome version`` has answered (it runs once, at start)."""
    esphome: str | None = None
    """The esphome command the daemon runs (found beside its interpreter, on PATH, or set)."""
    sandbox: str | None = None
    """How peers' builds run here: bubblewrap, UNSANDBOXED, or why unavailable."""
    warnings: list[str] = field(default_factory=list)
    """Problems an operator must fix, e.g. "esphome not found" (``meshd status``, the page)."""
    compile_cache: dict[str, Any] | None = None
    """The compile cache's totals (size, hits, misses, hit rate), refreshed after every
    compile (``meshd.api.cache_routes.CacheControl``); None before the first read."""


def _no_builds(_configuration: str) -> list[dict[str, Any]]:
    return []


@dataclass
class ApiHooks:
    """Where the mesh plugs into the API when it is wired into the daemon.

    * ``mesh``: the mesh's control surface (:class:`MeshControl`), or None for a node
      without one: then there is no fingerprint, no peers and nothing extra in
      ``status.node``;
    * ``routes``: extra routes (e.g. pairing, trust), with full paths under
      ``meshd.api.wire.API_PREFIX``, served with the same authentication and JSON errors; add them
      before the server starts;
    * ``builds``: the kept builds of a configuration (absolute path), newest first, as
      JSON objects (``meshd.toolchain.archive.KeptBuild.to_dict``), set by the daemon.
    """

    mesh: MeshControl | None = None
    routes: list[web.AbstractRouteDef] = field(default_factory=list)
    builds: Callable[[str], list[dict[str, Any]]] = _no_builds

    def fingerprint(self) -> str | None:
        """This node's identity fingerprint (None without a mesh)."""
        return self.mesh.fingerprint if self.mesh is not None else None

    def peers(self) -> list[dict[str, Any]]:
        """The peer registry, JSON-ready, for ``/api/v1/peers`` and ``/api/v1/status``."""
        return self.mesh.peers() if self.mesh is not None else []

    def node(self) -> dict[str, Any]:
        """Extra facts about this node for ``status.node`` (the mesh's identity and roles)."""
        return self.mesh.node_info() if self.mesh is not None else {}


ENGINE_KEY = web.AppKey("engine", Engine)
NODE_KEY = web.AppKey("node", NodeFacts)
HOOKS_KEY = web.AppKey("hooks", ApiHooks)
TOKEN_KEY = web.AppKey("token", str)
WEBSOCKETS_KEY: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets")
"""Open event websockets, closed on shutdown so the server does not wait on them."""
CLOSING_KEY = web.AppKey("closing", asyncio.Event)
"""Set on shutdown: log followers end their streams instead of waiting for a job."""
