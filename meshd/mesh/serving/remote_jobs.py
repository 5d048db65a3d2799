"""Which local job serves which offloader's job, and what flows back to that offloader.

Every compile a receiver accepts becomes an ordinary job on its own compile lane. This
module remembers, per accepted compile, the session and the offloader's job id, and
forwards the local job's state and log lines over that session (one forwarder task
per job, so a slow offloader never stalls the engine). It also owns the rule that a
receiver never keeps building for an offloader it lost: when a session ends, its jobs
are cancelled, and at start every job left from before a restart is cancelled too
(its offloader re-routes it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from meshd.jobs.engine import Engine
from meshd.jobs.events import (
    Event,
    JobEvent,
    JobFinished,
    JobOutput,
    JobProgress,
    JobStarted,
)
from meshd.jobs.model import Job
from meshd.link import LinkError, LinkSession
from meshd.link.messages import JobState, LogLine, Message
from meshd.mesh.tasks import TaskSet

# Log lines queued for one slow offloader before lines (never states) are dropped.
MAX_QUEUED_LINES = 5000
# A log line longer than this is cut: it is one line of compiler output, not a file.
MAX_LINE_CHARS = 4000
# Cancels that arrived before their compile request finished unpacking (requests run
# concurrently with one-way messages); bounded so a peer cannot grow it forever.
MAX_EARLY_CANCELS = 256
# Which local job serves which offloader job id, for cancels and artifact pulls; the
# oldest entries go first (their artifacts were pulled long ago).
MAX_REMEMBERED_JOBS = 4096

_Key = tuple[str, str]
"""(offloader fingerprint, the offloader's job id)."""


@dataclass
class _RemoteJob:
    session: LinkSession
    remote_id: str
    """The offloader's job id: every message about this job carries it."""
    local: Job
    outbox: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    dropped: int = 0


def _key(session: LinkSession, remote_id: str) -> _Key:
    return (session.peer.fingerprint_hex, remote_id)


class RemoteJobs:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._jobs: dict[str, _RemoteJob] = {}  # by local job id, while forwarding
        self._local_ids: dict[_Key, str] = {}
        self._early_cancels: dict[_Key, str] = {}
        self._forwarders = TaskSet("remote-job forwarders")
        self._cancels = TaskSet("remote-job cancels")
        self._stopped = False
        self._remove_listener = engine.bus.add_listener(self._on_event)

    # -- life cycle ---------------------------------------------------------------------

    async def cancel_orphans(self) -> None:
        """Cancel compiles a previous run of this daemon accepted: their sessions are gone."""
        for job in self.engine.active_jobs():
            if job.options.offloader:
                self.engine.logs.append(
                    job.id, "receiver restarted; the offloader re-routes this compile"
                )
                await self.engine.cancel(job.id)

    async def stop(self) -> None:
        """Finish the cancels of lost offloaders' jobs, then stop forwarding.

        Sessions that end after this (the daemon is closing them) cancel nothing: the
        engine's stop interrupts those jobs and the next start cancels them as orphans.
        """
        self._stopped = True
        await self._cancels.wait()
        self._remove_listener()
        await self._forwarders.cancel()
        self._jobs.clear()

    @property
    def pending_cancels(self) -> int:
        """Cancels started for lost offloaders that have not finished yet."""
        return len(self._cancels)

    # -- bookkeeping ----------------------------------------------------------------------

    def find(self, session: LinkSession, remote_id: str) -> Job | None:
        """The newest local job for this offloader's job id (a re-sent compile after an
        offloader restart reuses the id; the earlier attempt was cancelled)."""
        job_id = self._local_ids.get(_key(session, remote_id))
        return self.engine.get(job_id) if job_id is not None else None

    def link_of(self, job_id: str) -> tuple[LinkSession, str] | None:
        """The session and offloader job id a local job serves (the mesh compile cache)."""
        remote = self._jobs.get(job_id)
        return None if remote is None else (remote.session, remote.remote_id)

    async def adopt(self, session: LinkSession, remote_id: str, job: Job) -> None:
        """``job`` now serves the offloader's ``remote_id``: forward its state there.

        A cancel that arrived while the compile request was still unpacking applies now.
        """
        key = _key(session, remote_id)
        self._local_ids.pop(key, None)  # a re-sent compile (offloader restart) wins
        self._local_ids[key] = job.id
        if len(self._local_ids) > MAX_REMEMBERED_JOBS:
            self._local_ids.pop(next(iter(self._local_ids)))
        remote = _RemoteJob(session, remote_id, job)
        self._jobs[job.id] = remote
        forwarder = self._forwarders.spawn(self._forward(remote), name=f"forward-{job.id}")
        forwarder.add_done_callback(lambda _t: self._jobs.pop(job.id, None))
        early = self._early_cancels.pop(key, None)
        if early is not None:
            self.engine.logs.append(job.id, f"cancelled by the offloader: {early}")
            await self.engine.cancel(job.id)

    async def cancel(self, session: LinkSession, remote_id: str, reason: str) -> None:
        """The offloader cancelled its job ``remote_id``."""
        job = self.find(session, remote_id)
        if job is None:
            # Its compile request may still be unpacking: apply the cancel when it lands.
            if len(self._early_cancels) >= MAX_EARLY_CANCELS:
                self._early_cancels.pop(next(iter(self._early_cancels)))
            self._early_cancels[_key(session, remote_id)] = reason
        elif job.status.active:
            self.engine.logs.append(job.id, f"cancelled by the offloader: {reason}")
            await self.engine.cancel(job.id)

    def detach(self, session: LinkSession) -> None:
        """A session ended: stop building for it (the offloader re-routes its jobs)."""
        for remote in [r for r in self._jobs.values() if r.session is session]:
            self._orphaned(remote)

    def _orphaned(self, remote: _RemoteJob) -> None:
        """``remote``'s offloader is gone: cancel its compile if it still runs."""
        if self._stopped or not remote.local.status.active:
            return
        self.engine.logs.append(
            remote.local.id, "offloader disconnected; it re-routes this compile"
        )
        self._cancels.spawn(self.engine.cancel(remote.local.id), name=f"cancel-{remote.local.id}")

    # -- forwarding -----------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, JobEvent):
            return
        job = event.job
        remote = self._jobs.get(job.id)
        if remote is None:
            return
        if isinstance(event, JobOutput):
            if remote.outbox.qsize() >= MAX_QUEUED_LINES:
                remote.dropped += 1
                return
            line = event.line[:MAX_LINE_CHARS]
            remote.outbox.put_nowait(LogLine(remote.remote_id, line))
        elif isinstance(event, JobStarted | JobProgress):
            remote.outbox.put_nowait(JobState(remote.remote_id, "running", progress=job.progress))
        elif isinstance(event, JobFinished):
            if remote.dropped:
                remote.outbox.put_nowait(
                    LogLine(remote.remote_id, f"[{remote.dropped} lines dropped]", "meshd")
                )
            remote.outbox.put_nowait(
                JobState(remote.remote_id, job.status.value, error=job.error or "")
            )
            remote.outbox.put_nowait(None)

    async def _forward(self, remote: _RemoteJob) -> None:
        try:
            while (message := await remote.outbox.get()) is not None:
                await remote.session.send(message)
        except LinkError:
            # The session broke under this send (a receiver woken from a freeze finds
            # its socket reset). The job leaves ``_jobs`` when this task ends, so the
            # session's detach would no longer find it: drop it here.
            self._orphaned(remote)
