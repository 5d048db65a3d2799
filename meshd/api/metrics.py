"""``/metrics``: the daemon's Prometheus metrics, in a registry of its own.

Two sources feed it:

* the engine's event bus, through :func:`event_json` (the one adapter: a bus event as
  the JSON the websocket sends), for what happens once: jobs ending, durations,
  remote dispatches and their outcomes, re-routes, lanes turning busy or idle;
* reads at scrape time for what *is*: queue depth, running jobs, peers, link bytes.

A per-daemon :class:`CollectorRegistry` (never prometheus-client's global one), so
several daemons in one process (tests) do not share counters and nothing else in the
process leaks into meshd's output. Names follow Prometheus conventions: ``meshd_``
prefix, counters end in ``_total``, durations in ``_seconds``, sizes in ``_bytes``.

Defined now and 0 until their features land (docs/API.md lists them):
``meshd_armed_uploads``, ``meshd_devices``, ``meshd_toolchain_provisions_total`` and
``meshd_sandbox_refusals_total``. Their owners set them through the attributes of
:class:`Metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from meshd.api.state import NodeFacts
from meshd.jobs.engine import Engine
from meshd.jobs.events import Event
from meshd.jobs.model import LOCAL_RUNNER, LaneName

_LOGGER = logging.getLogger(__name__)

METRICS_PATH = "/metrics"

# A warm compile takes 3-5 s, a cold one 30-60 s on a Pi-class machine, an ESP32
# framework build can pass ten minutes: buckets from seconds to an hour.
COMPILE_BUCKETS = (1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 1800, 3600)
# OTA of a few hundred KiB takes seconds; a slow serial flash or weak Wi-Fi minutes.
UPLOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)

TERMINAL_EVENTS = {
    "job_completed": "completed",
    "job_failed": "failed",
    "job_cancelled": "cancelled",
}
# Device states the fleet will report; pre-set to 0 so dashboards see the series now.
DEVICE_STATES = ("online", "offline")
PROVISION_OUTCOMES = ("succeeded", "failed")

LinkBytes = Callable[[], Iterable[tuple[str, bytes, int, int]]]
"""Open peer links as ``(peer fingerprint, session id, bytes sent, bytes received)``."""


def event_json(event: Event) -> dict[str, Any]:
    """The one adapter between the bus and the metrics: an event as its websocket JSON.

    Everything below reads only this dict (docs/API.md's event shapes), the same JSON
    the websocket sends, so the metrics follow the documented contract.
    """
    return event.to_wire()


@dataclass
class _Busy:
    """Seconds a lane spent not idle: closed spells plus the one in progress."""

    total: float = 0.0
    since: float | None = None

    def set_idle(self, idle: bool, now: float) -> None:
        if idle and self.since is not None:
            self.total += now - self.since
            self.since = None
        elif not idle and self.since is None:
            self.since = now

    def seconds(self, now: float) -> float:
        return self.total + (now - self.since if self.since is not None else 0.0)


@dataclass
class _LinkTotal:
    """Cumulative bytes of one peer across its sessions (a session's counters restart)."""

    session: bytes = b""
    sent: int = 0
    received: int = 0
    base_sent: int = 0
    base_received: int = 0

    def update(self, session: bytes, sent: int, received: int) -> None:
        if session != self.session:
            # A new session: what the previous one carried (as last read) is kept.
            self.base_sent += self.sent
            self.base_received += self.received
            self.session = session
        self.sent, self.received = sent, received


class Metrics:
    """One daemon's metrics; call :meth:`close` to stop listening to the bus."""

    def __init__(
        self,
        engine: Engine,
        node: NodeFacts,
        *,
        peers: Callable[[], list[dict[str, Any]]] = list,
        link_bytes: LinkBytes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.node = node
        self._peers = peers
        self.link_bytes = link_bytes
        """Where link byte counts come from (set once the mesh exists)."""
        self._clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter(
            "meshd_jobs",
            "Jobs that ended, by type and final status.",
            ["type", "status"],
            registry=r,
        )
        self.compile_duration = Histogram(
            "meshd_compile_duration_seconds",
            "Wall time of completed compiles, local or on a receiver.",
            ["runner"],
            buckets=COMPILE_BUCKETS,
            registry=r,
        )
        self.upload_duration = Histogram(
            "meshd_upload_duration_seconds",
            "Wall time of completed uploads.",
            buckets=UPLOAD_BUCKETS,
            registry=r,
        )
        self.remote_dispatches = Counter(
            "meshd_remote_dispatches",
            "Compiles sent to a receiver, by receiver fingerprint and outcome "
            "(completed, failed, cancelled, rerouted).",
            ["peer", "outcome"],
            registry=r,
        )
        self.reroutes = Counter(
            "meshd_reroutes",
            "Compiles put back in the queue because their receiver was lost, by that receiver.",
            ["peer"],
            registry=r,
        )
        # -- placeholders: defined now, set by the features when they land -----------
        self.armed_uploads = Gauge(
            "meshd_armed_uploads",
            "Uploads armed to start when their device announces itself (0 until the fleet lands).",
            registry=r,
        )
        self.devices = Gauge(
            "meshd_devices",
            "Fleet devices by state (0 until the fleet lands).",
            ["state"],
            registry=r,
        )
        self.toolchain_provisions = Counter(
            "meshd_toolchain_provisions",
            "esphome toolchains provisioned, by outcome (0 until versioned toolchains land).",
            ["outcome"],
            registry=r,
        )
        self.sandbox_refusals = Counter(
            "meshd_sandbox_refusals",
            "Builds refused by the sandbox (0 until the sandbox lands).",
            registry=r,
        )
        for state in DEVICE_STATES:
            self.devices.labels(state=state)
        for outcome in PROVISION_OUTCOMES:
            self.toolchain_provisions.labels(outcome=outcome)
        now = clock()
        self._busy = {lane: _Busy() for lane in LaneName}
        for lane, busy in self._busy.items():
            busy.set_idle(engine.lane_status(lane).idle, now)
        self._links: dict[str, _LinkTotal] = {}
        # Where a running job runs, so a re-route (its runner is cleared by then) is
        # charged to the receiver that was lost.
        self._runners: dict[str, str] = {}
        r.register(_ScrapeCollector(self))
        self._unlisten = engine.bus.add_listener(self._on_bus_event)

    def close(self) -> None:
        self._unlisten()

    def render(self) -> bytes:
        """The exposition text (Prometheus text format)."""
        return generate_latest(self.registry)

    # -- events ---------------------------------------------------------------------

    def _on_bus_event(self, event: Event) -> None:
        self.observe(event_json(event))

    def observe(self, event: Mapping[str, Any]) -> None:
        """Count one event (the websocket's JSON shape)."""
        kind = event.get("type")
        if kind == "lane_status":
            with contextlib.suppress(ValueError):
                self._busy[LaneName(str(event.get("lane")))].set_idle(
                    bool(event.get("idle")), self._clock()
                )
            return
        job = event.get("job")
        if not isinstance(job, Mapping) or not isinstance(job.get("id"), str):
            return
        job_id = job["id"]
        if kind == "job_started":
            self._runners[job_id] = str(job.get("runner") or LOCAL_RUNNER)
        elif kind == "job_queued":
            lost = self._runners.pop(job_id, None)
            if lost is not None and lost != LOCAL_RUNNER:
                # Queued again after it started remotely: its receiver was lost.
                self.reroutes.labels(peer=lost).inc()
                self.remote_dispatches.labels(peer=lost, outcome="rerouted").inc()
        elif kind in TERMINAL_EVENTS:
            self._runners.pop(job_id, None)
            self._job_ended(job, TERMINAL_EVENTS[kind])

    def _job_ended(self, job: Mapping[str, Any], status: str) -> None:
        job_type = str(job.get("type"))
        self.jobs.labels(type=job_type, status=status).inc()
        runner = job.get("runner")
        remote = isinstance(runner, str) and runner != LOCAL_RUNNER
        if job_type == "compile" and remote:
            self.remote_dispatches.labels(peer=str(runner), outcome=status).inc()
        started, finished = job.get("started_at"), job.get("finished_at")
        if status != "completed" or not isinstance(started, int | float):
            return
        if not isinstance(finished, int | float) or finished < started:
            return
        if job_type == "compile":
            where = "remote" if remote else "local"
            self.compile_duration.labels(runner=where).observe(finished - started)
        elif job_type == "upload":
            self.upload_duration.observe(finished - started)

    # -- scrape-time reads ------------------------------------------------------------

    def _link_totals(self) -> dict[str, _LinkTotal]:
        if self.link_bytes is not None:
            for peer, session, sent, received in self.link_bytes():
                self._links.setdefault(peer, _LinkTotal()).update(session, sent, received)
        return self._links


class _ScrapeCollector:
    """The values read when Prometheus asks: lanes, peers, link bytes, versions."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        now = m._clock()
        depth = GaugeMetricFamily(
            "meshd_queue_depth",
            "Jobs waiting on a lane (held dependents excluded).",
            labels=["lane"],
        )
        running = GaugeMetricFamily(
            "meshd_lane_running", "Jobs running on a lane, local and remote.", labels=["lane"]
        )
        slots = GaugeMetricFamily("meshd_lane_slots", "Local slots of a lane.", labels=["lane"])
        busy = CounterMetricFamily(
            "meshd_lane_busy_seconds",
            "Seconds a lane was not idle (a job in a local slot, or jobs waiting).",
            labels=["lane"],
        )
        for lane in LaneName:
            status = m.engine.lane_status(lane)
            depth.add_metric([lane.value], status.queued)
            running.add_metric([lane.value], len(status.running))
            slots.add_metric([lane.value], status.slots)
            busy.add_metric([lane.value], m._busy[lane].seconds(now))
        yield from (depth, running, slots, busy)

        peers = m._peers()
        connected = [p for p in peers if p.get("connected")]
        yield _gauge("meshd_peers_known", "Peers this node has seen.", len(peers))
        yield _gauge("meshd_peers_connected", "Peers with an open link.", len(connected))
        yield _gauge(
            "meshd_peers_idle",
            "Connected peers that take builds and whose compile lane is idle.",
            sum(1 for p in connected if p.get("idle") and p.get("accepts_builds")),
        )

        sent = CounterMetricFamily(
            "meshd_peer_link_sent_bytes", "Bytes sent on the link to a peer.", labels=["peer"]
        )
        received = CounterMetricFamily(
            "meshd_peer_link_received_bytes",
            "Bytes received on the link from a peer.",
            labels=["peer"],
        )
        for peer, total in sorted(m._link_totals().items()):
            sent.add_metric([peer], total.base_sent + total.sent)
            received.add_metric([peer], total.base_received + total.received)
        yield from (sent, received)

        info = GaugeMetricFamily(
            "meshd_info",
            "This daemon's versions (always 1).",
            labels=["version", "esphome_version"],
        )
        info.add_metric([m.node.version, m.node.esphome_version or ""], 1)
        yield info

        # The compile cache (all its directories), as last read after a compile.
        cache = m.node.compile_cache or {}
        yield CounterMetricFamily(
            "meshd_compile_cache_hits",
            "Compilations the compile cache answered (ccache direct + preprocessed hits).",
            value=cache.get("hits", 0),
        )
        yield CounterMetricFamily(
            "meshd_compile_cache_misses",
            "Compilations the compile cache could not answer.",
            value=cache.get("misses", 0),
        )
        yield _gauge(
            "meshd_compile_cache_size_bytes",
            "Bytes the compile cache holds.",
            cache.get("size_bytes", 0),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


# Offsets into Linux's ``struct tcp_info`` (include/uapi/linux/tcp.h, since 4.2):
# tcpi_bytes_acked at 120 and tcpi_bytes_received at 128, both u64.
_TCP_INFO_BYTES = struct.Struct("=QQ")
_TCP_INFO_BYTES_OFFSET = 120
_TCP_INFO_LEN = _TCP_INFO_BYTES_OFFSET + _TCP_INFO_BYTES.size


def tcp_byte_counts(sock: Any) -> tuple[int, int] | None:
    """``(bytes sent and acknowledged, bytes received)`` of a TCP socket, from the kernel.

    Kernel counters need nothing from the code that owns the socket. None where
    ``TCP_INFO`` is missing (not Linux) or the socket is closed.
    """
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    acked, received = _TCP_INFO_BYTES.unpack_from(raw, _TCP_INFO_BYTES_OFFSET)
    return int(acked), int(received)


def metrics_handler(metrics: Metrics) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.Response:
        # Prometheus says what it reads (text 0.0.4/1.0.0, OpenMetrics); the library picks.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(metrics.registry), headers={"Content-Type": content_type})

    return handle


def metrics_routes(metrics: Metrics) -> list[web.AbstractRouteDef]:
    """``GET /metrics`` on the control API (behind its token or the page's cookie)."""
    return [web.get(METRICS_PATH, metrics_handler(metrics))]


class MetricsServer:
    """``--metrics-listen HOST:PORT``: ``/metrics`` alone, without a token, for Prometheus.

    A daemon ``Service``: started after the engine, stopped before it. Unauthenticated
    on purpose (scrapers rarely carry bearer tokens); bind it where only the scraper
    reaches it. It serves nothing but the metrics.
    """

    name = "metrics"

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(METRICS_PATH, metrics_handler(self.metrics))
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = self.port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                port = int(address[1])
                break
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}{METRICS_PATH}"
        _LOGGER.info("metrics listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
