"""``GET /api/v1/devices``: the fleet, one row per configuration and device (docs/API.md).

The daemon passes the fleet's ``rows(directories)`` coroutine in, so the API imports
nothing of :mod:`meshd.fleet`. A directory named in the query obeys the same
:class:`~meshd.api.validation.ConfigRules` as a job's configuration: inside the
node's ``--config-dir`` directories when it has any, never inside the data dir.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from meshd.api.validation import CONFIG_RULES_KEY, ConfigRules, bad_request
from meshd.api.wire import API_PREFIX

MAX_DIRECTORIES = 64

FleetRows = Callable[[Sequence[Path]], Awaitable[dict[str, Any]]]


def _directories(query: Any, rules: ConfigRules, configured: Sequence[Path]) -> list[Path]:
    """The query's ``dir`` values, resolved against ``cwd``, checked; else the configured."""
    raw = query.getall("dir", [])
    if len(raw) > MAX_DIRECTORIES:
        raise bad_request("too_many", f"at most {MAX_DIRECTORIES} directories", field="dir")
    cwd_text = query.get("cwd")
    cwd = Path(cwd_text) if cwd_text else None
    if cwd is not None and not cwd.is_absolute():
        raise bad_request("invalid_field", "'cwd' must be an absolute path", field="cwd")
    if not raw:
        if not configured:
            raise bad_request(
                "no_config_dirs",
                "this node has no configuration directories: name one (meshd devices DIR) "
                "or start meshd with --config-dir DIR",
            )
        return list(configured)
    out: list[Path] = []
    for text in raw:
        path = Path(text)
        if not path.is_absolute():
            if cwd is None:
                raise bad_request(
                    "invalid_field", f"{text!r} is relative and no 'cwd' was given", field="dir"
                )
            path = cwd / path
        path = path.resolve()
        if not path.is_dir():
            raise bad_request("not_a_directory", f"{path} is not a directory", path=str(path))
        rules.check_location(path, what="directory")
        out.append(path)
    return out


def fleet_routes(rows: FleetRows, configured: Sequence[Path]) -> list[web.RouteDef]:
    async def devices(request: web.Request) -> web.Response:
        rules = request.app[CONFIG_RULES_KEY]
        dirs = await asyncio.to_thread(_directories, request.query, rules, configured)
        return web.json_response(await rows(dirs))

    return [web.get(f"{API_PREFIX}/devices", devices)]
