"""Adapts the pure scheduler to the compile lane's ``Placer`` seam.

The lane hands over its FIFO queue and the receivers its running remote jobs occupy;
this reads the mesh's live peer registry, marks those receivers busy, and asks
``scheduler.plan``, whose placements go back to the lane as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from meshd.jobs.model import Job
from meshd.jobs.placement import Placement, ReasonCode, Where
from meshd.mesh.dispatch.reroute import gave_up
from meshd.mesh.dispatch.scheduler import PeerView, WaitingJob, plan
from meshd.version_policy import VersionPolicy


def waiting_job(job: Job) -> WaitingJob:
    return WaitingJob(
        id=job.id,
        force_local=job.options.force_local,
        gave_up=gave_up(job.options),
        excluded=frozenset(job.options.excluded_receivers),
        esphome_version=job.options.esphome_version,
    )


class MeshPlacer:
    def __init__(
        self,
        peers: Callable[[], Sequence[PeerView]],
        *,
        local_version: Callable[[], str],
        policy: VersionPolicy = VersionPolicy.RELEASE,
        include_local: bool = True,
        connecting: Callable[[], bool] = lambda: False,
    ) -> None:
        self._peers = peers
        self._connecting = connecting
        self._local_version = local_version
        self.policy = policy
        self.include_local = include_local
        self.ready = False
        """False until the mesh has started: until then only forced-local jobs run, so
        jobs restored at start are not placed before any receiver could connect."""

    def place(
        self, queued: Sequence[Job], *, local_free: bool, busy_receivers: frozenset[str]
    ) -> Sequence[Placement]:
        if not self.ready:
            return self._before_start(queued, local_free)
        views = [replace(p, in_flight=p.fingerprint in busy_receivers) for p in self._peers()]
        return plan(
            [waiting_job(job) for job in queued],
            views,
            local_version=self._local_version(),
            local_free=local_free,
            policy=self.policy,
            include_local=self.include_local,
            receivers_connecting=self._connecting(),
        )

    def _before_start(self, queued: Sequence[Job], local_free: bool) -> list[Placement]:
        placements = []
        for job in queued:
            if job.options.force_local:
                # The scheduler's forced-local rule needs no peers: apply it as it is.
                [placement] = plan([waiting_job(job)], [], local_version="", local_free=local_free)
                local_free = local_free and placement.where is not Where.LOCAL
            else:
                placement = Placement(Where.WAIT, ReasonCode.MESH_STARTING, "the mesh is starting")
            placements.append(placement)
        return placements
