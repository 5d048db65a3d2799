"""The API client the CLI uses: find the daemon, call endpoints, stream logs and events.

Errors come in three kinds the CLI maps to exit codes: :class:`DaemonUnreachable`
(nothing answers at the address, or no ``api.json`` says where: exit 3),
:class:`ApiRequestError` (the daemon answered with a 4xx/5xx JSON error: exit 2 for
4xx input problems) and plain job outcomes (exit 1, decided by the CLI).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from meshd.api import transport
from meshd.api.wire import (
    API_FILENAME,
    API_PREFIX,
    AUTH_HEADER,
    EVENTS_HEARTBEAT,
    NotAnApiFile,
    bearer,
    read_api_file,
)
from meshd.config import default_data_dir

if TYPE_CHECKING:  # aiohttp is imported only when a command opens the events stream
    import aiohttp

# Requests are local and small; a daemon that takes longer is wedged, not slow.
# Streams (logs, events) have no total timeout: a compile can take an hour.
REQUEST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
# Tool output lines are capped at 64 KiB by the daemon; this only bounds a broken one.
MAX_LOG_LINE = 1024 * 1024


class ClientError(Exception):
    """Root of the client's errors."""


class DaemonUnreachable(ClientError):
    """No daemon answers where the client looked."""


class ApiRequestError(ClientError):
    """The daemon refused a request; ``code``/``message`` come from its JSON error."""

    def __init__(self, status: int, code: str, message: str, body: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = dict(body)


@dataclass(frozen=True)
class Endpoint:
    url: str
    token: str


def find_endpoint(
    *, data_dir: Path | None = None, url: str | None = None, token: str | None = None
) -> Endpoint:
    """``--api URL --token T`` if given, else ``<data-dir>/api.json`` (``--data-dir``,
    ``$MESHD_DATA_DIR``, ``$STATE_DIRECTORY``, ``~/.local/share/meshd``)."""
    if url and token:
        return Endpoint(url.rstrip("/"), token)
    directory = data_dir or default_data_dir()
    path = directory / API_FILENAME
    try:
        found = read_api_file(path)
    except FileNotFoundError:
        raise DaemonUnreachable(
            f"no running meshd found: {path} does not exist "
            "(start `meshd serve`, or pass --data-dir DIR or --api URL --token TOKEN)"
        ) from None
    except PermissionError:
        raise DaemonUnreachable(
            f"cannot read {path} (permission denied): run as the daemon's user, "
            "or pass --api URL --token TOKEN"
        ) from None
    except NotAnApiFile as exc:
        raise DaemonUnreachable(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise DaemonUnreachable(f"cannot read {path}: {exc}") from None
    return Endpoint((url or found.url).rstrip("/"), token or found.token)


class Client:
    """One daemon's API; use as ``async with Client(ep) as c``.

    Requests and log streams go over :mod:`meshd.api.transport` (a connection each:
    the daemon is local). Only :meth:`events` needs aiohttp (a websocket); it is
    imported there, so commands that never follow a job never load it.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        self._origin: transport.Origin | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def origin(self) -> transport.Origin:
        if self._origin is None:
            try:
                self._origin = transport.Origin.parse(self.endpoint.url)
            except transport.TransportError as exc:
                raise DaemonUnreachable(f"bad API URL: {exc}") from None
        return self._origin

    def _headers(self) -> list[tuple[str, str]]:
        return [(AUTH_HEADER, bearer(self.endpoint.token))]

    def _unreachable(self, exc: Exception) -> DaemonUnreachable:
        return DaemonUnreachable(f"meshd is not reachable at {self.endpoint.url}: {exc}")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; raises ``ApiRequestError`` on an error answer."""
        headers = self._headers()
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers.append(("Content-Type", "application/json"))
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                response = await transport.request(
                    self.origin,
                    method,
                    API_PREFIX + path,
                    headers=headers,
                    body=payload,
                    connect_timeout=CONNECT_TIMEOUT,
                )
        except TimeoutError:
            raise self._unreachable(
                TimeoutError(f"no answer within {REQUEST_TIMEOUT:.0f} s")
            ) from None
        except transport.TransportError as exc:
            raise self._unreachable(exc) from None
        return _json_or_raise(response.status, response.reason, response.body)

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/status")
        return result

    async def peers(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.request("GET", "/peers"))["peers"]
        return result

    async def jobs(self, *, status: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        query = f"?limit={limit}" + (f"&status={status}" if status else "")
        result: list[dict[str, Any]] = (await self.request("GET", "/jobs" + query))["jobs"]
        return result

    async def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/jobs/{_quote(job_id)}")
        return result

    async def create(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.request("POST", "/jobs", dict(body)))["jobs"]
        return result

    async def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/jobs/{_quote(job_id)}/cancel")
        return result

    async def log_lines(self, job_id: str, *, follow: bool = False) -> AsyncIterator[str]:
        """The job's log, line by line; with ``follow`` until the job is terminal."""
        target = f"{API_PREFIX}/jobs/{_quote(job_id)}/log" + ("?follow=1" if follow else "")
        try:
            async with transport.stream(
                self.origin, "GET", target, headers=self._headers(), connect_timeout=CONNECT_TIMEOUT
            ) as (head, chunks):
                if head.status_code >= 400:
                    body = b"".join([chunk async for chunk in chunks])
                    _json_or_raise(head.status_code, head.reason.decode("latin-1"), body)
                async for raw in transport.lines(chunks, max_line=MAX_LOG_LINE):
                    yield raw.decode("utf-8", "replace").rstrip("\r")
        except transport.TransportError as exc:
            raise self._unreachable(exc) from None

    async def events(self) -> EventStream:
        """Open the events websocket; iterate the returned stream, then ``close()`` it."""
        import aiohttp  # only followers pay for aiohttp (see the class)

        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={AUTH_HEADER: bearer(self.endpoint.token)},
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
            )
        url = f"{self.endpoint.url}{API_PREFIX}/events"
        try:
            ws = await self._session.ws_connect(url, heartbeat=EVENTS_HEARTBEAT)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise ApiRequestError(401, "unauthorized", "wrong API token", {}) from None
            raise self._unreachable(exc) from None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from None
        return EventStream(ws)


class EventStream:
    """Decoded events from the websocket; iteration ends when the daemon closes it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        import aiohttp  # loaded already by Client.events

        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                event = json.loads(message.data)
                if isinstance(event, dict):
                    yield event
            elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE):
                return

    async def close(self) -> None:
        await self.ws.close()


def _quote(job_id: str) -> str:
    # An id is a path segment: "../x" must reach the daemon (and be refused) as is.
    return quote(job_id, safe="")


def _json_or_raise(status: int, reason: str, raw: bytes) -> Any:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            raise ApiRequestError(
                status,
                str(error.get("code", "error")),
                str(error.get("message", reason)),
                error,
            )
        raise ApiRequestError(status, "http_error", f"HTTP {status}", {})
    return body
