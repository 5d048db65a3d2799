"""The offloader side of a remote compile: a ``Runner`` for the compile lane.

1. ``esphome bundle`` the configuration into the content store (this also validates
   it: a broken YAML fails here, with esphome's message, like a local compile);
2. ask which blobs the receiver lacks and push only those;
3. request the compile; follow its state and log lines into the local job;
4. pull the artifacts a flash needs (digest-verified) and materialise them where
   ``esphome upload`` looks, so the held upload runs as after a local compile.

The receiver is the one the placement chose (``ctx.placement.receiver``). Losing it
at any step (connection, heartbeat, its restart, a refusal) is a ``ReceiverLost``,
which the re-route policy (``reroute.py``) turns into the ``Reroute`` the engine
re-queues. A compile error on the receiver is a normal failure. Cancelling the local
job sends ``cancel`` to the receiver first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from meshd.jobs.build import ArtifactSum, BuildProvenance, JobBuild
from meshd.jobs.diskio import LocalWriteError, is_write_error
from meshd.jobs.options import JobOptions
from meshd.jobs.runner import JobContext, JobFailed
from meshd.link import LinkError, LinkSession, RequestFailed, Router
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
    JobState,
    LogLine,
)
from meshd.mesh.content.artifacts import (
    MAX_ARTIFACT_MANIFEST_BYTES,
    ArtifactManifest,
    materialise_artifacts,
)
from meshd.mesh.content.blobs import BlobExchange
from meshd.mesh.content.bundle import BundleRejected, read_bundle
from meshd.mesh.content.store import ContentError
from meshd.mesh.dispatch.reroute import ReceiverLost, after_loss
from meshd.mesh.security.identity import short_fingerprint
from meshd.mesh.security.provenance import (
    ArtifactDigest,
    ExpectedJob,
    ProvenanceError,
    ProvenanceRecord,
    verify,
)
from meshd.toolchain.commands import EsphomeFailed, create_bundle
from meshd.toolchain.runners import PROVISION_FAILED
from meshd.toolchain.storage import FlashMethod, is_serial_device
from meshd.toolchain.tools import Toolchain, ToolMissing
from meshd.version_policy import VersionPolicy

_LOGGER = logging.getLogger(__name__)

# Waiting for artifacts to arrive after the receiver answered the blob request.
FETCH_TIMEOUT = 300.0
# A cancel is best effort: if the receiver does not take it this fast, the session's
# loss cancels the job there anyway.
CANCEL_TIMEOUT = 5.0

# A remote job's log kept on the offloader; the rest is dropped with one line saying so.
MAX_REMOTE_LOG_BYTES = 16 * 1024 * 1024
_LOST = object()

# The policies under which the signed esphome version must be exactly ours.
_EXACT_POLICIES = frozenset(
    {VersionPolicy.PROVISION, VersionPolicy.EXACT, VersionPolicy.EXACT_REQUIRED}
)

# The one log line that says where a remote compile's time went (parsed by the
# benchmark, tests/bench/scenarios/remote_overhead.py; read by people wondering why an
# offloaded compile took longer than the build).
PHASES_PREFIX = "[meshd] remote compile phases (s):"


class _Phases:
    """Monotonic stamps at each step of a remote compile, reported as one log line."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.spent: dict[str, float] = {}

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.spent[phase] = self.spent.get(phase, 0.0) + now - self._last
        self._last = now

    def line(self) -> str:
        return PHASES_PREFIX + " " + ", ".join(f"{k} {v:.3f}" for k, v in self.spent.items())


def _accepted(answer: object, fingerprint: str) -> CompileAccept:
    """The receiver's answer to compile_request, or the exception it amounts to."""
    if isinstance(answer, CompileAccept):
        return answer
    if isinstance(answer, CompileReject):
        if answer.reason == "invalid":
            # The bundle itself is unsafe or broken: no other receiver will take it.
            raise JobFailed(f"receiver refused the bundle: {answer.message}")
        raise ReceiverLost(f"receiver declined ({answer.reason}: {answer.message})", fingerprint)
    raise ReceiverLost(f"receiver answered {getattr(answer, 'TYPE', answer)!r}", fingerprint)


def _raise_local_failure(arrivals: list[asyncio.Future[None]]) -> None:
    """Raise the ``LocalWriteError`` one of ``arrivals`` failed with, if any did."""
    for arrival in arrivals:
        if arrival.done() and not arrival.cancelled():
            error = arrival.exception()
            if isinstance(error, LocalWriteError):
                raise error


def _manifest_digest(reply: ArtifactReply) -> str:
    """The artifact manifest's digest, once its announced size is within bounds."""
    if reply.manifest_size > MAX_ARTIFACT_MANIFEST_BYTES:
        raise BundleRejected(f"artifact manifest of {reply.manifest_size} bytes")
    return reply.manifest_digest.hex()


def _why(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled on the offloader"
    return f"the offloader gave up: {exc}"


async def _send_cancel(session: LinkSession, job_id: str, reason: str) -> None:
    """Best effort: if the receiver does not take it at once, losing the session cancels
    the job there anyway."""
    with contextlib.suppress(LinkError, TimeoutError):
        await asyncio.shield(asyncio.wait_for(session.send(Cancel(job_id, reason)), CANCEL_TIMEOUT))


class RemoteCompileRunner:
    def __init__(
        self,
        toolchain: Toolchain,
        blobs: BlobExchange,
        session_for: Callable[[str], LinkSession | None],
        work_dir: Path,
        *,
        esphome_version: Callable[[], str],
        own_fingerprint: bytes = b"",
        version_policy: VersionPolicy = VersionPolicy.ANY,
        on_duration: Callable[[str, float], None] = lambda _fp, _s: None,
        env: Mapping[str, str] | None = None,
        peer_name: Callable[[str], str | None] = lambda _fp: None,
    ) -> None:
        self.toolchain = toolchain
        self.blobs = blobs
        self._session_for = session_for
        self.work_dir = work_dir
        self._esphome_version = esphome_version
        self._own_fingerprint = own_fingerprint
        self._version_policy = version_policy
        self._on_duration = on_duration
        self._env = env
        self._peer_name = peer_name
        """The name a receiver goes by (the registry's), for the job's build record."""
        self._follow: dict[tuple[LinkSession, str], asyncio.Queue[object]] = {}

    def register(self, router: Router) -> None:
        router.on(LogLine, self._on_remote_message)
        router.on(JobState, self._on_remote_message)

    def is_following(self, session: LinkSession, job_id: str) -> bool:
        """Whether ``session``'s peer is building this node's job ``job_id`` right now."""
        return (session, job_id) in self._follow

    def session_lost(self, session: LinkSession) -> None:
        for (owner, _job_id), queue in self._follow.items():
            if owner is session:
                queue.put_nowait(_LOST)

    async def _on_remote_message(self, session: LinkSession, message: LogLine | JobState) -> None:
        queue = self._follow.get((session, message.job_id))
        if queue is not None:
            queue.put_nowait(message)

    # -- the runner -------------------------------------------------------------------

    async def run(self, ctx: JobContext) -> None:
        fingerprint = ctx.placement.receiver
        if fingerprint is None:
            raise JobFailed("internal error: a remote compile was placed without a receiver")
        try:
            await self._run(ctx, fingerprint)
        except ReceiverLost as lost:
            raise after_loss(ctx.job.options, lost) from None

    async def _run(self, ctx: JobContext, fingerprint: str) -> None:
        job = ctx.job
        session = self._session_for(fingerprint)
        if session is None:
            raise ReceiverLost(f"receiver {fingerprint[:16]} is not connected", fingerprint)
        config = Path(job.configuration)
        started = time.monotonic()
        phases = _Phases()
        ctx.log(f"[meshd] offloading compile to {fingerprint[:16]}")
        manifest_digest, manifest_size, digests = await self._bundle(ctx, config)
        phases.mark("bundle")

        queue: asyncio.Queue[object] = asyncio.Queue()
        key = (session, job.id)
        self._follow[key] = queue
        requested = remote_done = False
        try:
            try:
                reply = await session.request(HaveQuery(tuple(bytes.fromhex(d) for d in digests)))
                if not isinstance(reply, HaveReply):
                    raise ReceiverLost("receiver answered have_query oddly", fingerprint)
                phases.mark("have/need")
                missing = [d.hex() for d in reply.missing]
                sent = await self.blobs.push(session, missing)
                phases.mark("push")
                ctx.log(
                    f"[meshd] sent {len(missing)} of {len(digests)} bundle files ({sent} bytes); "
                    "the rest the receiver already had"
                )
                requested = True
                answer = await session.request(
                    CompileRequest(
                        job_id=job.id,
                        configuration=config.name,
                        esphome_version=self._wanted_version(job.options),
                        exact_version=self._exact(job.options),
                        bundle_digest=bytes.fromhex(manifest_digest),
                        bundle_size=manifest_size,
                    )
                )
            except (LinkError, RequestFailed) as exc:
                raise ReceiverLost(
                    f"lost receiver while sending the bundle: {exc}", fingerprint
                ) from None
            accepted = _accepted(answer, fingerprint)
            phases.mark("accept")
            ctx.log(f"[meshd] receiver accepted the compile (queue position {accepted.position})")
            await self._follow_remote(ctx, queue, fingerprint, phases)
            remote_done = True
            expected = ExpectedJob(
                offloader=self._own_fingerprint,
                job_id=job.id,
                bundle=bytes.fromhex(manifest_digest),
                esphome_version=(
                    self._wanted_version(job.options) if self._exact(job.options) else None
                ),
            )
            await self._pull_artifacts(ctx, session, fingerprint, config, expected, phases)
        except BaseException as exc:
            # Once the request is out, the receiver may have queued the compile even if
            # we never saw its answer: tell it to stop, whatever ended our side.
            if requested and not remote_done and not session.closed:
                await _send_cancel(session, job.id, _why(exc))
            raise
        finally:
            self._follow.pop(key, None)
        ctx.log(phases.line())
        self._on_duration(fingerprint, time.monotonic() - started)

    def _exact(self, options: JobOptions) -> bool:
        """Must the receiver build with exactly the wanted version (and sign it)?"""
        return options.esphome_version is not None or self._version_policy in _EXACT_POLICIES

    def _wanted_version(self, options: JobOptions) -> str:
        """The esphome the receiver is asked to build with: the job's pin, else ours."""
        return options.esphome_version or self._esphome_version()

    async def _bundle(self, ctx: JobContext, config: Path) -> tuple[str, int, list[str]]:
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise LocalWriteError.of(exc, self.work_dir) from None
        archive = self.work_dir / f"{ctx.job.id}.esphomebundle.tar.gz"
        try:
            await create_bundle(
                self.toolchain, config, log=ctx.log, on_start=ctx.on_process, output=archive
            )
            manifest = await asyncio.to_thread(read_bundle, archive, self.blobs.store)
        except EsphomeFailed as exc:
            raise JobFailed(str(exc)) from None
        except ToolMissing as exc:
            raise JobFailed(str(exc)) from None
        except BundleRejected as exc:
            raise JobFailed(f"cannot send this configuration: {exc}") from None
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise LocalWriteError.of(exc) from None
        finally:
            archive.unlink(missing_ok=True)
        data = json.dumps(manifest.to_wire()).encode()
        try:
            digest = self.blobs.store.put_bytes(data)
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise LocalWriteError.of(exc, self.blobs.store.root) from None
        ctx.log(f"[meshd] bundle: {len(manifest.files)} files, {manifest.total_size} bytes")
        return digest, len(data), [digest, *(f.digest for f in manifest.files)]

    async def _follow_remote(
        self,
        ctx: JobContext,
        queue: asyncio.Queue[object],
        fingerprint: str,
        phases: _Phases | None = None,
    ) -> None:
        phases = phases or _Phases()
        logged = 0  # bytes of the receiver's log kept so far: a receiver cannot fill our disk
        queued = True
        while True:
            item = await queue.get()
            if item is _LOST:
                raise ReceiverLost("lost the receiver during the compile", fingerprint)
            if isinstance(item, LogLine):
                if logged <= MAX_REMOTE_LOG_BYTES:
                    logged += len(item.line.encode("utf-8", "replace")) + 1
                    if logged <= MAX_REMOTE_LOG_BYTES:
                        ctx.log(item.line)
                    else:
                        ctx.log(
                            f"[meshd] log truncated: the receiver sent more than "
                            f"{MAX_REMOTE_LOG_BYTES // (1024 * 1024)} MiB"
                        )
            elif isinstance(item, JobState):
                if item.state == "running":
                    if queued:
                        # From the accept until the receiver's lane started it.
                        phases.mark("queued on receiver")
                        queued = False
                    if item.progress is not None:
                        ctx.progress(item.progress * 0.95)
                elif item.state == "completed":
                    phases.mark("remote compile")
                    return
                elif item.state == "failed":
                    if (item.error or "").startswith(PROVISION_FAILED):
                        # The receiver could not get the esphome asked for (pip, an
                        # offline LAN...): another receiver, or this node, may have it.
                        raise ReceiverLost(f"receiver failed: {item.error}", fingerprint)
                    raise JobFailed(item.error or "compile failed on the receiver")
                elif item.state == "cancelled":
                    raise ReceiverLost(
                        f"receiver cancelled the compile ({item.error or 'no reason'})",
                        fingerprint,
                    )

    async def _fetch(self, session: LinkSession, digests: list[str]) -> None:
        if not digests:
            return
        arrivals = self.blobs.expect(session, digests)
        try:
            try:
                await session.request(
                    BlobRequest(tuple(bytes.fromhex(d) for d in digests)), BlobReply
                )
            except LinkError:
                # We may have made the request fail ourselves: a blob we could not
                # store aborts its stream, and the receiver's sender gives up. Then
                # the fault is ours, not the receiver's.
                _raise_local_failure(arrivals)
                raise
            async with asyncio.timeout(FETCH_TIMEOUT):
                await asyncio.gather(*arrivals)
        finally:
            self.blobs.done_expecting(session, digests)
            for arrival in arrivals:
                if arrival.done() and not arrival.cancelled():
                    arrival.exception()  # retrieved: no "never retrieved" noise

    async def _pull_artifacts(
        self,
        ctx: JobContext,
        session: LinkSession,
        fingerprint: str,
        config: Path,
        expected: ExpectedJob,
        phases: _Phases,
    ) -> None:
        """Fetch and write what the flash needs; who is to blame decides what follows.

        The receiver's side (no answer, a refusal, a manifest or record that breaks the
        rules of PROTOCOL.md 12.5/12.6) is a ``ReceiverLost``: re-route, and never to
        it again for this job. Our side (a full disk while fetching or writing) is a
        ``LocalWriteError``: the job fails here and the receiver is not excluded.
        """
        device = ctx.job.device or ""
        method = FlashMethod.SERIAL if is_serial_device(device) else FlashMethod.OTA
        try:
            reply = await session.request(
                ArtifactRequest(ctx.job.id, method.value, ctx.job.options.elf),
                ArtifactReply,
            )
            manifest_digest = _manifest_digest(reply)
            await self._fetch(session, self.blobs.store.missing([manifest_digest]))
            manifest = ArtifactManifest.from_wire(
                json.loads(self.blobs.store.path(manifest_digest).read_bytes())
            )
            manifest.check_roles(method)
            phases.mark("artifact manifest")
            missing = self.blobs.store.missing([f.digest for f in manifest.files])
            await self._fetch(session, missing)
            phases.mark("pull")
        except RequestFailed as exc:
            # Before LinkError (its base): it answered, but cannot give what it built.
            raise ReceiverLost(
                f"receiver could not provide artifacts: {exc}", fingerprint
            ) from None
        except (LinkError, TimeoutError) as exc:
            raise ReceiverLost(
                f"lost receiver while pulling artifacts: {exc}", fingerprint
            ) from None
        except (BundleRejected, ContentError, ValueError) as exc:
            # ValueError covers a manifest that is not JSON (or not UTF-8).
            raise ReceiverLost(f"receiver sent unusable artifacts: {exc}", fingerprint) from None
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise LocalWriteError.of(exc, self.blobs.store.root) from None
        record = self._check_provenance(ctx, session, reply, manifest, expected)
        phases.mark("provenance")
        try:
            written = await asyncio.to_thread(
                materialise_artifacts, manifest, self.blobs.store, config, self._env
            )
        except BundleRejected as exc:
            # E.g. a storage record that is not JSON: the receiver built garbage.
            raise ReceiverLost(f"receiver sent unusable artifacts: {exc}", fingerprint) from None
        except OSError as exc:
            if not is_write_error(exc):
                raise
            raise LocalWriteError.of(exc) from None
        phases.mark("materialise")
        ctx.log(
            f"[meshd] received {len(manifest.files)} artifacts ({manifest.total_size} bytes, "
            f"{len(missing)} transferred); wrote {len(written)} files for esphome upload"
        )
        ctx.record_build(self._job_build(fingerprint, record, reply, session.peer.public_key))
        ctx.progress(1.0)

    def _job_build(
        self,
        fingerprint: str,
        record: ProvenanceRecord | None,
        reply: ArtifactReply,
        receiver_key: bytes,
    ) -> JobBuild:
        """What the job keeps about this remote build: the verified record, if signed."""
        name = self._peer_name(fingerprint) or fingerprint[:16]
        if record is None or reply.provenance is None or reply.provenance_sig is None:
            # An older receiver that signs nothing: who built it, but not with what.
            return JobBuild(esphome_version=None, builder=name, builder_fingerprint=fingerprint)
        provenance = BuildProvenance(
            receiver=record.receiver.hex(),
            offloader=record.offloader.hex(),
            job_id=record.job_id,
            bundle=record.bundle.hex(),
            esphome_version=record.esphome_version,
            platform=record.platform,
            artifacts=tuple(ArtifactSum(a.path, a.role, a.sha256.hex()) for a in record.artifacts),
            signed_at=record.time_ms / 1000,
            record=reply.provenance.hex(),
            signature=reply.provenance_sig.hex(),
            receiver_key=receiver_key.hex(),
            verified=True,
        )
        return JobBuild(
            esphome_version=record.esphome_version,
            builder=name,
            builder_fingerprint=fingerprint,
            platform=record.platform,
            provenance=provenance,
        )

    def _check_provenance(
        self,
        ctx: JobContext,
        session: LinkSession,
        reply: ArtifactReply,
        manifest: ArtifactManifest,
        expected: ExpectedJob,
    ) -> ProvenanceRecord | None:
        """Verify the receiver's signed build record before anything is written (14.4);
        the verified record, or None for a receiver that does not sign.

        A receiver that negotiated ``provenance`` must sign; one that did not (an older
        meshd) is let through with a note in the log, as section 14.3 allows.
        """
        if "provenance" not in session.peer.caps:
            ctx.log("[meshd] the receiver does not sign its builds (no provenance capability)")
            return None
        if reply.provenance is None or reply.provenance_sig is None:
            raise JobFailed("build provenance check failed (malformed): the receiver sent none")
        received = [ArtifactDigest(f.path, f.role, bytes.fromhex(f.digest)) for f in manifest.files]
        try:
            record = verify(
                reply.provenance,
                reply.provenance_sig,
                session.peer.public_key,
                expected,
                received,
            )
        except (ProvenanceError, ValueError) as exc:
            reason = exc.reason if isinstance(exc, ProvenanceError) else "malformed"
            raise JobFailed(
                f"build provenance check failed ({reason}): {exc}; nothing was written"
            ) from None
        ctx.log(
            f"[meshd] build provenance verified: built by {short_fingerprint(record.receiver)} "
            f"with esphome {record.esphome_version} for {record.platform}, "
            f"{len(record.artifacts)} artifacts signed"
        )
        return record
