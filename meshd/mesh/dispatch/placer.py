"""Adapts the pure scheduler to the compile lane's ``Placer`` seam.

The lane hands over its FIFO queue and the receivers its running remote jobs occupy;
this reads the mesh's live peer registry, tells the scheduler those receivers are
busy with ours, and asks ``scheduler.plan``, whose placements go back to the lane as
they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meshd.jobs.model import Job
from meshd.jobs.options import JobOptions
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
        # The queue is re-placed on every peer and lane change; a job's scheduler view
        # only changes with its (immutable) options, so it is built once per options.
        self._waiting: dict[str, tuple[JobOptions, WaitingJob]] = {}

    def place(
        self, queued: Sequence[Job], *, local_free: bool, busy_receivers: frozenset[str]
    ) -> Sequence[Placement]:
        if not self.ready:
            return self._before_start(queued, local_free)
        return plan(
            self._waiting_jobs(queued),
            self._peers(),
            local_version=self._local_version(),
            local_free=local_free,
            policy=self.policy,
            include_local=self.include_local,
            receivers_connecting=self._connecting(),
            in_flight=busy_receivers,
        )

    def _waiting_jobs(self, queued: Sequence[Job]) -> list[WaitingJob]:
        known = self._waiting
        fresh: dict[str, tuple[JobOptions, WaitingJob]] = {}
        for job in queued:
            entry = known.get(job.id)
            if entry is None or entry[0] is not job.options:
                entry = (job.options, waiting_job(job))
            fresh[job.id] = entry
        self._waiting = fresh  # jobs no longer queued are forgotten
        return [view for _options, view in fresh.values()]

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
