"""The receiver side of remote compiles.

A trusted offloader pushes bundle blobs, then asks for a compile. The receiver
validates the manifest as hostile input, materialises a stable work directory per
offloader and configuration (so PlatformIO stays warm), and queues the compile on its
own compile lane like any local job: visible in its own ``meshd jobs``, tagged with
the offloader, forced local so it is never offloaded onward. State and log lines go
back over the session; artifacts are served by digest when the offloader asks.

A receiver never keeps building for an offloader it lost: when the session ends, its
jobs are cancelled (the offloader re-routes them), and jobs left from before a
receiver restart are cancelled at start for the same reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from meshd.jobs import events
from meshd.jobs.engine import Engine
from meshd.jobs.events import Event
from meshd.jobs.model import Job, JobStatus, JobType, LaneName
from meshd.link import LinkError, LinkSession, RejectRequest, Router
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
    JobState,
    LaneStatus,
    LogLine,
    Message,
)
from meshd.mesh.content.artifacts import collect_artifacts
from meshd.mesh.content.blobs import BlobExchange
from meshd.mesh.content.bundle import BundleManifest, BundleRejected, materialise
from meshd.mesh.security.trust import Permission, TrustStore
from meshd.toolchain.storage import ArtifactError, FlashMethod

_LOGGER = logging.getLogger(__name__)

# A bundle manifest lists at most a few thousand files; more is not a manifest.
MAX_MANIFEST_BYTES = 1024 * 1024
# Log lines queued for one slow offloader before lines (never states) are dropped.
MAX_QUEUED_LINES = 5000
# A forwarded log line is cut to this many characters: with MAX_QUEUED_LINES it bounds
# what one slow offloader can make us hold at about 20 MB.
MAX_FORWARDED_LINE = 4000
# Work directory names come from the offloader's config name; keep them short.
MAX_DIRNAME = 64
# Cancels that arrived before their compile request finished unpacking (requests run
# concurrently with one-way messages); bounded so a peer cannot grow it forever.
MAX_EARLY_CANCELS = 256
# Which local job serves which offloader job id, for cancels and artifact pulls; the
# oldest entries go first (their artifacts were pulled long ago).
MAX_REMEMBERED_JOBS = 4096

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _dirname(text: str) -> str:
    return _UNSAFE.sub("_", text)[:MAX_DIRNAME] or "config"


@dataclass
class _RemoteJob:
    session: LinkSession
    remote_id: str
    """The offloader's job id: every message about this job carries it."""
    local: Job
    outbox: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    dropped: int = 0
    forwarder: asyncio.Task[None] | None = None


class Receiver:
    def __init__(
        self,
        engine: Engine,
        trust: TrustStore,
        blobs: BlobExchange,
        builds_root: Path,
        *,
        accepts_builds: bool,
        esphome_version: Callable[[], str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.trust = trust
        self.blobs = blobs
        self.builds_root = builds_root
        self.accepts_builds = accepts_builds
        self._esphome_version = esphome_version
        self._env = env
        self._jobs: dict[str, _RemoteJob] = {}  # by local job id
        self._status_wanted: dict[LinkSession, asyncio.Event] = {}
        self._pushers: dict[LinkSession, asyncio.Task[None]] = {}
        self._stopping = False
        self._early_cancels: dict[tuple[str, str], str] = {}
        self._local_ids: dict[tuple[str, str], str] = {}
        self._remove_listener = engine.bus.add_listener(self._on_event)

    def register(self, router: Router) -> None:
        router.on(HaveQuery, self._on_have_query)
        router.on(CompileRequest, self._on_compile)
        router.on(Cancel, self._on_cancel)
        router.on(ArtifactRequest, self._on_artifacts)
        router.on(BlobRequest, self._on_blob_request)

    def may_send_work(self, session: LinkSession) -> bool:
        peer = self.trust.get(session.peer.fingerprint_hex)
        return peer is not None and peer.allows(Permission.SEND_WORK)

    async def cancel_orphans(self) -> None:
        """Cancel compiles a previous run of this daemon accepted: their sessions are gone."""
        for job in self.engine.active_jobs():
            if job.args.get("offloader"):
                self.engine.logs.append(
                    job.id, "receiver restarted; the offloader re-routes this compile"
                )
                await self.engine.cancel(job.id)

    async def stop(self) -> None:
        self._stopping = True
        self._remove_listener()
        tasks = [t for t in self._pushers.values()]
        tasks += [j.forwarder for j in self._jobs.values() if j.forwarder is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- sessions ---------------------------------------------------------------------

    def attach(self, session: LinkSession) -> None:
        """A session opened: push our compile-lane status now and on every change."""
        wanted = asyncio.Event()
        wanted.set()
        self._status_wanted[session] = wanted
        self._pushers[session] = asyncio.create_task(
            self._push_status(session, wanted), name="lane-status-push"
        )

    def detach(self, session: LinkSession) -> None:
        """A session ended: stop building for it."""
        self._status_wanted.pop(session, None)
        pusher = self._pushers.pop(session, None)
        if pusher is not None:
            pusher.cancel()
        for remote in [r for r in self._jobs.values() if r.session is session]:
            if remote.local.status.active:
                self.engine.logs.append(
                    remote.local.id, "offloader disconnected; it re-routes this compile"
                )
                asyncio.create_task(self.engine.cancel(remote.local.id))  # noqa: RUF006 - the engine owns the job

    async def _push_status(self, session: LinkSession, wanted: asyncio.Event) -> None:
        # One pusher per session coalesces bursts: it always sends the latest status.
        with contextlib.suppress(LinkError):
            while not session.closed:
                await wanted.wait()
                wanted.clear()
                status = self.engine.lane_status(LaneName.COMPILE)
                await session.send(
                    LaneStatus(
                        idle=status.idle and self.accepts_builds,
                        running=len(status.running) - len(status.remote),
                        queued=status.queued,
                        idle_since=status.idle_since,
                        esphome_version=self._esphome_version(),
                    )
                )

    # -- engine events ----------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.type == events.LANE_STATUS:
            if event.data.get("lane") == LaneName.COMPILE.value:
                for wanted in self._status_wanted.values():
                    wanted.set()
            return
        job = event.data.get("job")
        if not isinstance(job, dict):
            return
        remote = self._jobs.get(job["id"])
        if remote is None:
            return
        if event.type == events.JOB_OUTPUT:
            if remote.outbox.qsize() >= MAX_QUEUED_LINES:
                remote.dropped += 1
                return
            remote.outbox.put_nowait(
                LogLine(remote.remote_id, str(event.data["line"])[:MAX_FORWARDED_LINE])
            )
        elif event.type in (events.JOB_STARTED, events.JOB_PROGRESS):
            remote.outbox.put_nowait(
                JobState(remote.remote_id, "running", progress=job.get("progress"))
            )
        elif event.type in (events.JOB_COMPLETED, events.JOB_FAILED, events.JOB_CANCELLED):
            if remote.dropped:
                remote.outbox.put_nowait(
                    LogLine(remote.remote_id, f"[{remote.dropped} lines dropped]", "meshd")
                )
            remote.outbox.put_nowait(
                JobState(remote.remote_id, job["status"], error=job.get("error") or "")
            )
            remote.outbox.put_nowait(None)

    async def _forward(self, remote: _RemoteJob) -> None:
        with contextlib.suppress(LinkError):
            while (message := await remote.outbox.get()) is not None:
                await remote.session.send(message)

    # -- requests ---------------------------------------------------------------------

    def _require_offloader(self, session: LinkSession) -> None:
        if not self.may_send_work(session):
            raise RejectRequest(ErrorCode.FORBIDDEN, "this node does not accept work from you")

    async def _on_have_query(self, session: LinkSession, message: HaveQuery) -> HaveReply:
        self._require_offloader(session)
        wanted = [d.hex() for d in message.digests]
        missing = self.blobs.store.missing(wanted)
        return HaveReply(tuple(bytes.fromhex(d) for d in missing))

    async def _on_blob_request(self, session: LinkSession, message: BlobRequest) -> BlobReply:
        self._require_offloader(session)
        await self.blobs.push(session, [d.hex() for d in message.digests])
        return BlobReply(len(message.digests))

    async def _on_compile(self, session: LinkSession, message: CompileRequest) -> Message:
        def reject(reason: str, text: str) -> CompileReject:
            _LOGGER.info("rejected compile %s: %s (%s)", message.job_id, reason, text)
            return CompileReject(message.job_id, reason, text)

        if not self.may_send_work(session):
            return reject("forbidden", "this receiver does not accept work from you")
        if self._stopping:
            return reject("shutting_down", "this receiver is shutting down")
        if not self.accepts_builds:
            return reject("busy", "this node does not accept builds (--no-receiver)")
        await self.blobs.settle(session)
        digest = message.bundle_digest.hex()
        if message.bundle_size > MAX_MANIFEST_BYTES:
            return reject("invalid", f"bundle manifest of {message.bundle_size} bytes is too large")
        if not self.blobs.store.has(digest):
            return reject("missing_content", "the bundle manifest was never received")
        try:
            raw = json.loads(self.blobs.store.path(digest).read_bytes())
            manifest = BundleManifest.from_wire(raw)
        except (BundleRejected, ValueError) as exc:
            return reject("invalid", f"bundle refused: {exc}")
        missing = self.blobs.store.missing([f.digest for f in manifest.files])
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
            config = await asyncio.to_thread(materialise, manifest, self.blobs.store, workdir)
        except (BundleRejected, OSError) as exc:
            return reject("invalid", f"cannot unpack bundle: {exc}")
        peer = self.trust.get(offloader)
        job = self.engine.submit(
            JobType.COMPILE,
            str(config),
            args={
                "force_local": True,
                "offloader": offloader,
                "offloader_name": peer.name if peer and peer.name else offloader[:16],
                "remote_job": message.job_id,
            },
        )
        key = (offloader, message.job_id)
        self._local_ids.pop(key, None)  # a re-sent compile (offloader restart) wins
        self._local_ids[key] = job.id
        if len(self._local_ids) > MAX_REMEMBERED_JOBS:
            self._local_ids.pop(next(iter(self._local_ids)))
        remote = _RemoteJob(session, message.job_id, job)
        self._jobs[job.id] = remote
        remote.forwarder = asyncio.create_task(self._forward(remote), name=f"forward-{job.id}")
        remote.forwarder.add_done_callback(lambda _t: self._jobs.pop(job.id, None))
        position = self.engine.lane_status(LaneName.COMPILE).queued
        early = self._early_cancels.pop(key, None)
        if early is not None:
            self.engine.logs.append(job.id, f"cancelled by the offloader: {early}")
            await self.engine.cancel(job.id)
        return CompileAccept(message.job_id, position=position)

    def _find(self, session: LinkSession, remote_id: str) -> Job | None:
        """The newest local job for this offloader's job id (a re-sent compile after an
        offloader restart reuses the id; the earlier attempt was cancelled)."""
        job_id = self._local_ids.get((session.peer.fingerprint_hex, remote_id))
        return self.engine.get(job_id) if job_id is not None else None

    async def _on_cancel(self, session: LinkSession, message: Cancel) -> None:
        job = self._find(session, message.job_id)
        if job is None:
            # Its compile request may still be unpacking: apply the cancel when it lands.
            if len(self._early_cancels) >= MAX_EARLY_CANCELS:
                self._early_cancels.pop(next(iter(self._early_cancels)))
            key = (session.peer.fingerprint_hex, message.job_id)
            self._early_cancels[key] = message.reason
        elif job.status.active:
            self.engine.logs.append(job.id, f"cancelled by the offloader: {message.reason}")
            await self.engine.cancel(job.id)

    async def _on_artifacts(self, session: LinkSession, message: ArtifactRequest) -> ArtifactReply:
        self._require_offloader(session)
        job = self._find(session, message.job_id)
        if job is None or job.status is not JobStatus.COMPLETED:
            raise RejectRequest(ErrorCode.NOT_FOUND, f"no completed compile {message.job_id}")
        method = FlashMethod(message.method)
        try:
            manifest = await asyncio.to_thread(
                collect_artifacts,
                Path(job.configuration),
                method,
                self.blobs.store,
                include_elf=message.elf,
                env=self._env,
            )
        except ArtifactError as exc:
            raise RejectRequest(ErrorCode.NOT_FOUND, str(exc)) from None
        data = json.dumps(manifest.to_wire()).encode()
        digest = self.blobs.store.put_bytes(data)
        return ArtifactReply(message.job_id, bytes.fromhex(digest), len(data))
