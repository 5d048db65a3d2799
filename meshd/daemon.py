"""The composition root: build every part of a node from its Settings, run, shut down.

Order matters and is the contract with systemd and with clients:

start:  job engine (restore, orphan cleanup) → services (the mesh, later) → control
        API → ``api.json`` → ``READY=1`` → watchdog pings; ``esphome version`` runs in
        the background and fills in the status once it answers;
stop:   (SIGTERM/SIGINT, or a crashed lane) ``STOPPING=1`` → API (no new requests,
        streams ended) → services in reverse → ``engine.stop()`` (interrupted jobs go
        back to queued and run again after restart) → exit 0 (1 if a lane crashed).

Where the mesh plugs in
-----------------------
* :meth:`Daemon.build_services` returns the long-running components (peer link
  server, discovery, dispatch pool, receiver...) as :class:`Service` objects. They
  are started after the engine and before the API, and stopped after the API and
  before the engine, so no request reaches a half-started mesh and no remote compile
  is in flight while the engine persists its jobs.
* The operator's view: :class:`meshd.api.metrics.Metrics` listens to the engine's bus
  from the start; the status page and ``/metrics`` are API routes; ``--metrics-listen``
  adds a :class:`~meshd.api.metrics.MetricsServer` service; :mod:`meshd.observe` bridges
  peer changes onto the bus and reads link bytes for the metrics.
* :attr:`Daemon.hooks` (:class:`meshd.api.ApiHooks`): ``mesh`` (the mesh as a
  ``MeshControl``: identity, peers, trust, pairing) and ``routes`` (the pairing/trust
  endpoints built on it) for the API.

Where the fleet plugs in
------------------------
The device monitor (a service like the mesh) drives armed uploads through two engine
hooks, both called on the event loop: it sets ``engine.devices_online`` (name →
address if the device is online now) and calls ``engine.device_seen(name, address)``
each time a device announces itself. The daemon itself wires ``engine.device_name_of``
(the name in esphome's build record), ``engine.after_compile`` (keep the firmware in
:attr:`Daemon.archive`) and ``hooks.builds`` (the kept builds, for the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from meshd import __version__
from meshd.api.cache_routes import CacheControl, cache_routes
from meshd.api.fleet_routes import fleet_routes
from meshd.api.mesh_routes import mesh_routes
from meshd.api.metrics import Metrics, MetricsServer, metrics_routes
from meshd.api.server import ApiServer, load_token, write_api_file
from meshd.api.state import ApiHooks, NodeFacts
from meshd.api.ui import ui_routes
from meshd.api.validation import resolve_pins
from meshd.config import Settings
from meshd.db import database_path
from meshd.fleet.service import FleetService
from meshd.fleet.state import FlashedBuild
from meshd.jobs.build import JobBuild
from meshd.jobs.engine import Engine
from meshd.jobs.events import Event, JobFinished
from meshd.jobs.history import HistoryLimits
from meshd.jobs.model import JobType
from meshd.jobs.runner import Runner
from meshd.jobs.store import DatabaseUnusable, check_database
from meshd.mesh.content.stores import PeerQuota
from meshd.mesh.node import MeshSettings
from meshd.mesh.service import MeshService
from meshd.mesh.serving.peer_runner import PeerCompileRunner
from meshd.observe import bridge_peer_events, link_bytes
from meshd.sdnotify import Notifier
from meshd.toolchain.archive import BuildArchive
from meshd.toolchain.ccache import PRE_SCRIPT, CacheUnavailable, CompileCaches, find_ccache
from meshd.toolchain.runners import CompileRunner, RenameRunner, make_runners
from meshd.toolchain.sandbox import SandboxUnavailable, receiver_sandbox
from meshd.toolchain.storage import ArtifactError, load_storage
from meshd.toolchain.tools import Toolchain, ToolMissing, locate_tool
from meshd.toolchain.versions import PipOptionError, PipOptions, SweepPolicy, ToolchainStore
from meshd.toolchain.versions.service import ToolchainSweeper

_LOGGER = logging.getLogger(__name__)

# esphome imports half of its dependencies before printing its version; a Pi under
# load can take a while, and nothing waits for the answer.
ESPHOME_VERSION_TIMEOUT = 120.0
_VERSION_RE = re.compile(r"Version:\s*(\S+)")

EXIT_OK = 0
EXIT_FAILURE = 1
# The database is corrupt or unusable: restarting will not help (sysexits EX_DATAERR;
# the systemd unit does not restart on it).
EXIT_BAD_DATA = 65


def flashed_build(engine: Engine, configuration: str) -> FlashedBuild | None:
    """The fleet's view of the last upload of ``configuration`` the engine completed:
    which job, and which esphome built what it flashed (its ``build`` record)."""
    job = engine.last_flashed(configuration)
    if job is None:
        return None
    build = job.build
    if not isinstance(build, JobBuild):  # none, or a record that no longer reads
        return FlashedBuild(job.id, None)
    verified = build.provenance.verified if build.provenance is not None else None
    return FlashedBuild(job.id, build.esphome_version, build.builder, verified)


class Service(Protocol):
    """A long-running part of the daemon started and stopped with it (the mesh's shape)."""

    name: str

    async def start(self) -> None:
        """Start serving; return once started. Raising aborts the daemon's start."""

    async def stop(self) -> None:
        """Stop and release everything; must not raise on a partly started service."""


class Daemon:
    """One node: the engine, the API, the services, and their life cycle."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        runners: Mapping[JobType, Runner] | None = None,
    ) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        esphome = locate_tool("esphome", settings.esphome)
        esptool = locate_tool("esptool")
        self.toolchain = Toolchain(esphome=esphome.command, esptool=esptool.command)
        self.archive = BuildArchive(settings.data_dir / "artifacts", keep=settings.kept_builds)
        self.archive.clean_leftovers()
        # Toolchains by esphome version: for compiles pinned to another esphome (local
        # ones, and an offloader's when this receiver provisions). Raises PipOptionError.
        self.store: ToolchainStore | None = None
        if settings.toolchain_provision:
            self.store = ToolchainStore(
                settings.data_dir,
                pip=PipOptions(
                    index_url=settings.toolchain_index_url,
                    find_links=settings.toolchain_find_links,
                ),
            )
        self.caches, cache_warning = _compile_caches(settings)
        self.peer_compile: PeerCompileRunner | None = None
        if runners is None:
            made = make_runners(
                self.toolchain,
                archive=self.archive,
                caches=self.caches,
                store=self.store,
                default_version=lambda: self.node.esphome_version,
                resolve=lambda config, device: self.fleet.resolve(config, device),
                verify=lambda config, address, log: self.fleet.verify_flash(config, address, log),
            )
            # Compiles for offloaders run in the build sandbox (docs/SECURITY.md), each
            # with its offloader's own compile cache.
            self.peer_compile = PeerCompileRunner(
                made[JobType.COMPILE], self.toolchain, settings.data_dir
            )
            self.peer_compile.caches = self.caches
            self.peer_compile.store = self.store
            self.peer_compile.default_version = lambda: self.node.esphome_version
            made[JobType.COMPILE] = self.peer_compile
            runners = made
        self.runners = runners
        self.engine = Engine(
            settings.data_dir,
            self.runners,
            upload_slots=settings.upload_slots,
            armed_upload_ttl=settings.armed_upload_ttl,
            history=HistoryLimits(keep=settings.history_keep, max_age=settings.history_max_age),
        )
        if settings.kept_builds:
            self.engine.after_compile = self.archive.after_compile
        self.engine.device_name_of = self._device_name_of
        self.node = NodeFacts(
            name=settings.name,
            version=__version__,
            data_dir=str(settings.data_dir),
            esphome=shlex.join(esphome.command),
        )
        self._esphome_missing = esphome.warning is not None
        if esphome.warning is not None:
            self._warn(esphome.warning)
        elif esptool.warning is not None:
            self._warn(f"{esptool.warning}: serial uploads will fail")
        if cache_warning is not None:
            self._warn(cache_warning)
        self.hooks = ApiHooks()
        self.hooks.builds = lambda config: [b.to_dict() for b in self.archive.builds(config)]
        # The operator's view: metrics fed by the bus from the start (restore included),
        # the status page and /metrics on the API, /metrics alone on --metrics-listen.
        self.metrics = Metrics(self.engine, self.node, peers=lambda: self.hooks.peers())
        self.hooks.routes.extend([*ui_routes(), *metrics_routes(self.metrics)])
        self.cache_control = CacheControl(self.caches, self.node)
        self.hooks.routes.extend(cache_routes(self.cache_control))
        self._version_probed = asyncio.Event()
        self.services: list[Service] = self.build_services()
        if settings.metrics_listen is not None:
            listen = settings.metrics_listen
            self.services.append(MetricsServer(self.metrics, listen.host, listen.port))
        self.api = ApiServer(
            self.engine,
            self.node,
            bind=settings.api,
            token=load_token(settings.data_dir),
            hooks=self.hooks,
            config_dirs=settings.config_dirs,
            esphome_pins=resolve_pins(settings.esphome_pins, settings.config_dirs),
        )
        self._stop_requested: asyncio.Event | None = None

    async def _enforce_cache_budget(self) -> None:
        """Trim every cache directory to the budget at start (it may have been lowered)."""
        if self.caches is None:
            return
        try:
            await asyncio.to_thread(self.caches.enforce_budget)
        except (OSError, subprocess.SubprocessError, CacheUnavailable) as exc:
            _LOGGER.warning("could not trim the compile cache: %s", exc)

    async def _follow_compile_cache(self) -> None:
        """Keep ``node.compile_cache`` (``/status``, ``/metrics``) current: read the
        counters at start and after every compile or rename that ended."""
        if self.caches is None:
            return
        ended = asyncio.Event()

        def on_event(event: Event) -> None:
            if isinstance(event, JobFinished) and event.job.type in _COMPILING:
                ended.set()

        unlisten = self.engine.bus.add_listener(on_event)
        try:
            while True:
                try:
                    await self.cache_control.refresh()
                except (OSError, subprocess.SubprocessError, CacheUnavailable) as exc:
                    _LOGGER.warning("could not read the compile cache's counters: %s", exc)
                await ended.wait()
                ended.clear()
        finally:
            unlisten()

    def _device_name_of(self, configuration: str) -> str | None:
        """The ``esphome: name`` of a configuration's last build (esphome's own record)."""
        try:
            return load_storage(Path(configuration), self.toolchain.environ()).name
        except ArtifactError:
            return None

    def build_services(self) -> list[Service]:
        """The mesh, as one service; it also fills the API hooks (identity, peers, routes)."""
        s = self.settings
        mesh = MeshService(
            s.data_dir,
            self.engine,
            self.toolchain,
            MeshSettings(
                name=s.name,
                listen_host=s.peer_listen.host,
                listen_port=s.peer_listen.port,
                receiver=s.receiver,
                offload=s.offload,
                mdns=s.mdns,
                mdns_interfaces=s.mdns_interfaces or None,
                static_peers=tuple(str(peer) for peer in s.peers),
                version_policy=s.version_policy,
                include_local=s.include_local,
                heartbeat=s.heartbeat,
                peer_quota=PeerQuota(
                    in_flight_bytes=s.peer_max_in_flight,
                    at_rest_bytes=s.peer_max_stored,
                    at_rest_blobs=s.peer_max_blobs,
                ),
                min_free=s.min_free,
                provision=self.store is not None,
            ),
            esphome_version=lambda: self.node.esphome_version,
            version_known=self._version_probed.wait,
            toolchains=self.store.ready_versions if self.store is not None else tuple,
            recent_toolchains=self.store.recent_versions if self.store is not None else None,
            watch_toolchains=self.store.watch if self.store is not None else None,
        )
        self.hooks.mesh = mesh.node
        self.hooks.routes.extend(mesh_routes(mesh.node))
        self.metrics.link_bytes = link_bytes(mesh.node)
        for runner in self.runners.values():
            inner = runner.local if isinstance(runner, PeerCompileRunner) else None
            for each in (runner, inner):
                if isinstance(each, CompileRunner | RenameRunner | PeerCompileRunner):
                    each.remote_storage = mesh.node.cache_gateway.for_job
        bridge_peer_events(mesh.node, self.engine.bus)
        services: list[Service] = [mesh, self._fleet_service()]
        if self.store is not None:
            policy = SweepPolicy(max_idle=s.toolchain_max_idle, disk_budget=s.toolchain_disk_budget)
            services.append(ToolchainSweeper(self.store, policy))
        return services

    def _fleet_service(self) -> FleetService:
        """The device monitor (pinned like the mesh's mDNS) driving armed uploads."""
        s = self.settings
        fleet = FleetService(
            s.data_dir,
            self.toolchain,
            config_dirs=s.config_dirs,
            interfaces=s.mdns_interfaces or None,
            esphome_version=lambda: self.node.esphome_version,
            on_seen=self.engine.device_seen,
            browse=s.mdns,
            verify_timeout=s.verify_timeout,
        )
        self.fleet = fleet
        self.engine.devices_online = fleet.online_address
        fleet.last_flash = lambda configuration: flashed_build(self.engine, configuration)
        self.hooks.routes.extend(fleet_routes(fleet.rows, s.config_dirs))
        return fleet

    async def _set_up_sandbox(self) -> None:
        """Find the build sandbox peers' compiles run in; without one (and no explicit
        opt-out) the receiver declines their compiles ``busy`` with the reason."""
        s = self.settings
        if self.peer_compile is None or not s.receiver:
            return
        error: str | None = None
        sandbox = None
        try:
            sandbox = await asyncio.to_thread(
                receiver_sandbox,
                [s.data_dir],
                unsafe_no_sandbox=s.unsafe_no_sandbox,
                network=s.sandbox_network,
                # The compile cache's PlatformIO pre-script: meshd's own code, lent
                # read-only (an editable or separate install is not in esphome's venv).
                readonly=[PRE_SCRIPT.parent] if self.caches is not None else [],
            )
        except SandboxUnavailable as exc:
            error = str(exc)
            _LOGGER.error("no build sandbox, so no builds for peers: %s", error)  # noqa: TRY400
            self._warn(f"builds for peers refused: {error}")
        self.peer_compile.use(sandbox, unsafe=s.unsafe_no_sandbox, error=error)
        self.node.sandbox = self.peer_compile.state
        if s.unsafe_no_sandbox:
            self._warn("builds for peers run UNSANDBOXED (--unsafe-no-sandbox)")
        for service in self.services:
            if isinstance(service, MeshService):
                service.node.receiver.sandbox_error = (
                    None if error is None else f"this receiver cannot sandbox builds: {error}"
                )

    def request_stop(self) -> None:
        """Begin a clean shutdown (what SIGTERM and SIGINT do)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(self) -> int:
        """Run until asked to stop; returns the process exit code."""
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        started: list[Service] = []
        background: list[asyncio.Task[None]] = []
        exit_code = EXIT_OK
        try:
            await self._enforce_cache_budget()
            await self._set_up_sandbox()
            await self.engine.start()
            background.append(asyncio.create_task(self._probe_esphome(), name="esphome-version"))
            background.append(
                asyncio.create_task(self._follow_compile_cache(), name="compile-cache-stats")
            )
            for service in self.services:
                await service.start()
                started.append(service)
            url = await self.api.start()
            write_api_file(self.settings.data_dir, url, self.api.token)
            self.notifier.ready(f"serving the control API on {url}")
            _LOGGER.info(
                "meshd %s ready (node %s, data in %s)",
                __version__,
                self.node.name,
                self.settings.data_dir,
            )
            watchdog = self.notifier.start_watchdog()
            if watchdog is not None:
                background.append(watchdog)
            exit_code = await self._wait_for_stop()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self.notifier.stopping()
            _LOGGER.info("shutting down")
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._shutdown(started)
        _LOGGER.info("stopped")
        return exit_code

    async def _wait_for_stop(self) -> int:
        """Wait for a stop request, or for a lane to crash (exit 1 so systemd restarts)."""
        assert self._stop_requested is not None
        stop = asyncio.create_task(self._stop_requested.wait())
        lanes = asyncio.create_task(self.engine.join())
        try:
            await asyncio.wait({stop, lanes}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            lanes.cancel()
        if lanes.done() and not lanes.cancelled():
            error = lanes.exception()
            _LOGGER.error("the job engine stopped unexpectedly: %r", error)
            return EXIT_FAILURE
        return EXIT_OK

    async def _shutdown(self, started: list[Service]) -> None:
        """API first (no new work), then services, then the engine; each step isolated."""
        try:
            await self.api.stop()
        except Exception:
            _LOGGER.exception("stopping the control API failed")
        for service in reversed(started):
            try:
                await service.stop()
            except Exception:
                _LOGGER.exception("stopping %s failed", service.name)
        await self.engine.stop()

    async def _probe_esphome(self) -> None:
        """Run ``esphome version`` once and cache it (never imported); the mesh waits on it."""
        try:
            await self._run_version_probe()
        finally:
            self._version_probed.set()

    async def _run_version_probe(self) -> None:
        lines: list[str] = []
        try:
            result = await asyncio.wait_for(
                # Not a job: nothing to record for the orphan kill (it ends in seconds).
                self.toolchain.run(
                    self.toolchain.esphome_argv("version"), on_line=lines.append, on_start=None
                ),
                ESPHOME_VERSION_TIMEOUT,
            )
        except ToolMissing as exc:
            if not self._esphome_missing:  # "not found" already says it better
                self._warn(f"esphome cannot be run ({exc}): set --esphome CMD")
            return
        except TimeoutError:
            self._warn(f"`esphome version` did not answer in {ESPHOME_VERSION_TIMEOUT:.0f} s")
            return
        for line in lines:
            match = _VERSION_RE.search(line)
            if match is not None and result.returncode == 0:
                self.node.esphome_version = match.group(1)
                _LOGGER.info("esphome %s", self.node.esphome_version)
                return
        self._warn(
            f"`esphome version` gave no version (exit {result.returncode}): "
            + " | ".join(lines[-5:])
        )

    def _warn(self, message: str) -> None:
        """Log a problem the operator must fix and show it in status and on the page."""
        _LOGGER.warning("%s", message)
        self.node.warnings.append(message)


_COMPILING = frozenset({JobType.COMPILE, JobType.RENAME})


def _compile_caches(settings: Settings) -> tuple[CompileCaches | None, str | None]:
    """The compile cache directories (None when off or ccache is missing) and a warning."""
    if not settings.compile_cache:
        return None, None
    try:
        program = find_ccache()
    except CacheUnavailable as exc:
        return None, f"{exc}: compiles run without a compile cache"
    return CompileCaches(settings.data_dir / "ccache", settings.compile_cache_size, program), None


def configure_logging(verbose: bool = False) -> None:
    """Log to stderr; under systemd (``$JOURNAL_STREAM``) journald adds the timestamps."""
    level = logging.DEBUG if verbose else logging.INFO
    if os.environ.get("JOURNAL_STREAM"):
        fmt = "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt)
    # aiohttp's access log would print every CLI poll; errors still show.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def serve(settings: Settings, *, verbose: bool = False) -> int:
    """``meshd serve``: run a daemon in a fresh event loop; returns the exit code."""
    configure_logging(verbose)
    if settings.config_file is not None:
        _LOGGER.info("settings from %s", settings.config_file)
    try:
        check_database(database_path(settings.data_dir))
    except DatabaseUnusable as exc:
        _LOGGER.error("meshd cannot start: %s", exc)  # noqa: TRY400 - the message is the point
        return EXIT_BAD_DATA
    try:
        daemon = Daemon(settings)
    except PipOptionError as exc:
        _LOGGER.error("meshd cannot start: %s", exc)  # noqa: TRY400 - the message is the point
        return EXIT_FAILURE
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(daemon.run())
    except OSError as exc:
        # Typically the API address is taken or not local; the message says which.
        _LOGGER.error("meshd cannot start: %s", exc)  # noqa: TRY400 - the message is the point
        return EXIT_FAILURE
    return EXIT_OK
