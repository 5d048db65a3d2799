"""Adapts the pure scheduler to the compile lane's ``Placer`` seam.

The lane hands over its FIFO queue; this reads the mesh's live peer registry and the
jobs already in flight, asks ``scheduler.plan``, and translates each decision into a
placement whose reason is stored on the job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from meshd.jobs.model import Job
from meshd.jobs.placement import Placement, Where
from meshd.mesh.dispatch.scheduler import Kind, PeerView, VersionPolicy, WaitingJob, plan

_WHERE = {
    Kind.REMOTE: Where.REMOTE,
    Kind.LOCAL: Where.LOCAL,
    Kind.WAIT: Where.WAIT,
    Kind.FAIL: Where.FAIL,
}


def waiting_job(job: Job) -> WaitingJob:
    return WaitingJob(
        id=job.id,
        force_local=bool(job.args.get("force_local")),
        excluded=frozenset(job.args.get("excluded_receivers", ())),
    )


class MeshPlacer:
    def __init__(
        self,
        peers: Callable[[], Sequence[PeerView]],
        in_flight: Callable[[], set[str]],
        *,
        local_version: Callable[[], str],
        policy: VersionPolicy = VersionPolicy.RELEASE,
        include_local: bool = True,
        connecting: Callable[[], bool] = lambda: False,
    ) -> None:
        self._peers = peers
        self._connecting = connecting
        self._in_flight = in_flight
        self._local_version = local_version
        self.policy = policy
        self.include_local = include_local
        self.ready = False
        """False until the mesh has started: until then only forced-local jobs run, so
        jobs restored at start are not placed before any receiver could connect."""

    def place(self, queued: Sequence[Job], local_free: bool) -> Sequence[Placement]:
        if not self.ready:
            return self._before_start(queued, local_free)
        busy = self._in_flight()
        views = [replace(p, in_flight=p.fingerprint in busy) for p in self._peers()]
        decisions = plan(
            [waiting_job(job) for job in queued],
            views,
            local_version=self._local_version(),
            local_free=local_free,
            policy=self.policy,
            include_local=self.include_local,
            receivers_connecting=self._connecting(),
        )
        return [
            Placement(_WHERE[decision.kind], decision.reason, decision.peer or "local")
            for decision in decisions
        ]

    def _before_start(self, queued: Sequence[Job], local_free: bool) -> list[Placement]:
        placements = []
        for job in queued:
            if local_free and job.args.get("force_local"):
                placements.append(Placement(Where.LOCAL, "forced local (--local)"))
                local_free = False
            else:
                placements.append(Placement(Where.WAIT, "the mesh is starting"))
        return placements
