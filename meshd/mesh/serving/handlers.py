"""The receiver's answers to an offloader's requests: have_query, blob_request,
compile_request, cancel and artifact_request (protocol/PROTOCOL.md, "A remote compile").

Everything an offloader sends is hostile input until checked: the session must belong
to a peer trusted to send work, the bundle manifest is size-capped and validated, and
every file it names must already be in the content store. A compile that passes is
materialised in a stable work directory per offloader and configuration (so
PlatformIO stays warm) and queued on this node's own compile lane like any local job,
forced local so it is never offloaded onward. :class:`RemoteJobs` then owns it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

from meshd.jobs.engine import Engine
from meshd.jobs.model import Job, JobStatus, JobType, LaneName
from meshd.jobs.options import JobOptions
from meshd.link import LinkSession, RejectRequest, Router
from meshd.link.errors import ErrorCode
from meshd.link.messages import (
    ArtifactReply,
    ArtifactRequest,
    BlobReply,
    BlobRequest,
    Cancel,
    CompileAccept,
    CompileReject,
    CompileRequest,
    HaveQuery,
    HaveReply,
    Message,
)
from meshd.mesh.content.artifacts import ArtifactManifest, collect_artifacts
from meshd.mesh.content.blobs import BlobExchange
from meshd.mesh.content.bundle import BundleManifest, BundleRejected, materialise
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.provenance import (
    ArtifactDigest,
    ProvenanceRecord,
    SignedProvenance,
    sign,
)
from meshd.mesh.security.trust import Permission, TrustStore
from meshd.mesh.serving.remote_jobs import RemoteJobs
from meshd.toolchain.storage import ArtifactError, FlashMethod, load_storage
from meshd.toolchain.versions import is_version
from meshd.version_policy import VersionPolicy, compatible

_LOGGER = logging.getLogger(__name__)

# A bundle manifest lists at most a few thousand files; more is not a manifest.
MAX_MANIFEST_BYTES = 1024 * 1024

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

# Below this much free space under the build root the receiver declines compiles
# instead of failing one half-way (an ESP32 build writes a few hundred MiB).
DEFAULT_MIN_FREE = 2 * 1024 * 1024 * 1024


def _read_manifest(path: Path) -> BundleManifest:
    return BundleManifest.from_wire(json.loads(path.read_bytes()))


def _low_on_disk(root: Path, min_free: int) -> str | None:
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < min_free:
        return f"receiver low on disk: {free // (1024 * 1024)} MiB free"
    return None


# The bundle each accepted compile built, for its provenance record; far more than the
# compiles a receiver holds artifacts for, and bounded so a chatty offloader cannot grow it.
MAX_REMEMBERED_BUNDLES = 1024


def _dirname(text: str) -> str:
    return _UNSAFE.sub("_", text)[:64] or "config"


class RequestHandlers:
    def __init__(
        self,
        engine: Engine,
        trust: TrustStore,
        blobs: BlobExchange,
        jobs: RemoteJobs,
        builds_root: Path,
        *,
        accepts_builds: bool,
        stopping: Callable[[], bool],
        identity: Identity | None = None,
        esphome_version: Callable[[], str] = lambda: "",
        version_policy: VersionPolicy = VersionPolicy.ANY,
        provisions: bool = False,
        env: Mapping[str, str] | None = None,
        min_free: int = DEFAULT_MIN_FREE,
        sandbox_error: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``sandbox_error()``: why remote builds cannot be sandboxed here (then every
        compile is declined ``busy`` with that text), or None."""
        self.engine = engine
        self.trust = trust
        self.blobs = blobs
        self.jobs = jobs
        self.builds_root = builds_root
        self.accepts_builds = accepts_builds
        self._stopping = stopping
        # The receiver's own esphome finds its records in each work directory, never in
        # a data dir the daemon's environment names (the sandbox drops it the same way).
        self._env = {k: v for k, v in (env or {}).items() if k != "ESPHOME_DATA_DIR"}
        self.min_free = min_free
        self._sandbox_error = sandbox_error
        # Signs the provenance of every build served; None serves unsigned (tests of
        # old receivers only: a node always has its identity).
        self._identity = identity
        self._esphome_version = esphome_version
        self._version_policy = version_policy
        self.provisions = provisions
        """Whether this receiver provisions the esphome an offloader asks for."""
        self._bundles: OrderedDict[str, bytes] = OrderedDict()

    def register(self, router: Router) -> None:
        router.on(HaveQuery, self._on_have_query)
        router.on(CompileRequest, self._on_compile)
        router.on(Cancel, self._on_cancel)
        router.on(ArtifactRequest, self._on_artifacts)
        router.on(BlobRequest, self._on_blob_request)

    def may_send_work(self, session: LinkSession) -> bool:
        peer = self.trust.get(session.peer.fingerprint_hex)
        return peer is not None and peer.allows(Permission.SEND_WORK)

    def _require_offloader(self, session: LinkSession) -> None:
        if not self.may_send_work(session):
            raise RejectRequest(ErrorCode.FORBIDDEN, "this node does not accept work from you")

    async def _on_have_query(self, session: LinkSession, message: HaveQuery) -> HaveReply:
        self._require_offloader(session)
        wanted = [d.hex() for d in message.digests]
        # Only this offloader's own store answers: no cross-offloader probing.
        missing = await asyncio.to_thread(self.blobs.store_for(session).missing, wanted)
        return HaveReply(tuple(bytes.fromhex(d) for d in missing))

    async def _on_blob_request(self, session: LinkSession, message: BlobRequest) -> BlobReply:
        self._require_offloader(session)
        await self.blobs.push(
            session, [d.hex() for d in message.digests], self.blobs.store_for(session)
        )
        return BlobReply(len(message.digests))

    async def _on_compile(self, session: LinkSession, message: CompileRequest) -> Message:
        def reject(reason: str, text: str) -> CompileReject:
            _LOGGER.info("rejected compile %s: %s (%s)", message.job_id, reason, text)
            return CompileReject(message.job_id, reason, text)

        if not self.may_send_work(session):
            return reject("forbidden", "this receiver does not accept work from you")
        if self._stopping():
            return reject("shutting_down", "this receiver is shutting down")
        if not self.accepts_builds:
            return reject("busy", "this node does not accept builds (--no-receiver)")
        sandbox_error = self._sandbox_error()
        if sandbox_error is not None:
            return reject("busy", sandbox_error)
        low = await asyncio.to_thread(_low_on_disk, self.builds_root, self.min_free)
        if low is not None:
            return reject("busy", low)
        full = self.blobs.over_quota(session)
        if full is not None:
            return reject("busy", full)
        pin, mismatch = self._version_for(message.esphome_version, exact=message.exact_version)
        if mismatch is not None:
            return reject("version_mismatch", mismatch)
        await self.blobs.settle(session)
        store = self.blobs.store_for(session)
        digest = message.bundle_digest.hex()
        if message.bundle_size > MAX_MANIFEST_BYTES:
            return reject("invalid", f"bundle manifest of {message.bundle_size} bytes is too large")
        if not await asyncio.to_thread(store.has, digest):
            return reject("missing_content", "the bundle manifest was never received")
        try:
            manifest = await asyncio.to_thread(_read_manifest, store.path(digest))
        except (BundleRejected, ValueError) as exc:
            return reject("invalid", f"bundle refused: {exc}")
        missing = await asyncio.to_thread(store.missing, [f.digest for f in manifest.files])
        if missing:
            return reject("missing_content", f"{len(missing)} bundle files were never received")

        offloader = session.peer.fingerprint_hex
        workdir = self.builds_root / offloader[:16] / _dirname(Path(manifest.config_filename).stem)
        config_path = workdir / manifest.config_filename
        # The offloader superseded its own earlier compile of this configuration: end
        # that one before its work directory changes under it.
        for job in self.engine.active_jobs():
            if job.configuration == str(config_path.resolve()):
                await self.engine.cancel(job.id)
        try:
            config = await asyncio.to_thread(materialise, manifest, store, workdir)
        except (BundleRejected, OSError) as exc:
            return reject("invalid", f"cannot unpack bundle: {exc}")
        peer = self.trust.get(offloader)
        job = self.engine.submit(
            JobType.COMPILE,
            str(config),
            options=JobOptions(
                force_local=True,
                offloader=offloader,
                offloader_name=peer.name if peer and peer.name else offloader[:16],
                remote_job=message.job_id,
                esphome_version=pin,
            ),
        )
        self._bundles[job.id] = message.bundle_digest
        while len(self._bundles) > MAX_REMEMBERED_BUNDLES:
            self._bundles.popitem(last=False)
        position = self.engine.lane_status(LaneName.COMPILE).queued
        await self.jobs.adopt(session, message.job_id, job)
        return CompileAccept(message.job_id, position=position)

    def _version_for(self, wanted: str, *, exact: bool) -> tuple[str | None, str | None]:
        """``(pin, None)`` to build with esphome ``wanted``, or ``(None, why not)``.

        The pin is the job's ``esphome_version``: None builds with the receiver's own
        esphome. The offloader's placement already applied *its* policy; this re-checks
        the request on the receiver, so a request naming a version it neither runs nor
        may provision (``1999.1.0`` under ``release``) is refused instead of being built
        silently with another esphome. An ``exact`` request is built with exactly that
        version or refused; otherwise the receiver's own policy decides whether its own
        esphome will do (``provision`` reads as ``release`` there), and provisioning is
        the fallback.
        """
        own = self._esphome_version()
        if own and wanted == own:
            return None, None
        provisionable = self.provisions and is_version(wanted)
        if exact:
            if provisionable:
                return wanted, None
            return None, (
                f"this receiver runs esphome {own or '(unknown)'}, not {wanted}, "
                "and does not provision other versions"
            )
        policy = self._version_policy
        if policy is VersionPolicy.PROVISION:
            policy = VersionPolicy.RELEASE
        if policy is VersionPolicy.ANY or (own and compatible(wanted, own, policy)):
            return None, None
        if provisionable:
            return wanted, None
        if not own:
            return None, f"this receiver does not know its esphome version (asked for {wanted})"
        return None, (
            f"this receiver runs esphome {own}, not {wanted} "
            f"(version policy {self._version_policy.value}"
            + (", and it does not provision other versions)" if not self.provisions else ")")
        )

    async def _on_cancel(self, session: LinkSession, message: Cancel) -> None:
        await self.jobs.cancel(session, message.job_id, message.reason)

    async def _on_artifacts(self, session: LinkSession, message: ArtifactRequest) -> ArtifactReply:
        self._require_offloader(session)
        job = self.jobs.find(session, message.job_id)
        if job is None or job.status is not JobStatus.COMPLETED:
            raise RejectRequest(ErrorCode.NOT_FOUND, f"no completed compile {message.job_id}")
        method = FlashMethod(message.method)
        store = self.blobs.store_for(session)
        try:
            manifest = await asyncio.to_thread(
                collect_artifacts,
                Path(job.configuration),
                method,
                store,
                include_elf=message.elf,
                env=self._env,
            )
        except ArtifactError as exc:
            raise RejectRequest(ErrorCode.NOT_FOUND, str(exc)) from None
        data = json.dumps(manifest.to_wire()).encode()
        digest = await asyncio.to_thread(store.put_bytes, data)
        record = sig = None
        if self._identity is not None and "provenance" in session.peer.caps:
            signed = await asyncio.to_thread(
                self._provenance, session, message.job_id, job, manifest
            )
            record, sig = signed.record, signed.signature
        return ArtifactReply(
            message.job_id, bytes.fromhex(digest), len(data), provenance=record, provenance_sig=sig
        )

    def _provenance(
        self, session: LinkSession, job_id: str, job: Job, manifest: ArtifactManifest
    ) -> SignedProvenance:
        """Sign what this receiver built for ``job_id`` and serves (PROTOCOL.md 14)."""
        assert self._identity is not None
        bundle = self._bundles.get(job.id)
        if bundle is None:
            raise RejectRequest(ErrorCode.NOT_FOUND, f"no record of the bundle of {job_id}")
        try:
            platform = load_storage(Path(job.configuration), self._env).target_platform
        except ArtifactError as exc:
            raise RejectRequest(ErrorCode.NOT_FOUND, str(exc)) from None
        version = manifest.esphome_version or self._esphome_version()
        record = ProvenanceRecord(
            receiver=self._identity.fingerprint,
            offloader=session.peer.fingerprint,
            job_id=job_id,
            bundle=bundle,
            esphome_version=version,
            platform=platform,
            artifacts=tuple(
                ArtifactDigest(f.path, f.role, bytes.fromhex(f.digest)) for f in manifest.files
            ),
            time_ms=int(time.time() * 1000),
        )
        return sign(record, self._identity)
