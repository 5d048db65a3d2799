"""Bound the control API's connections: per source, in total, and in idle time.

aiohttp accepts every connection and keeps an idle one for its keep-alive time, so
1,100 idle sockets from one host would take the daemon's file descriptors (a
service's soft limit is often 1024), and with them SQLite, job logs and the peer
port. :class:`ConnectionGate` hooks the ``web.Server`` that ``AppRunner`` made
(``connection_made``/``connection_lost`` are the hooks aiohttp's request handler
calls for every connection) and enforces:

* at most ``per_source`` connections from one address and ``total`` overall. A new
  connection over a cap first evicts the longest-idle connection (one with no
  request in progress) of that source (or, over the total, of the busiest source);
  only if every one is busy is the new connection closed at once. So a flood of idle
  sockets cannot lock out the CLI, and a flood of busy ones needs the token;
* a connection must start its first request within ``first_request_timeout``
  (slow or absent headers) and may sit between requests ``idle_timeout`` at most;
* warnings about refusals and evictions are rate limited (:class:`LogThrottle`), so
  a flood does not grow the log without bound.

A request is "in progress" from the moment its headers are parsed until its handler
returns (the ``track_requests`` middleware), which includes long streams such as a
followed log or the events websocket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

_LOGGER = logging.getLogger(__name__)

# Generous for a host's CLI, scripts and a few status-page tabs (each an events
# websocket plus polls); small next to a 1024 descriptor limit.
MAX_CONNECTIONS_PER_SOURCE: Final = 64
MAX_CONNECTIONS: Final = 256
# A client that connected sends its request at once; a CLI never waits seconds.
FIRST_REQUEST_TIMEOUT: Final = 10.0
# Long enough for a status page polling every few seconds over one keep-alive socket.
IDLE_TIMEOUT: Final = 30.0
# One warning of a kind per this many seconds; the rest are counted into the next.
WARNING_INTERVAL: Final = 60.0


class LogThrottle:
    """At most one record per key per ``interval``; the next says how many were dropped."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = WARNING_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``key`` was logged within the interval."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        dropped = self._dropped.pop(key, 0)
        suffix = f" ({dropped} more like it in the last {self._interval:.0f} s)" if dropped else ""
        self._logger.warning(message + suffix, *args)
        self._last[key] = now
        if len(self._last) > 1024:  # keys include addresses: keep the table bounded
            oldest = min(self._last, key=self._last.__getitem__)
            self._last.pop(oldest)
        return True


@dataclass(eq=False)
class _Connection:
    handler: RequestHandler
    transport: asyncio.Transport
    source: str
    active: int = 0
    idle_since: float = 0.0
    served: int = 0
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


def _source(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


class ConnectionGate:
    """Caps and timeouts for one aiohttp ``web.Server`` (see the module docstring)."""

    def __init__(
        self,
        *,
        per_source: int = MAX_CONNECTIONS_PER_SOURCE,
        total: int = MAX_CONNECTIONS,
        first_request_timeout: float = FIRST_REQUEST_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
        throttle: LogThrottle | None = None,
    ) -> None:
        self.per_source = per_source
        self.total = total
        self.first_request_timeout = first_request_timeout
        self.idle_timeout = idle_timeout
        self._throttle = throttle or LogThrottle(_LOGGER)
        self._connections: dict[RequestHandler, _Connection] = {}
        self._by_source: dict[str, set[_Connection]] = {}
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    # -- hooks ---------------------------------------------------------------------

    def install(self, server: web.Server) -> None:
        """Wrap ``server``'s per-connection hooks (call after ``AppRunner.setup()``)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._admit(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._forget(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def request_started(self, handler: RequestHandler) -> None:
        conn = self._connections.get(handler)
        if conn is None:
            return
        conn.active += 1
        conn.served += 1
        self._cancel_timer(conn)

    def request_finished(self, handler: RequestHandler) -> None:
        conn = self._connections.get(handler)
        if conn is None:
            return
        conn.active = max(0, conn.active - 1)
        if conn.active == 0:
            conn.idle_since = time.monotonic()
            self._arm(conn, self.idle_timeout)

    def middleware(self) -> Callable[..., Awaitable[web.StreamResponse]]:
        """The outermost middleware: marks a connection busy while a request runs."""

        @web.middleware
        async def track_requests(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            protocol = request.protocol
            self.request_started(protocol)
            try:
                return await handler(request)
            finally:
                self.request_finished(protocol)

        return track_requests

    # -- admission -----------------------------------------------------------------

    def _admit(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        source = _source(transport)
        same = self._by_source.get(source, set())
        if len(same) >= self.per_source and not self._evict_idle(same, source):
            self._refuse(transport, source, f"{self.per_source} connections from it are busy")
            return
        if len(self._connections) >= self.total:
            busiest = max(self._by_source.values(), key=len)
            if not self._evict_idle(busiest, source) and not self._evict_idle(
                set(self._connections.values()), source
            ):
                self._refuse(transport, source, f"all {self.total} API connections are busy")
                return
        conn = _Connection(handler, transport, source, idle_since=time.monotonic())
        self._connections[handler] = conn
        self._by_source.setdefault(source, set()).add(conn)
        self._arm(conn, self.first_request_timeout)

    def _evict_idle(self, candidates: set[_Connection], newcomer: str) -> bool:
        idle = [c for c in candidates if c.active == 0]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.idle_since)
        self.evicted += 1
        self._throttle.warning(
            f"evict:{victim.source}",
            "control API: closed an idle connection from %s to admit one from %s "
            "(connection cap reached)",
            victim.source,
            newcomer,
        )
        self._close(victim)
        return True

    def _refuse(self, transport: asyncio.Transport, source: str, why: str) -> None:
        self.refused += 1
        self._throttle.warning(
            f"refuse:{source}", "control API: refused a connection from %s: %s", source, why
        )
        transport.abort()

    # -- timers and removal ----------------------------------------------------------

    def _arm(self, conn: _Connection, delay: float) -> None:
        self._cancel_timer(conn)
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(delay, self._expire, conn)

    @staticmethod
    def _cancel_timer(conn: _Connection) -> None:
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None

    def _expire(self, conn: _Connection) -> None:
        conn.timer = None
        if conn.active or conn.handler not in self._connections:
            return
        self.timed_out += 1
        if conn.served == 0:
            self._throttle.warning(
                f"slow:{conn.source}",
                "control API: closed a connection from %s that sent no request in %.0f s",
                conn.source,
                self.first_request_timeout,
            )
        self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._drop(conn)
        conn.handler.force_close()  # closes the transport; connection_lost follows

    def _forget(self, handler: RequestHandler) -> None:
        conn = self._connections.get(handler)
        if conn is not None:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        self._cancel_timer(conn)
        self._connections.pop(conn.handler, None)
        same = self._by_source.get(conn.source)
        if same is not None:
            same.discard(conn)
            if not same:
                del self._by_source[conn.source]

    def stats(self) -> dict[str, Any]:
        return {
            "open": len(self._connections),
            "sources": len(self._by_source),
            "refused": self.refused,
            "evicted": self.evicted,
            "timed_out": self.timed_out,
        }
