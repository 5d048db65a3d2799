"""What the API's handlers share: node facts, the mesh's hooks, typed app keys.

Kept apart from the server and the routes so both can import it without a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from meshd.jobs.engine import Engine

API_PREFIX = "/api/v1"


@dataclass
class NodeInfo:
    """What ``/api/v1/status`` says about this node."""

    name: str
    version: str
    data_dir: str
    esphome_version: str | None = None
    """Filled in once ``esphome version`` has answered (it runs once, at start)."""
    esphome: str | None = None
    """The esphome command the daemon runs (found beside its interpreter, on PATH, or set)."""
    warnings: list[str] = field(default_factory=list)
    """Problems an operator must fix, e.g. "esphome not found" (``meshd status``, the page)."""


def _no_fingerprint() -> str | None:
    return None


def _no_peers() -> list[dict[str, Any]]:
    return []


@dataclass
class ApiHooks:
    """Extension points the mesh fills in when it is wired into the daemon.

    * ``fingerprint``: this node's identity fingerprint (None until an identity exists);
    * ``peers``: a JSON-ready snapshot of the peer registry, served by ``/api/v1/peers``
      and in ``/api/v1/status``;
    * ``routes``: extra routes (e.g. pairing, trust), with full paths under
      ``API_PREFIX``, served with the same authentication and JSON errors; add them
      before the server starts.
    """

    fingerprint: Callable[[], str | None] = _no_fingerprint
    peers: Callable[[], list[dict[str, Any]]] = _no_peers
    node: Callable[[], dict[str, Any]] = dict
    """Extra facts about this node for ``status.node`` (the mesh's identity and roles)."""
    routes: list[web.AbstractRouteDef] = field(default_factory=list)


ENGINE_KEY = web.AppKey("engine", Engine)
NODE_KEY = web.AppKey("node", NodeInfo)
HOOKS_KEY = web.AppKey("hooks", ApiHooks)
TOKEN_KEY = web.AppKey("token", str)
WEBSOCKETS_KEY: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("websockets")
"""Open event websockets, closed on shutdown so the server does not wait on them."""
CLOSING_KEY = web.AppKey("closing", asyncio.Event)
"""Set on shutdown: log followers end their streams instead of waiting for a job."""
