"""The receiver side of remote compiles: its three parts, wired for one node.

* :mod:`~meshd.mesh.serving.handlers`: answers an offloader's requests (have_query,
  blob_request, compile_request, cancel, artifact_request);
* :mod:`~meshd.mesh.serving.remote_jobs`: which local job serves which offloader's
  job, forwarding its state back, and cancelling the jobs of a lost offloader;
* :mod:`~meshd.mesh.serving.status`: our compile-lane status, pushed to every peer.

A receiver never keeps building for an offloader it lost: when the session ends, its
jobs are cancelled (the offloader re-routes them), and jobs left from before a
receiver restart are cancelled at start for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from meshd.jobs.engine import Engine
from meshd.link import LinkSession, Router
from meshd.mesh.content.blobs import BlobExchange
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.trust import TrustStore
from meshd.mesh.serving.handlers import DEFAULT_MIN_FREE, RequestHandlers
from meshd.mesh.serving.remote_jobs import RemoteJobs
from meshd.mesh.serving.status import StatusPusher
from meshd.version_policy import VersionPolicy


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
        identity: Identity | None = None,
        version_policy: VersionPolicy = VersionPolicy.ANY,
        provisions: bool = False,
        toolchains: Callable[[], Sequence[str]] = tuple,
        env: Mapping[str, str] | None = None,
        min_free: int = DEFAULT_MIN_FREE,
    ) -> None:
        self._stopping = False
        # Why peers' builds cannot be sandboxed here (set by the daemon at start).
        self.sandbox_error: str | None = None
        self.jobs = RemoteJobs(engine)
        self.handlers = RequestHandlers(
            engine,
            trust,
            blobs,
            self.jobs,
            builds_root,
            accepts_builds=accepts_builds,
            stopping=lambda: self._stopping,
            identity=identity,
            esphome_version=esphome_version,
            version_policy=version_policy,
            provisions=provisions,
            env=env,
            min_free=min_free,
            sandbox_error=lambda: self.sandbox_error,
        )
        self.status = StatusPusher(
            engine,
            accepts_builds=accepts_builds,
            esphome_version=esphome_version,
            toolchains=toolchains,
        )

    def register(self, router: Router) -> None:
        self.handlers.register(router)

    def may_send_work(self, session: LinkSession) -> bool:
        return self.handlers.may_send_work(session)

    async def start(self) -> None:
        await self.jobs.cancel_orphans()

    @property
    def pending_cancels(self) -> int:
        """Cancels started for lost offloaders that have not finished yet."""
        return self.jobs.pending_cancels

    async def stop(self) -> None:
        """Refuse new compiles (``shutting_down``), finish cancelling lost offloaders'
        jobs, and stop pushing and forwarding; the sessions close after this."""
        self._stopping = True
        await self.status.stop()
        await self.jobs.stop()

    def attach(self, session: LinkSession) -> None:
        """A session opened: push our compile-lane status now and on every change."""
        self.status.attach(session)

    def detach(self, session: LinkSession) -> None:
        """A session ended: stop pushing to it and stop building for it."""
        self.status.detach(session)
        self.jobs.detach(session)
