"""The local control API's server: app state, token authentication, errors, life cycle.

The API is how the CLI (and anything else on the machine) talks to the daemon. It is
local by default (127.0.0.1) but still authenticated: any local user could otherwise
flash any device. The token is a random secret the daemon keeps in
``<data-dir>/api.json`` (mode 0600), next to the URL the server actually bound (port 0
is allowed), so a client with read access to the data dir needs nothing else.

This package knows nothing about the daemon that composes it: it gets the engine, a
:class:`NodeFacts` and :class:`ApiHooks` (where the mesh later plugs in its identity and
peer registry), so the import direction stays ``daemon → api → jobs``.

The listener is hardened against a flood (``meshd.api.connections``: per-source and
total connection caps, first-request and idle timeouts, rate-limited warnings), and
every request passes the token check before anything else reads its body. Which
files a job may name is :class:`meshd.api.validation.ConfigRules` (the data dir never;
only the configured config dirs when there are any).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import WSCloseCode, web

from meshd.api.connections import IDLE_TIMEOUT, ConnectionGate, LogThrottle
from meshd.api.routes import routes
from meshd.api.state import (
    CLOSING_KEY,
    ENGINE_KEY,
    HOOKS_KEY,
    NODE_KEY,
    TOKEN_KEY,
    WEBSOCKETS_KEY,
    ApiHooks,
    NodeFacts,
)
from meshd.api.ui import browser_auth
from meshd.api.validation import CONFIG_RULES_KEY, ApiError, ConfigRules
from meshd.api.wire import (
    API_FILENAME,
    API_PREFIX,
    AUTH_HEADER,
    AUTH_SCHEME,
    ApiFile,
    read_api_file,
)
from meshd.config import HostPort
from meshd.jobs.diskio import describe, is_write_error
from meshd.jobs.engine import Engine

_LOGGER = logging.getLogger(__name__)

# 256 bits: the token guards flashing firmware onto every device this node reaches.
TOKEN_BYTES = 32
# token_urlsafe(32) gives 43 characters; anything under 32 was never ours.
MIN_TOKEN_CHARS = 32
# Streams are ended by on_shutdown; a request still running this long after is cut.
SHUTDOWN_GRACE = 5.0
# Job requests are small JSON objects; anything bigger is a mistake or an attack.
MAX_REQUEST_BYTES = 64 * 1024


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON: ``ApiError`` as is, aiohttp's HTTP errors wrapped,
    and anything unexpected as a 500 with a short message (the traceback is logged
    here, once; a local write failure says where)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return error_response(ApiError(exc.status, code, exc.text or exc.reason))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as exc:
        if is_write_error(exc):
            # The sentence says it all; a traceback per request would flood the journal.
            _LOGGER.error("%s %s: %s", request.method, request.path, describe(exc))  # noqa: TRY400
            return error_response(ApiError(507, "no_space", describe(exc)))
        _LOGGER.exception("%s %s failed", request.method, request.path)
        message = f"internal error: {type(exc).__name__}: {str(exc)[:200]}"
        return error_response(ApiError(500, "internal_error", message))


_auth_throttle = LogThrottle(_LOGGER)


def token_matches(header: str, expected: str) -> bool:
    """Whether an ``Authorization`` header carries the token (constant time, any bytes).

    Compared as bytes: ``hmac.compare_digest`` refuses non-ASCII *strings* with a
    TypeError, which would turn a stranger's odd header into a 500.
    """
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    given = token.strip().encode("utf-8", "replace")
    return hmac.compare_digest(given, expected.encode("utf-8"))


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    header = request.headers.get(AUTH_HEADER, "")
    # No token: the status page's files, its login, or its session cookie (ui.py).
    if not header and browser_auth(request):
        return await handler(request)
    if not token_matches(header, request.app[TOKEN_KEY]):
        problem = "missing" if not header else "wrong"
        if header:
            _auth_throttle.warning(
                f"auth:{request.remote}",
                "control API: request with a wrong token from %s",
                request.remote,
            )
        raise ApiError(
            401,
            "unauthorized",
            f"{problem} API token: send '{AUTH_HEADER}: {AUTH_SCHEME} TOKEN' "
            f"(the token is in <data-dir>/{API_FILENAME})",
        )
    return await handler(request)


def load_token(data_dir: Path) -> str | None:
    """The token of a previous run, so scripts given ``--token`` survive restarts."""
    try:
        token = read_api_file(data_dir / API_FILENAME).token
    except (OSError, ValueError):
        return None
    # Shorter than a token this server would make: not one of ours, make a new one.
    return token if len(token) >= MIN_TOKEN_CHARS else None


def write_api_file(data_dir: Path, url: str, token: str) -> Path:
    """Write ``api.json`` atomically with mode 0600: never a moment it is readable by all."""
    target = data_dir / API_FILENAME
    fd, tmp = tempfile.mkstemp(prefix=".api.", suffix=".tmp", dir=data_dir)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(ApiFile(url=url, token=token).dumps())
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    return target


class ApiServer:
    """The aiohttp app on ``AppRunner``/``TCPSite``; ``url`` is known after ``start()``."""

    def __init__(
        self,
        engine: Engine,
        node: NodeFacts,
        *,
        bind: HostPort,
        token: str | None = None,
        hooks: ApiHooks | None = None,
        config_dirs: tuple[Path, ...] = (),
        esphome_pins: tuple[tuple[Path, str], ...] = (),
        gate: ConnectionGate | None = None,
    ) -> None:
        self.engine = engine
        self.node = node
        self.bind = bind
        self.token = token or secrets.token_urlsafe(TOKEN_BYTES)
        self.hooks = hooks or ApiHooks()
        # The data dir holds the identity, the token and the trees built for peers.
        forbidden = (Path(node.data_dir),) if node.data_dir else ()
        self.config_rules = ConfigRules(
            config_dirs=tuple(config_dirs), forbidden=forbidden, pins=esphome_pins
        )
        self.gate = gate or ConnectionGate()
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self.gate.middleware(), _errors, _auth],
            client_max_size=MAX_REQUEST_BYTES,
        )
        app[CONFIG_RULES_KEY] = self.config_rules
        app[ENGINE_KEY] = self.engine
        app[NODE_KEY] = self.node
        app[HOOKS_KEY] = self.hooks
        app[TOKEN_KEY] = self.token
        app[WEBSOCKETS_KEY] = set()
        app[CLOSING_KEY] = asyncio.Event()
        app.add_routes(routes(API_PREFIX))
        # Mesh routes (pairing, trust...) get the same middlewares: JSON errors, auth.
        app.add_routes(self.hooks.routes)
        app.on_shutdown.append(_close_streams)
        return app

    async def start(self) -> str:
        """Bind and serve; returns the URL (with the real port when asked for port 0)."""
        runner = web.AppRunner(
            self.make_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE,
            keepalive_timeout=IDLE_TIMEOUT,
        )
        await runner.setup()
        assert runner.server is not None
        self.gate.install(runner.server)
        site = web.TCPSite(runner, self.bind.host, self.bind.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = self.bind.port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                port = int(address[1])
                break
        self.url = f"http://{HostPort(self.bind.host, port)}"
        _LOGGER.info("control API listening on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def _close_streams(app: web.Application) -> None:
    """End log followers and close websockets so shutdown does not wait for jobs."""
    app[CLOSING_KEY].set()
    sockets: set[web.WebSocketResponse] = app[WEBSOCKETS_KEY]
    for ws in list(sockets):
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"meshd is shutting down")
