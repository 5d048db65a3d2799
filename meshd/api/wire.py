"""What the control API's server and its clients must agree on, and nothing heavier.

The server (``meshd.api.server``, aiohttp.web, the engine) and the CLI's client
(``meshd.api.client``) both import this module, so the client never has to import the
server to learn a path or a file name. Standard library only: a client command pays
for nothing it does not use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

API_PREFIX = "/api/v1"
"""Every endpoint lives under this path (docs/API.md); a new major version gets a new one."""

API_FILENAME = "api.json"
"""``<data-dir>/api.json`` (mode 0600): where the daemon says its URL and token."""

AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Bearer"

EVENTS_HEARTBEAT = 30.0
"""Seconds between websocket pings on ``/events``, from either side: a dead peer on a
quiet stream is noticed within a minute, and an idle follower costs nothing."""


DEFAULT_PAIRING_TTL = 300.0
"""Seconds ``POST /pair/open`` keeps a window open when the request names no ``ttl``:
long enough to walk to the other machine and type the code."""
MAX_PAIRING_TTL = 3600.0
"""A longer window is a standing invitation, not a window (the server refuses it)."""


def bearer(token: str) -> str:
    """The ``Authorization`` header value for ``token``."""
    return f"{AUTH_SCHEME} {token}"


@dataclass(frozen=True)
class ApiFile:
    """The contents of ``api.json``: the URL the daemon bound and its token."""

    url: str
    token: str

    def dumps(self) -> str:
        return json.dumps({"url": self.url, "token": self.token}) + "\n"


class NotAnApiFile(ValueError):
    """The file is JSON, but not what a daemon writes."""


def read_api_file(path: Path) -> ApiFile:
    """Parse ``api.json``; raises ``OSError`` if unreadable, ``ValueError`` if not JSON,
    :class:`NotAnApiFile` if it is JSON without a URL."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise NotAnApiFile(f"{path} is not a meshd API file")
    token = data.get("token", "")
    return ApiFile(url=data["url"], token=token if isinstance(token, str) else "")
