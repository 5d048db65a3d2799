"""The mesh part of a daemon: builds every mesh component and wires them together.

One ``MeshNode`` per daemon. It owns the identity and trust store, the peer
registry, zeroconf discovery, the link server and outbound connections, the receiver
(serves compiles to trusted offloaders) and the offloader (the compile lane's remote
runner plus the scheduler-backed placer). The daemon only calls ``start``, ``stop``
and the query methods the API needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.config import DEFAULT_HEARTBEAT, DEFAULT_PEER_LISTEN
from meshd.jobs import events
from meshd.jobs.engine import Engine
from meshd.jobs.events import Event
from meshd.jobs.model import LaneName
from meshd.link import LinkServer, LinkSession, Router, SessionConfig
from meshd.link.limits import PROTOCOL_VERSION
from meshd.link.messages import LaneStatus, NodeInfo
from meshd.mesh.content.artifacts import MAX_ARTIFACT_BYTES
from meshd.mesh.content.blobs import BLOB_STREAM, BlobExchange
from meshd.mesh.content.bundle import prune_workdirs
from meshd.mesh.content.store import ContentStore
from meshd.mesh.dispatch.offloader import RemoteCompileRunner
from meshd.mesh.dispatch.placer import MeshPlacer
from meshd.mesh.dispatch.scheduler import VersionPolicy
from meshd.mesh.peering.connections import Connections, SessionHooks, split_address
from meshd.mesh.peering.discovery import AdvertInfo, Discovery
from meshd.mesh.peering.registry import Registry
from meshd.mesh.security.identity import Identity, load_or_create
from meshd.mesh.security.pairing import PairingCode, PairingReceiver, pair_join
from meshd.mesh.security.trust import TrustedPeer, TrustStore
from meshd.mesh.serving.receiver import Receiver
from meshd.toolchain.tools import Toolchain

_LOGGER = logging.getLogger(__name__)

# Work directories a receiver keeps for warm rebuilds, and blobs, live this long unused.
DEFAULT_BUILD_TTL = 7 * 24 * 3600.0
PRUNE_INTERVAL = 3600.0


@dataclass(frozen=True)
class MeshSettings:
    name: str
    listen_host: str = DEFAULT_PEER_LISTEN.host  # a receiver serves its LAN; tests: 127.0.0.1
    listen_port: int = DEFAULT_PEER_LISTEN.port
    receiver: bool = True
    offload: bool = True
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] | None = None
    static_peers: tuple[str, ...] = ()
    version_policy: VersionPolicy = VersionPolicy.RELEASE
    include_local: bool = True
    heartbeat: float = DEFAULT_HEARTBEAT
    build_ttl: float = DEFAULT_BUILD_TTL


class MeshNode:
    def __init__(
        self,
        data_dir: Path,
        engine: Engine,
        toolchain: Toolchain,
        settings: MeshSettings,
        *,
        esphome_version: Callable[[], str],
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.identity: Identity = load_or_create(data_dir)
        self.trust = TrustStore.open(data_dir)
        self.registry = Registry(
            is_trusted=lambda fp: self.trust.get(fp) is not None,
            own_fingerprint=self.identity.fingerprint_hex,
        )
        self.store = ContentStore(data_dir / "mesh" / "cas")
        self.builds_root = data_dir / "mesh" / "builds"
        self._esphome_version = esphome_version
        self.router = Router()
        self.blobs = BlobExchange(
            self.store,
            max_blob=MAX_ARTIFACT_BYTES,
            accept_unrequested=lambda s: self.receiver.may_send_work(s),
        )
        self.router.on_stream(BLOB_STREAM, self.blobs.on_stream)
        env = toolchain.environ()
        self.receiver = Receiver(
            engine,
            self.trust,
            self.blobs,
            self.builds_root,
            accepts_builds=settings.receiver,
            esphome_version=esphome_version,
            env=env,
        )
        self.receiver.register(self.router)
        self.offloader = RemoteCompileRunner(
            toolchain,
            self.blobs,
            self._session_for,
            data_dir / "mesh" / "outgoing",
            esphome_version=esphome_version,
            on_duration=self.registry.record_compile,
            env=env,
        )
        self.offloader.register(self.router)
        self.router.on(LaneStatus, self._on_lane_status)
        self.router.on(NodeInfo, self._on_node_info)
        session_config = SessionConfig(
            heartbeat_interval=settings.heartbeat, dead_after=settings.heartbeat * 3
        )
        self.connections = Connections(
            self.identity,
            self.trust,
            self.registry,
            self.router,
            SessionHooks(opened=self._opened, closed=self._closed),
            session_config=session_config,
            static_peers=settings.static_peers,
            dial=settings.offload,
            on_connecting_change=engine.reschedule,
        )
        self.pairing = PairingReceiver(self.identity, self.trust, name=settings.name)
        self.server = LinkServer(
            self.identity,
            authorize=self.trust.authorizer(),
            router=self.router,
            on_session=self.connections.accept,
            pairing=self.pairing.allow_handshake,
            pairing_router=self.pairing.router,
            config=session_config,
        )
        self.placer: MeshPlacer | None = None
        if settings.offload:
            self.placer = MeshPlacer(
                self.registry.views,
                self._in_flight,
                local_version=esphome_version,
                policy=settings.version_policy,
                include_local=settings.include_local,
                connecting=self.connections.connecting,
            )
            engine.use_mesh(self.placer, self.offloader)
        self.discovery: Discovery | None = None
        self._heard: dict[str, set[str]] = {}
        self._unlisten: list[Callable[[], None]] = []
        self._pruner: asyncio.Task[None] | None = None

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.receiver.cancel_orphans()
        self.registry.sync_trust({p.fingerprint for p in self.trust.list()})
        self._unlisten.append(self.registry.add_listener(lambda _c: self.engine.reschedule()))
        self._unlisten.append(self.engine.bus.add_listener(self._on_engine_event))
        await self.server.start(self.settings.listen_host, self.settings.listen_port)
        if self.settings.mdns:
            lane = self.engine.lane_status(LaneName.COMPILE)
            advert = None
            if self.settings.receiver:
                advert = AdvertInfo(
                    fingerprint=self.identity.fingerprint_hex,
                    name=self.settings.name,
                    port=self.server.port,
                    protocol=PROTOCOL_VERSION,
                    esphome_version=self._esphome_version(),
                    accepts_builds=True,
                    idle=lane.idle,
                    idle_since=lane.idle_since,
                )
            self.discovery = Discovery(
                self.registry,
                interfaces=self.settings.mdns_interfaces,
                advertise=advert,
                browse=self.settings.offload,
            )
            await self.discovery.start()
        await self.connections.start()
        if self.placer is not None:
            self.placer.ready = True
            self.engine.reschedule()
        self._pruner = asyncio.create_task(self._prune_loop(), name="mesh-prune")

    async def stop(self) -> None:
        for unlisten in self._unlisten:
            unlisten()
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self.discovery is not None:
            await self.discovery.stop()  # goodbye first: peers stop choosing us
        await self.receiver.stop()
        await self.connections.stop()
        await self.server.close()
        self.trust.close()

    # -- queries for the API ------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.server.port

    def node_info(self) -> dict[str, Any]:
        return {
            "fingerprint": self.identity.fingerprint_hex,
            "fingerprint_display": self.identity.display,
            "short": self.identity.short,
            "peer_port": self.server.port,
            "receiver": self.settings.receiver,
            "offload": self.settings.offload,
            "version_policy": self.settings.version_policy.value,
            "include_local": self.settings.include_local,
            "pairing_open": self.pairing.is_open,
        }

    def peers(self) -> list[dict[str, Any]]:
        return self.registry.snapshot()

    def trust_peer(
        self,
        fingerprint: str,
        *,
        name: str = "",
        addresses: tuple[str, ...] = (),
        may_send_work: bool = True,
        may_build_for_me: bool = True,
    ) -> TrustedPeer:
        peer = self.trust.add(
            fingerprint,
            name=name,
            addresses=addresses,
            may_send_work=may_send_work,
            may_build_for_me=may_build_for_me,
        )
        self.connections.trust_changed()
        return peer

    def untrust_peer(self, fingerprint: str) -> bool:
        removed = self.trust.remove(fingerprint)
        self.connections.trust_changed()
        return removed

    def open_pairing(self, ttl: float) -> PairingCode:
        return self.pairing.open(ttl)

    async def join(self, address: str, code: str) -> TrustedPeer:
        host, port = split_address(address)
        peer = await pair_join(host, port, code, self.identity, self.trust, name=self.settings.name)
        self.trust.note_address(peer.fingerprint, address)
        self.connections.trust_changed()
        return peer

    # -- wiring ---------------------------------------------------------------------------

    def _session_for(self, fingerprint: str) -> LinkSession | None:
        return self.connections.session_for(fingerprint)

    def _in_flight(self) -> set[str]:
        return {
            job.runner
            for job in self.engine.compile_lane.running_jobs()
            if job.runner and job.runner != "local"
        }

    def _opened(self, session: LinkSession) -> None:
        self.receiver.attach(session)
        asyncio.create_task(self._introduce(session))  # noqa: RUF006 - ends with the session

    async def _introduce(self, session: LinkSession) -> None:
        with contextlib.suppress(Exception):
            await session.send(
                NodeInfo(
                    name=self.settings.name,
                    esphome_version=self._esphome_version(),
                    accepts_builds=self.settings.receiver,
                )
            )

    def _heard_from(self, session: LinkSession, what: str) -> None:
        fingerprint = session.peer.fingerprint_hex
        heard = self._heard.setdefault(fingerprint, set())
        heard.add(what)
        if heard >= {"node_info", "lane_status"}:
            self.connections.introduced(fingerprint)

    def _closed(self, session: LinkSession) -> None:
        self._heard.pop(session.peer.fingerprint_hex, None)
        self.receiver.detach(session)
        self.offloader.session_lost(session)
        self.blobs.forget(session)
        self.engine.reschedule()

    async def _on_lane_status(self, session: LinkSession, message: LaneStatus) -> None:
        self.registry.link_status(
            session.peer.fingerprint_hex,
            idle=message.idle,
            idle_since=message.idle_since,
            running=message.running,
            queued=message.queued,
            esphome_version=message.esphome_version or None,
        )
        self._heard_from(session, "lane_status")

    async def _on_node_info(self, session: LinkSession, message: NodeInfo) -> None:
        self.registry.link_hello(
            session.peer.fingerprint_hex,
            name=message.name,
            protocol=session.peer.version,
            esphome_version=message.esphome_version or None,
            accepts_builds=message.accepts_builds,
        )
        self._heard_from(session, "node_info")

    def _on_engine_event(self, event: Event) -> None:
        if event.type != events.LANE_STATUS or event.data.get("lane") != LaneName.COMPILE.value:
            return
        if self.discovery is not None:
            self.discovery.update_lane(bool(event.data["idle"]), event.data.get("idle_since"))

    async def _prune_loop(self) -> None:
        while True:
            removed = await asyncio.to_thread(
                prune_workdirs, self.builds_root, self.settings.build_ttl
            )
            if removed:
                _LOGGER.info("removed %d build directories unused for the TTL", len(removed))
            blobs, size = await asyncio.to_thread(self.store.prune, self.settings.build_ttl)
            if blobs:
                _LOGGER.info("removed %d content blobs (%d bytes) unused for the TTL", blobs, size)
            await asyncio.sleep(PRUNE_INTERVAL)
