"""The scheduler's one-pass ``plan`` decides exactly as the rules read one job at a time.

``plan`` judges every receiver once per call and reuses the answer for the tail of a
long queue (docs/PERFORMANCE.md, scenario 8: 500 queued jobs over 200 receivers went
from ~0.13 s to ~0.5 ms per plan). ``reference_plan`` below is the direct reading of the
rules in DESIGN.md ("Scheduling"), one job and every receiver at a time, as the
scheduler was first written; hypothesis checks both agree on every placement, sentence
included, over random snapshots and queues.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.jobs.placement import Placement, ReasonCode, Where
from meshd.mesh.dispatch.scheduler import PeerView, WaitingJob, plan
from meshd.version_policy import VersionPolicy, compatible

V = "2026.6.5"


def _wanted(job: WaitingJob, local_version: str) -> str:
    return job.esphome_version or local_version


def _exact(job: WaitingJob, policy: VersionPolicy) -> bool:
    return policy is VersionPolicy.PROVISION or job.esphome_version is not None


def _why_not(
    peer: PeerView, local_version: str, policy: VersionPolicy, job: WaitingJob
) -> str | None:
    if not peer.trusted:
        return "not trusted"
    if not peer.connected:
        return "not connected"
    if not peer.accepts_builds:
        return "does not accept builds"
    wanted = _wanted(job, local_version)
    if not wanted and policy is not VersionPolicy.ANY:
        return "the local esphome version is not known yet"
    if _exact(job, policy):
        if not peer.has_ready(wanted) and not peer.provisions:
            return f"esphome {peer.esphome_version} is not {wanted} and it does not provision"
    elif not compatible(wanted, peer.esphome_version, policy):
        return f"esphome {peer.esphome_version} is not {policy.value}-compatible"
    if peer.fingerprint in job.excluded:
        return "lost earlier while building this job"
    return None


def _summary(
    peers: Sequence[PeerView], local_version: str, policy: VersionPolicy, job: WaitingJob
) -> str:
    if not peers:
        return "none known"
    reasons = [f"{p.name}: {_why_not(p, local_version, policy, job)}" for p in peers[:3]]
    more = f", +{len(peers) - 3} more" if len(peers) > 3 else ""
    return "; ".join(reasons) + more


def _since(p: PeerView) -> float:
    return p.idle_since if p.idle_since is not None else float("inf")


def _one(
    job: WaitingJob,
    peers: Sequence[PeerView],
    taken: set[str],
    local_free: bool,
    local_version: str,
    policy: VersionPolicy,
    include_local: bool,
    connecting: bool,
) -> Placement:
    if job.force_local:
        if job.gave_up:
            code, why = ReasonCode.REROUTE_LIMIT, "lost too many receivers; local as a last resort"
        else:
            code, why = ReasonCode.FORCED_LOCAL, "forced local (--local)"
        if local_free:
            return Placement(Where.LOCAL, code, why)
        return Placement(Where.WAIT, code, f"{why}; waiting for the local compile slot")
    eligible = [p for p in peers if _why_not(p, local_version, policy, job) is None]
    if not eligible and connecting:
        return Placement(
            Where.WAIT, ReasonCode.RECEIVERS_CONNECTING, "waiting for trusted receivers to connect"
        )
    if not eligible:
        if policy is VersionPolicy.EXACT_REQUIRED:
            return Placement(
                Where.FAIL,
                ReasonCode.NO_EXACT_RECEIVER,
                f"no connected, trusted receiver runs esphome {_wanted(job, local_version)} "
                "exactly (policy exact_required)",
            )
        why = _summary(peers, local_version, policy, job)
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
    idle = [p for p in eligible if p.idle and not p.in_flight and p.fingerprint not in taken]
    if idle and _exact(job, policy):
        wanted = _wanted(job, local_version)
        ready = [p for p in idle if p.has_ready(wanted)]
        if ready:
            chosen = min(ready, key=lambda p: (_since(p), p.fingerprint))
            return Placement(
                Where.REMOTE,
                ReasonCode.IDLE_RECEIVER,
                f"receiver {chosen.name} has esphome {wanted} ready and has been idle the "
                f"longest of {len(ready)} such",
                receiver=chosen.fingerprint,
            )
        chosen = min(idle, key=lambda p: (_since(p), p.fingerprint))
        return Placement(
            Where.REMOTE,
            ReasonCode.IDLE_PROVISIONING_RECEIVER,
            f"no idle receiver has esphome {wanted} ready; receiver {chosen.name} "
            f"provisions it (idle the longest of {len(idle)} idle)",
            receiver=chosen.fingerprint,
        )
    if idle:
        chosen = min(idle, key=lambda p: (_since(p), p.fingerprint))
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
            f"all {len(eligible)} eligible receivers busy; local compile slot free",
        )
    if include_local:
        return Placement(
            Where.WAIT,
            ReasonCode.RECEIVERS_BUSY,
            f"all {len(eligible)} eligible receivers and the local slot busy",
        )
    return Placement(
        Where.WAIT,
        ReasonCode.RECEIVERS_BUSY_NO_LOCAL,
        f"all {len(eligible)} eligible receivers busy (include-local off)",
    )


def reference_plan(
    jobs: Sequence[WaitingJob],
    peers: Sequence[PeerView],
    *,
    local_version: str,
    local_free: bool,
    policy: VersionPolicy,
    include_local: bool,
    receivers_connecting: bool,
) -> list[Placement]:
    taken: set[str] = set()
    out = []
    for job in jobs:
        d = _one(
            job,
            peers,
            taken,
            local_free,
            local_version,
            policy,
            include_local,
            receivers_connecting,
        )
        if d.receiver is not None:
            taken.add(d.receiver)
        if d.where is Where.LOCAL:
            local_free = False
        out.append(d)
    return out


NAMES = [f"r{i}" for i in range(8)]
FINGERPRINTS = [f"fp-{name}" for name in NAMES]

# Mostly eligible, mostly idle receivers: the interesting cases are several usable ones
# competing, with the odd exception.
usually = st.sampled_from([True, True, True, False])
rarely = st.sampled_from([False, False, False, True])
peers_strategy = st.lists(
    st.builds(
        PeerView,
        fingerprint=st.sampled_from(FINGERPRINTS),
        name=st.sampled_from(NAMES),
        trusted=usually,
        connected=usually,
        accepts_builds=usually,
        esphome_version=st.sampled_from([V, V, V, "2026.6.4", "2025.12.1", None]),
        idle=usually,
        idle_since=st.one_of(st.none(), st.sampled_from([1.0, 2.0, 3.0, 5.0])),
        in_flight=rarely,
        provisions=rarely,
        toolchains=st.frozensets(st.sampled_from([V, "2026.6.4", "2025.12.1"]), max_size=2),
    ),
    max_size=8,
    unique_by=lambda p: p.fingerprint,
)
jobs_strategy = st.lists(
    st.builds(
        WaitingJob,
        id=st.uuids().map(str),
        force_local=rarely,
        gave_up=st.booleans(),
        excluded=st.frozensets(st.sampled_from(FINGERPRINTS), max_size=3),
        esphome_version=st.sampled_from([None, None, None, V, "2026.6.4"]),
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(
    jobs=jobs_strategy,
    peers=peers_strategy,
    local_version=st.sampled_from([V, V, V, ""]),
    local_free=st.booleans(),
    policy=st.sampled_from(list(VersionPolicy)),
    include_local=st.booleans(),
    receivers_connecting=st.booleans(),
    in_flight=st.frozensets(st.sampled_from(FINGERPRINTS), max_size=3),
)
def test_plan_matches_the_rules_read_one_job_at_a_time(
    jobs: list[WaitingJob],
    peers: list[PeerView],
    local_version: str,
    local_free: bool,
    policy: VersionPolicy,
    include_local: bool,
    receivers_connecting: bool,
    in_flight: frozenset[str],
) -> None:
    kwargs = {
        "local_version": local_version,
        "local_free": local_free,
        "policy": policy,
        "include_local": include_local,
        "receivers_connecting": receivers_connecting,
    }
    # ``in_flight`` is the dispatch pool's set; the rules read it as each view's flag.
    flagged = [replace(p, in_flight=p.in_flight or p.fingerprint in in_flight) for p in peers]
    expected = reference_plan(jobs, flagged, **kwargs)  # type: ignore[arg-type]
    assert plan(jobs, peers, in_flight=in_flight, **kwargs) == expected  # type: ignore[arg-type]


def test_a_long_queue_behind_busy_receivers_gets_one_shared_answer() -> None:
    peers = [
        PeerView(f"fp-{i}", f"r{i}", True, True, True, V, idle=i < 2, idle_since=float(i))
        for i in range(5)
    ]
    jobs = [WaitingJob(f"j{i}") for i in range(6)] + [WaitingJob("x", excluded=frozenset({"fp-0"}))]
    kwargs = {
        "local_version": V,
        "local_free": True,
        "policy": VersionPolicy.RELEASE,
        "include_local": True,
        "receivers_connecting": False,
    }
    decisions = plan(jobs, peers, **kwargs)  # type: ignore[arg-type]
    assert decisions == reference_plan(jobs, peers, **kwargs)  # type: ignore[arg-type]
    assert [d.receiver for d in decisions[:2]] == ["fp-0", "fp-1"]
    assert (decisions[2].where, decisions[3].where) == (Where.LOCAL, Where.WAIT)
    assert decisions[3] is decisions[4] is decisions[5]
    assert decisions[6].where is Where.WAIT


def test_the_placer_sees_a_requeued_jobs_new_options() -> None:
    from meshd.jobs.model import Job, JobType
    from meshd.mesh.dispatch.placer import MeshPlacer

    peers = [
        PeerView("fp-a", "a", True, True, True, V, idle=True, idle_since=1.0),
        PeerView("fp-b", "b", True, True, True, V, idle=True, idle_since=2.0),
    ]
    placer = MeshPlacer(lambda: peers, local_version=lambda: V)
    placer.ready = True
    job = Job(JobType.COMPILE, "a.yaml")
    [first] = placer.place([job], local_free=False, busy_receivers=frozenset())
    assert first.receiver == "fp-a"
    # Re-routed after losing fp-a: the engine puts new options on the same job.
    job.options = replace(job.options, reroutes=1, excluded_receivers=("fp-a",))
    [second] = placer.place([job], local_free=False, busy_receivers=frozenset())
    assert second.receiver == "fp-b"
    [busy] = placer.place([job], local_free=False, busy_receivers=frozenset({"fp-b"}))
    assert busy.where is Where.WAIT
