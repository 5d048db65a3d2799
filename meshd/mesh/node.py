"""The mesh part of a daemon: builds every mesh component and wires them together.

One ``MeshNode`` per daemon. It holds no rules of its own; each role lives in its
module and this one only connects them:

* security/: the identity, the trust store, pairing;
* peering/: the registry, zeroconf discovery and our advert, sessions
  (``Connections``), and the introductions peers exchange when one opens;
* serving/: the receiver (request handlers, remote-job bookkeeping, status pusher);
* dispatch/: the offloader (the compile lane's remote runner) and the placer;
* content/: the content store, blob exchange and the pruner of unused builds.

The daemon calls ``start`` and ``stop``; the API sees this node only as a
``MeshControl`` (meshd/api/mesh_control.py), whose members are at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshd.address import parse_host_port
from meshd.config import DEFAULT_HEARTBEAT, DEFAULT_PEER_LISTEN
from meshd.jobs.engine import Engine
from meshd.jobs.model import LaneName
from meshd.link import LinkServer, LinkSession, Router, SessionConfig
from meshd.mesh.content.artifacts import MAX_ARTIFACT_BYTES
from meshd.mesh.content.blobs import BLOB_STREAM, BlobExchange
from meshd.mesh.content.pruner import DEFAULT_BUILD_TTL, Pruner
from meshd.mesh.content.stores import PeerQuota, StoreSet
from meshd.mesh.dispatch.cache_store import SharedCacheStore
from meshd.mesh.dispatch.offloader import RemoteCompileRunner
from meshd.mesh.dispatch.placer import MeshPlacer
from meshd.mesh.peering.advert import (
    ToolchainWatch,
    follow_compile_lane,
    follow_toolchains,
    receiver_advert,
)
from meshd.mesh.peering.connections import Connections, SessionHooks, sync_registry_trust
from meshd.mesh.peering.discovery import Discovery
from meshd.mesh.peering.introductions import Introductions
from meshd.mesh.peering.registry import Registry
from meshd.mesh.security.identity import Identity, load_or_create
from meshd.mesh.security.pairing import PairingCode, PairingReceiver, pair_join
from meshd.mesh.security.trust import TrustedPeer, TrustStore
from meshd.mesh.serving.cache_gateway import CacheGateway
from meshd.mesh.serving.handlers import DEFAULT_MIN_FREE
from meshd.mesh.serving.receiver import Receiver
from meshd.toolchain.tools import Toolchain
from meshd.version_policy import VersionPolicy


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
    provision: bool = False
    """As a receiver, provision the esphome an offloader asks for (the engine's compile
    runner must then have a ``ToolchainStore``)."""
    heartbeat: float = DEFAULT_HEARTBEAT
    build_ttl: float = DEFAULT_BUILD_TTL
    # What one offloader may make this receiver hold, and the disk floor below which
    # it declines compiles (docs/SECURITY.md).
    peer_quota: PeerQuota = field(default_factory=PeerQuota)
    min_free: int = DEFAULT_MIN_FREE


class MeshNode:
    def __init__(
        self,
        data_dir: Path,
        engine: Engine,
        toolchain: Toolchain,
        settings: MeshSettings,
        *,
        esphome_version: Callable[[], str],
        toolchains: Callable[[], Sequence[str]] = tuple,
        recent_toolchains: Callable[[], Sequence[str]] | None = None,
        watch_toolchains: ToolchainWatch | None = None,
    ) -> None:
        """``toolchains``: the ready provisioned versions (``node_info``, lane status);
        ``recent_toolchains`` the same, most recently used first (the bounded mDNS
        ``tc``; default ``toolchains``); ``watch_toolchains`` subscribes to changes of
        them (``ToolchainStore.watch``) so the advert stays current."""
        self.settings = settings
        self.engine = engine
        self._esphome_version = esphome_version
        self._recent_toolchains = recent_toolchains or toolchains
        self._watch_toolchains = watch_toolchains
        env = toolchain.environ()
        # security
        self.identity: Identity = load_or_create(data_dir)
        self.trust = TrustStore.open(data_dir)
        # A pairing changes the trust store from the link side: the registry (and so
        # `meshd peers`) must show the new offloader as trusted at once.
        self.pairing = PairingReceiver(
            self.identity,
            self.trust,
            name=settings.name,
            on_paired=lambda _peer: self.connections.trust_changed(),
        )
        # content
        self.stores = StoreSet(data_dir / "mesh" / "cas", quota=settings.peer_quota)
        self.store = self.stores.own
        self.builds_root = data_dir / "mesh" / "builds"
        self.pruner = Pruner(self.builds_root, self.stores.all, ttl=settings.build_ttl)
        self.router = Router()
        self.blobs = BlobExchange(
            self.stores,
            max_blob=MAX_ARTIFACT_BYTES,
            accept_unrequested=lambda s: self.receiver.may_send_work(s),
        )
        self.router.on_stream(BLOB_STREAM, self.blobs.on_stream)
        # peering
        self.registry = Registry(
            is_trusted=lambda fp: self.trust.get(fp) is not None,
            own_fingerprint=self.identity.fingerprint_hex,
        )
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
        self.introductions = Introductions(
            self.registry,
            name=settings.name,
            accepts_builds=settings.receiver,
            esphome_version=esphome_version,
            on_introduced=self.connections.introduced,
            provisions=settings.provision,
            toolchains=toolchains,
        )
        self.introductions.register(self.router)
        self.server = LinkServer(
            self.identity,
            authorize=self.trust.authorizer(),
            router=self.router,
            on_session=self.connections.accept,
            pairing=self.pairing.allow_handshake,
            pairing_router=self.pairing.router,
            config=session_config,
        )
        self.discovery: Discovery | None = None
        # serving
        self.receiver = Receiver(
            engine,
            self.trust,
            self.blobs,
            self.builds_root,
            accepts_builds=settings.receiver,
            esphome_version=esphome_version,
            identity=self.identity,
            version_policy=settings.version_policy,
            provisions=settings.provision,
            toolchains=toolchains,
            env=env,
            min_free=settings.min_free,
        )
        self.receiver.register(self.router)
        # the compile cache across the mesh: receivers' builds reach their offloader's
        # shared store through a per-job loopback gateway (docs/ARCHITECTURE.md)
        self.cache_gateway = CacheGateway(self.receiver.jobs.link_of)
        # dispatch
        self.offloader = RemoteCompileRunner(
            toolchain,
            self.blobs,
            self._session_for,
            data_dir / "mesh" / "outgoing",
            esphome_version=esphome_version,
            own_fingerprint=self.identity.fingerprint,
            version_policy=settings.version_policy,
            on_duration=self.registry.record_compile,
            env=env,
            peer_name=self._peer_name,
        )
        self.offloader.register(self.router)
        self.shared_cache = SharedCacheStore(
            data_dir / "ccache" / "shared", self.offloader.is_following
        )
        self.shared_cache.register(self.router)
        self.placer: MeshPlacer | None = None
        if settings.offload:
            self.placer = MeshPlacer(
                self.registry.views,
                local_version=esphome_version,
                policy=settings.version_policy,
                include_local=settings.include_local,
                connecting=self.connections.connecting,
            )
            engine.use_mesh(self.placer, self.offloader)
        self._unlisten: list[Callable[[], None]] = []

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self.receiver.start()
        sync_registry_trust(self.registry, self.trust)
        self._unlisten.append(self.registry.add_listener(lambda _c: self.engine.reschedule()))
        if self._watch_toolchains is not None:
            # lane_status carries the ready toolchains: a sweep must not wait for the
            # next lane change to reach the offloaders.
            self._unlisten.append(self._watch_toolchains(self.receiver.status.refresh))
        await self.server.start(self.settings.listen_host, self.settings.listen_port)
        if self.settings.mdns:
            advert = None
            if self.settings.receiver:
                advert = receiver_advert(
                    fingerprint=self.identity.fingerprint_hex,
                    name=self.settings.name,
                    port=self.server.port,
                    esphome_version=self._esphome_version(),
                    lane=self.engine.lane_status(LaneName.COMPILE),
                    provisions=self.settings.provision,
                    toolchains=self._recent_toolchains(),
                )
            self.discovery = Discovery(
                self.registry,
                interfaces=self.settings.mdns_interfaces,
                advertise=advert,
                browse=self.settings.offload,
            )
            recent = self._recent_toolchains
            self._unlisten.append(follow_compile_lane(self.engine.bus, self.discovery, recent))
            if self._watch_toolchains is not None:
                self._unlisten.append(
                    follow_toolchains(self._watch_toolchains, self.discovery, recent)
                )
            await self.discovery.start()
        await self.connections.start()
        if self.placer is not None:
            self.placer.ready = True
            self.engine.reschedule()
        self.pruner.start()

    async def stop(self) -> None:
        for unlisten in self._unlisten:
            unlisten()
        await self.pruner.stop()
        if self.discovery is not None:
            await self.discovery.stop()  # goodbye first: peers stop choosing us
        await self.receiver.stop()
        await self.cache_gateway.close()
        await self.connections.stop()
        await self.server.close()
        await self.introductions.stop()
        self.trust.close()

    # -- wiring ---------------------------------------------------------------------------

    def _session_for(self, fingerprint: str) -> LinkSession | None:
        return self.connections.session_for(fingerprint)

    def _peer_name(self, fingerprint: str) -> str | None:
        peer = self.registry.get(fingerprint)
        return peer.name if peer is not None else None

    def _opened(self, session: LinkSession) -> None:
        self.receiver.attach(session)
        self.introductions.opened(session)

    def _closed(self, session: LinkSession) -> None:
        self.introductions.closed(session)
        self.receiver.detach(session)
        self.offloader.session_lost(session)
        self.blobs.forget(session)
        self.engine.reschedule()

    # -- MeshControl: what the API may ask ------------------------------------------------

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint_hex

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

    def trusted(self) -> list[TrustedPeer]:
        return self.trust.list()

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
        target = parse_host_port(address)
        peer = await pair_join(
            target.host, target.port, code, self.identity, self.trust, name=self.settings.name
        )
        self.trust.note_address(peer.fingerprint, str(target))
        self.connections.trust_changed()
        return peer
