"""Where each waiting compile runs: a pure function over a snapshot.

No I/O, no clock, no mutable state: the dispatch pool calls ``plan`` on every peer,
status and lane event with what it knows right then, and acts on the result. That
makes every branch testable with hand-built snapshots. Each decision is the compile
lane's own ``Placement``: where, a ``ReasonCode`` (what tests and programs match on),
the sentence stored on the job for people, and the chosen receiver.

Rules (DESIGN.md, "Scheduling"):

* eligible receivers are trusted, connected, accepting builds, compatible under the
  version policy, not already running one of our compiles, and not excluded for this
  job (a receiver that was lost mid-build of it);
* under ``provision`` (and for a job pinned to an esphome version, whatever the
  policy), a receiver is compatible when it has the wanted version *ready* (its own
  esphome or a provisioned toolchain) or when it *provisions* toolchains;
* the idle eligible receiver idle the longest (oldest ``idle_since``) gets the oldest
  waiting job; each receiver takes one job at a time. Under ``provision`` that
  tie-break runs among the idle receivers that have the version ready; a receiver
  that must provision first is chosen only when no ready one is idle;
* with eligible receivers but none idle: run locally if include-local is on and the
  local slot is free, else wait;
* with no eligible receiver at all: run locally (wait for the local slot if busy),
  unless the policy is ``exact_required``, which fails instead, or a trusted receiver
  is still connecting for the first time (after a start or a trust change), which
  waits: a Pi that restarts must not begin a half-hour local build because its
  desktop reconnected a moment later;
* a job forced local runs locally, waiting for the local slot if need be (also a
  job the re-route policy gave up on, see ``reroute.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from meshd.jobs.placement import Placement, ReasonCode, Where
from meshd.version_policy import VersionPolicy, compatible


@dataclass(frozen=True)
class PeerView:
    """What the scheduler needs to know of one receiver."""

    fingerprint: str
    name: str
    trusted: bool
    connected: bool
    accepts_builds: bool
    esphome_version: str | None
    idle: bool
    idle_since: float | None
    in_flight: bool = False
    """One of our compiles is already running there (or on its way)."""
    provisions: bool = False
    """It provisions the esphome version an offloader asks for (``node_info``, mDNS)."""
    toolchains: frozenset[str] = frozenset()
    """esphome versions it has provisioned and ready, besides its own."""

    def has_ready(self, version: str) -> bool:
        """Can it build with esphome ``version`` without provisioning first?"""
        return bool(version) and (self.esphome_version == version or version in self.toolchains)


@dataclass(frozen=True)
class WaitingJob:
    id: str
    force_local: bool = False
    gave_up: bool = False
    """Forced local because too many receivers were lost building it (not by the user)."""
    excluded: frozenset[str] = frozenset()
    """Receivers not to use for this job (lost mid-build of it before)."""
    esphome_version: str | None = None
    """The job is pinned to this esphome (``--esphome-version``); None: ours."""


def _wanted(job: WaitingJob, local_version: str) -> str:
    return job.esphome_version or local_version


def _exact_or_provision(job: WaitingJob, policy: VersionPolicy) -> bool:
    """Must the receiver build with exactly the wanted version, provisioning allowed?"""
    return policy is VersionPolicy.PROVISION or job.esphome_version is not None


def _version_ineligibility(
    peer: PeerView, wanted: str, exact: bool, policy: VersionPolicy
) -> str | None:
    """Why ``peer`` cannot build esphome ``wanted`` (``exact``: exactly, or provisioned)."""
    if not wanted and policy is not VersionPolicy.ANY:
        return "the local esphome version is not known yet"
    if exact:
        if not peer.has_ready(wanted) and not peer.provisions:
            return f"esphome {peer.esphome_version} is not {wanted} and it does not provision"
    elif not compatible(wanted, peer.esphome_version, policy):
        return f"esphome {peer.esphome_version} is not {policy.value}-compatible"
    return None


def _peer_ineligibility(
    peer: PeerView, wanted: str, exact: bool, policy: VersionPolicy
) -> str | None:
    """Why ``peer`` may take no job wanting ``wanted`` (all but a job's own exclusions)."""
    if not peer.trusted:
        return "not trusted"
    if not peer.connected:
        return "not connected"
    if not peer.accepts_builds:
        return "does not accept builds"
    return _version_ineligibility(peer, wanted, exact, policy)


def _ineligibility(
    peer: PeerView, local_version: str, policy: VersionPolicy, job: WaitingJob
) -> str | None:
    why = _peer_ineligibility(
        peer, _wanted(job, local_version), _exact_or_provision(job, policy), policy
    )
    if why is None and peer.fingerprint in job.excluded:
        return "lost earlier while building this job"
    return why


_Wants = tuple[str, bool]
"""What a job asks of a receiver's esphome: the wanted version, and whether exactly."""


@dataclass
class _Pool:
    """The receivers one ``plan`` call hands out, judged once per call.

    Whether a receiver may take a job depends on the job only through the esphome it
    wants (a handful of versions per fleet) and its own exclusions, so each receiver
    is judged once per wanted version and the idle order is sorted once per plan:
    O(P log P) per plan instead of O(J x P) checks, which at 500 queued jobs and 200
    receivers was 100,000 checks (about 0.1 s) on every registry change.
    """

    peers: Sequence[PeerView]
    policy: VersionPolicy
    idle: list[PeerView]
    """Idle receivers (trusted, connected, accepting) not yet taken, longest idle first."""
    _eligible: dict[_Wants, tuple[tuple[str, ...], frozenset[str]]]

    @classmethod
    def of(
        cls, peers: Sequence[PeerView], policy: VersionPolicy, in_flight: Collection[str]
    ) -> _Pool:
        idle = sorted(
            (
                p
                for p in peers
                if p.trusted
                and p.connected
                and p.accepts_builds
                and p.idle
                and not p.in_flight
                and p.fingerprint not in in_flight
            ),
            key=lambda p: (_since(p), p.fingerprint),
        )
        return cls(peers, policy, idle, {})

    def eligible(self, wants: _Wants) -> tuple[tuple[str, ...], frozenset[str]]:
        """The fingerprints of every receiver that may build ``wants`` (list and set)."""
        known = self._eligible.get(wants)
        if known is None:
            wanted, exact = wants
            # Receivers of one esphome version answer alike: judge each version once.
            versions: dict[tuple[str | None, frozenset[str], bool], bool] = {}
            fingerprints = []
            for peer in self.peers:
                if not (peer.trusted and peer.connected and peer.accepts_builds):
                    continue
                shape = (peer.esphome_version, peer.toolchains, peer.provisions)
                if shape not in versions:
                    why = _version_ineligibility(peer, wanted, exact, self.policy)
                    versions[shape] = why is None
                if versions[shape]:
                    fingerprints.append(peer.fingerprint)
            known = (tuple(fingerprints), frozenset(fingerprints))
            self._eligible[wants] = known
        return known

    def eligible_for(self, job: WaitingJob, wants: _Wants) -> int:
        fingerprints, _ = self.eligible(wants)
        if not job.excluded:
            return len(fingerprints)
        return sum(1 for f in fingerprints if f not in job.excluded)

    def idle_for(self, job: WaitingJob, wants: _Wants) -> list[PeerView]:
        """The idle receivers not yet taken this job may use, longest idle first."""
        if not self.idle:
            return []
        _, eligible = self.eligible(wants)
        return [
            p for p in self.idle if p.fingerprint in eligible and p.fingerprint not in job.excluded
        ]

    def take(self, peer: PeerView) -> None:
        self.idle = [p for p in self.idle if p.fingerprint != peer.fingerprint]


def plan(
    jobs: Sequence[WaitingJob],
    peers: Sequence[PeerView],
    *,
    local_version: str,
    local_free: bool,
    policy: VersionPolicy = VersionPolicy.RELEASE,
    include_local: bool = True,
    receivers_connecting: bool = False,
    in_flight: Collection[str] = frozenset(),
) -> list[Placement]:
    """One placement per job, in the jobs' (FIFO) order.

    ``in_flight`` names receivers already running one of our compiles, like a
    ``PeerView.in_flight`` flag (the dispatch pool passes its set instead of copying
    every view).
    """
    pool = _Pool.of(peers, policy, in_flight)
    local_available = local_free
    decisions: list[Placement] = []
    # Once the idle receivers are handed out, every later job without exclusions that
    # wants the same esphome gets the same answer for the same local-slot state: build
    # it once per plan (a queue of hundreds of jobs is a fleet update, and the lane
    # re-plans on every change).
    same: dict[tuple[bool, _Wants], Placement] = {}
    for job in jobs:
        wants = (_wanted(job, local_version), _exact_or_provision(job, policy))
        reusable = not (job.force_local or job.excluded or pool.idle)
        key = (local_available, wants)
        decision = same.get(key) if reusable else None
        if decision is None:
            decision = _decide(
                job,
                wants,
                peers,
                pool,
                local_available,
                local_version,
                policy,
                include_local,
                receivers_connecting,
            )
            if reusable:
                same[key] = decision
        if decision.where is Where.LOCAL:
            local_available = False
        decisions.append(decision)
    return decisions


def _decide(
    job: WaitingJob,
    wants: _Wants,
    peers: Sequence[PeerView],
    pool: _Pool,
    local_free: bool,
    local_version: str,
    policy: VersionPolicy,
    include_local: bool,
    receivers_connecting: bool,
) -> Placement:
    if job.force_local:
        if job.gave_up:
            code, why = ReasonCode.REROUTE_LIMIT, "lost too many receivers; local as a last resort"
        else:
            code, why = ReasonCode.FORCED_LOCAL, "forced local (--local)"
        if local_free:
            return Placement(Where.LOCAL, code, why)
        return Placement(Where.WAIT, code, f"{why}; waiting for the local compile slot")

    eligible = pool.eligible_for(job, wants)
    if not eligible and receivers_connecting:
        return Placement(
            Where.WAIT,
            ReasonCode.RECEIVERS_CONNECTING,
            "waiting for trusted receivers to connect",
        )
    if not eligible:
        if policy is VersionPolicy.EXACT_REQUIRED:
            return Placement(
                Where.FAIL,
                ReasonCode.NO_EXACT_RECEIVER,
                f"no connected, trusted receiver runs esphome {_wanted(job, local_version)} "
                "exactly "
                "(policy exact_required)",
            )
        why = _summarise_ineligible(peers, local_version, policy, job)
        if local_free:
            return Placement(
                Where.LOCAL,
                ReasonCode.NO_ELIGIBLE_RECEIVER,
                f"no eligible receiver ({why}); building locally",
            )
        return Placement(
            Where.WAIT,
            ReasonCode.NO_ELIGIBLE_RECEIVER,
            f"no eligible receiver ({why}); waiting for the local slot",
        )

    idle = pool.idle_for(job, wants)
    wanted, exact = wants
    if idle and exact:
        ready = [p for p in idle if p.has_ready(wanted)]
        if ready:
            chosen = ready[0]
            pool.take(chosen)
            return Placement(
                Where.REMOTE,
                ReasonCode.IDLE_RECEIVER,
                f"receiver {chosen.name} has esphome {wanted} ready and has been idle the "
                f"longest of {len(ready)} such",
                receiver=chosen.fingerprint,
            )
        chosen = idle[0]
        pool.take(chosen)
        return Placement(
            Where.REMOTE,
            ReasonCode.IDLE_PROVISIONING_RECEIVER,
            f"no idle receiver has esphome {wanted} ready; receiver {chosen.name} "
            f"provisions it (idle the longest of {len(idle)} idle)",
            receiver=chosen.fingerprint,
        )
    if idle:
        chosen = idle[0]
        pool.take(chosen)
        return Placement(
            Where.REMOTE,
            ReasonCode.IDLE_RECEIVER,
            f"receiver {chosen.name} has been idle the longest of {len(idle)} idle",
            receiver=chosen.fingerprint,
        )
    if include_local and local_free:
        return Placement(
            Where.LOCAL,
            ReasonCode.RECEIVERS_BUSY,
            f"all {eligible} eligible receivers busy; local compile slot free",
        )
    if include_local:
        return Placement(
            Where.WAIT,
            ReasonCode.RECEIVERS_BUSY,
            f"all {eligible} eligible receivers and the local slot busy",
        )
    return Placement(
        Where.WAIT,
        ReasonCode.RECEIVERS_BUSY_NO_LOCAL,
        f"all {eligible} eligible receivers busy (include-local off)",
    )


def _since(peer: PeerView) -> float:
    # A receiver that reports idle without a timestamp is treated as just idle.
    return peer.idle_since if peer.idle_since is not None else float("inf")


def _summarise_ineligible(
    peers: Sequence[PeerView], local_version: str, policy: VersionPolicy, job: WaitingJob
) -> str:
    if not peers:
        return "none known"
    reasons = [f"{p.name}: {_ineligibility(p, local_version, policy, job)}" for p in peers[:3]]
    more = f", +{len(peers) - 3} more" if len(peers) > 3 else ""
    return "; ".join(reasons) + more
