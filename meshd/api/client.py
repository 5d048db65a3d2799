"""The API client the CLI uses: find the daemon, call endpoints, stream logs and events.

Errors come in three kinds the CLI maps to exit codes: :class:`DaemonUnreachable`
(nothing answers at the address, or no ``api.json`` says where: exit 3),
:class:`ApiRequestError` (the daemon answered with a 4xx/5xx JSON error: exit 2 for
4xx input problems) and plain job outcomes (exit 1, decided by the CLI).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from meshd.api.server import API_FILENAME
from meshd.api.state import API_PREFIX
from meshd.config import default_data_dir

# Requests are local and small; a daemon that takes longer is wedged, not slow.
# Streams (logs, events) have no total timeout: a compile can take an hour.
REQUEST_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0


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
        data = json.loads(path.read_text(encoding="utf-8"))
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
    except (OSError, ValueError) as exc:
        raise DaemonUnreachable(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise DaemonUnreachable(f"{path} is not a meshd API file")
    return Endpoint((url or data["url"]).rstrip("/"), token or str(data.get("token", "")))


class Client:
    """An aiohttp session bound to one daemon; use as ``async with Client(ep) as c``."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.endpoint.token}"},
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
        )
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
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the client as an async context manager")
        return self._session

    def _url(self, path: str) -> str:
        return f"{self.endpoint.url}{API_PREFIX}{path}"

    def _unreachable(self, exc: Exception) -> DaemonUnreachable:
        return DaemonUnreachable(f"meshd is not reachable at {self.endpoint.url}: {exc}")

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request; raises ``ApiRequestError`` on an error answer."""
        try:
            async with self.session.request(
                method,
                self._url(path),
                json=body,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT),
            ) as response:
                return await _json_or_raise(response)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

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
        url = self._url(f"/jobs/{_quote(job_id)}/log") + ("?follow=1" if follow else "")
        try:
            async with self.session.get(url) as response:
                if response.status >= 400:
                    await _json_or_raise(response)
                async for raw in response.content:
                    yield raw.decode("utf-8", "replace").rstrip("\r\n")
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise self._unreachable(exc) from None

    async def events(self) -> EventStream:
        """Open the events websocket; iterate the returned stream, then ``close()`` it."""
        try:
            ws = await self.session.ws_connect(self._url("/events"), heartbeat=30.0)
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


async def _json_or_raise(response: aiohttp.ClientResponse) -> Any:
    try:
        body = await response.json(content_type=None)
    except ValueError:
        body = None
    if response.status >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            raise ApiRequestError(
                response.status,
                str(error.get("code", "error")),
                str(error.get("message", response.reason)),
                error,
            )
        raise ApiRequestError(response.status, "http_error", f"HTTP {response.status}", {})
    return body
