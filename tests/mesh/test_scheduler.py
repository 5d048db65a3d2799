"""Every branch of the scheduler, over hand-built snapshots.

Assertions are on the placement's ``where``, ``code`` and ``receiver``; the sentence is
for people and may be reworded freely.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshd.jobs.model import Job, JobType
from meshd.jobs.options import JobOptions
from meshd.jobs.placement import Placement, ReasonCode, Where
from meshd.mesh.dispatch.placer import waiting_job
from meshd.mesh.dispatch.reroute import MAX_REROUTES, ReceiverLost, after_loss, gave_up
from meshd.mesh.dispatch.scheduler import PeerView, WaitingJob, plan
from meshd.version_policy import VersionPolicy, compatible, release_of

V = "2026.6.5"


def peer(name: str, since: float | None = 100.0, **kw: object) -> PeerView:
    base = PeerView(
        fingerprint=f"fp-{name}",
        name=name,
        trusted=True,
        connected=True,
        accepts_builds=True,
        esphome_version=V,
        idle=True,
        idle_since=since,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def one(job: WaitingJob, peers: list[PeerView], **kw: object) -> Placement:
    opts: dict[str, object] = {"local_version": V, "local_free": True, **kw}
    return plan([job], peers, **opts)[0]  # type: ignore[arg-type]


def what(p: Placement) -> tuple[Where, ReasonCode]:
    return p.where, p.code


JOB = WaitingJob("j1")


def test_oldest_idle_receiver_wins() -> None:
    d = one(JOB, [peer("a", 300.0), peer("b", 100.0), peer("c", 200.0)])
    assert (d.where, d.code, d.receiver) == (Where.REMOTE, ReasonCode.IDLE_RECEIVER, "fp-b")
    assert d.runner == "fp-b"


def test_ties_break_by_fingerprint_and_missing_since_counts_as_newest() -> None:
    d = one(JOB, [peer("b", 5.0), peer("a", 5.0), peer("z", None)])
    assert d.receiver == "fp-a"


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"trusted": False}, "not trusted"),
        ({"connected": False}, "not connected"),
        ({"accepts_builds": False}, "does not accept builds"),
        ({"esphome_version": "2025.12.1"}, "not release-compatible"),
    ],
)
def test_ineligible_receivers_are_skipped_with_a_reason(override: dict, why: str) -> None:
    d = one(JOB, [peer("a", 1.0, **override), peer("b", 50.0)])
    assert d.receiver == "fp-b"
    alone = one(JOB, [peer("a", 1.0, **override)])
    assert what(alone) == (Where.LOCAL, ReasonCode.NO_ELIGIBLE_RECEIVER)
    assert alone.receiver is None and alone.runner == "local"
    # The sentence names each receiver's problem for the person reading the job.
    assert why in alone.reason


def test_excluded_receiver_is_not_used_again_for_that_job() -> None:
    job = WaitingJob("j1", excluded=frozenset({"fp-a"}))
    d = one(job, [peer("a", 1.0), peer("b", 50.0)])
    assert d.receiver == "fp-b"
    assert what(one(job, [peer("a", 1.0)])) == (Where.LOCAL, ReasonCode.NO_ELIGIBLE_RECEIVER)


def test_one_job_per_receiver_and_fifo_gets_oldest_idle_first() -> None:
    jobs = [WaitingJob(f"j{i}") for i in range(5)]
    peers = [peer("a", 30.0), peer("b", 10.0), peer("c", 20.0)]
    decisions = plan(jobs, peers, local_version=V, local_free=True)
    assert [d.receiver for d in decisions[:3]] == ["fp-b", "fp-c", "fp-a"]
    assert what(decisions[3]) == (Where.LOCAL, ReasonCode.RECEIVERS_BUSY)
    assert what(decisions[4]) == (Where.WAIT, ReasonCode.RECEIVERS_BUSY)


def test_in_flight_receiver_takes_no_second_job() -> None:
    d = one(JOB, [peer("a", 1.0, in_flight=True)], local_free=False)
    assert what(d) == (Where.WAIT, ReasonCode.RECEIVERS_BUSY)


def test_all_busy_runs_locally_when_include_local_and_slot_free() -> None:
    busy = [peer("a", None, idle=False), peer("b", None, idle=False)]
    assert what(one(JOB, busy)) == (Where.LOCAL, ReasonCode.RECEIVERS_BUSY)
    assert what(one(JOB, busy, local_free=False)) == (Where.WAIT, ReasonCode.RECEIVERS_BUSY)
    off = one(JOB, busy, include_local=False)
    assert what(off) == (Where.WAIT, ReasonCode.RECEIVERS_BUSY_NO_LOCAL)


def test_no_eligible_receiver_runs_locally_even_with_include_local_off() -> None:
    d = one(JOB, [], include_local=False)
    assert what(d) == (Where.LOCAL, ReasonCode.NO_ELIGIBLE_RECEIVER)
    assert "none known" in d.reason
    waiting = one(JOB, [], local_free=False)
    assert what(waiting) == (Where.WAIT, ReasonCode.NO_ELIGIBLE_RECEIVER)


def test_exact_required_fails_instead_of_falling_back() -> None:
    other = [peer("a", 1.0, esphome_version="2026.6.4")]
    d = one(JOB, other, policy=VersionPolicy.EXACT_REQUIRED)
    assert what(d) == (Where.FAIL, ReasonCode.NO_EXACT_RECEIVER)
    exact_preferred = one(JOB, other, policy=VersionPolicy.EXACT)
    assert what(exact_preferred) == (Where.LOCAL, ReasonCode.NO_ELIGIBLE_RECEIVER)
    exact = [peer("b", 1.0)]
    assert one(JOB, exact, policy=VersionPolicy.EXACT_REQUIRED).receiver == "fp-b"


def test_forced_local_ignores_idle_receivers() -> None:
    forced = WaitingJob("j1", force_local=True)
    assert what(one(forced, [peer("a", 1.0)])) == (Where.LOCAL, ReasonCode.FORCED_LOCAL)
    waiting = one(forced, [peer("a", 1.0)], local_free=False)
    assert what(waiting) == (Where.WAIT, ReasonCode.FORCED_LOCAL)


def test_a_job_the_reroute_policy_gave_up_on_says_so() -> None:
    lost = WaitingJob("j1", force_local=True, gave_up=True, excluded=frozenset({"fp-a"}))
    assert what(one(lost, [peer("b", 1.0)])) == (Where.LOCAL, ReasonCode.REROUTE_LIMIT)
    waiting = one(lost, [peer("b", 1.0)], local_free=False)
    assert what(waiting) == (Where.WAIT, ReasonCode.REROUTE_LIMIT)


def test_version_policies() -> None:
    assert release_of("2026.6.5") == "2026.6"
    assert compatible(V, "2026.6.0", VersionPolicy.RELEASE)
    assert not compatible(V, "2026.7.0", VersionPolicy.RELEASE)
    assert compatible(V, "1999.1.1", VersionPolicy.ANY)
    assert compatible(V, None, VersionPolicy.ANY)
    assert not compatible(V, None, VersionPolicy.RELEASE)
    assert not compatible(V, "2026.6.4", VersionPolicy.EXACT)
    assert compatible(V, V, VersionPolicy.EXACT_REQUIRED)


def test_unknown_local_version_builds_locally_until_probed() -> None:
    d = plan([JOB], [peer("a", 1.0)], local_version="", local_free=True)[0]
    assert what(d) == (Where.LOCAL, ReasonCode.NO_ELIGIBLE_RECEIVER)
    assert "not known yet" in d.reason
    anyway = plan(
        [JOB], [peer("a", 1.0)], local_version="", local_free=True, policy=VersionPolicy.ANY
    )[0]
    assert anyway.receiver == "fp-a"


def test_first_connection_attempts_hold_off_the_local_fallback() -> None:
    waiting = plan([JOB], [], local_version=V, local_free=True, receivers_connecting=True)[0]
    assert what(waiting) == (Where.WAIT, ReasonCode.RECEIVERS_CONNECTING)
    # An idle eligible receiver is used at once; a forced-local job never waits.
    ready = plan(
        [JOB], [peer("a", 1.0)], local_version=V, local_free=True, receivers_connecting=True
    )[0]
    assert ready.receiver == "fp-a"
    forced = WaitingJob("j2", force_local=True)
    placed = plan([forced], [], local_version=V, local_free=True, receivers_connecting=True)[0]
    assert what(placed) == (Where.LOCAL, ReasonCode.FORCED_LOCAL)


def test_a_remote_placement_always_names_its_receiver() -> None:
    with pytest.raises(ValueError, match="receiver"):
        Placement(Where.REMOTE, ReasonCode.IDLE_RECEIVER, "no receiver given")
    with pytest.raises(ValueError, match="receiver"):
        Placement(Where.LOCAL, ReasonCode.NO_MESH, "local", receiver="fp-a")


def test_reroute_policy_excludes_each_lost_receiver_then_gives_up() -> None:
    options = JobOptions(elf=True, extra={"future": 1})
    for attempt in range(1, MAX_REROUTES + 1):
        reroute = after_loss(options, ReceiverLost("session closed", f"fp-{attempt}"))
        options = reroute.options
        assert options.reroutes == attempt
        assert options.excluded_receivers == tuple(f"fp-{n}" for n in range(1, attempt + 1))
        assert options.force_local is (attempt == MAX_REROUTES)
        assert gave_up(options) is (attempt == MAX_REROUTES)
        assert reroute.notes[0] == f"re-routing (attempt {attempt}): session closed"
    assert "last resort" in reroute.notes[-1]
    # Options the policy does not own survive every re-route.
    assert options.elf and dict(options.extra) == {"future": 1}
    # Fed back to the scheduler, the job stays home and says why.
    job = waiting_job(Job(JobType.COMPILE, "a.yaml", options=options))
    assert what(one(job, [peer("z", 1.0)])) == (Where.LOCAL, ReasonCode.REROUTE_LIMIT)


def test_a_user_forced_job_is_not_mistaken_for_a_given_up_one() -> None:
    assert not gave_up(JobOptions(force_local=True))


# -- policy provision ---------------------------------------------------------------

PROV = VersionPolicy.PROVISION
OTHER = "2025.12.1"


def test_provision_prefers_a_ready_receiver_over_an_older_idle_one_that_must_provision() -> None:
    must = peer("must", 10.0, esphome_version=OTHER, provisions=True)
    ready = peer("ready", 300.0, esphome_version=OTHER, toolchains=frozenset({V}))
    d = one(JOB, [must, ready], policy=PROV)
    assert (d.where, d.code, d.receiver) == (Where.REMOTE, ReasonCode.IDLE_RECEIVER, "fp-ready")


def test_provision_tie_breaks_by_oldest_idle_among_ready_ones() -> None:
    own = peer("own", 200.0)
    tc = peer("tc", 100.0, esphome_version=OTHER, toolchains=frozenset({V}))
    d = one(JOB, [own, tc, peer("must", 1.0, esphome_version=OTHER, provisions=True)], policy=PROV)
    assert (d.code, d.receiver) == (ReasonCode.IDLE_RECEIVER, "fp-tc")


def test_provision_uses_a_must_provision_receiver_when_no_ready_one_is_idle() -> None:
    busy_ready = peer("ready", 1.0, idle=False)
    must = peer("must", 50.0, esphome_version=OTHER, provisions=True)
    d = one(JOB, [busy_ready, must], policy=PROV)
    assert (d.where, d.code, d.receiver) == (
        Where.REMOTE,
        ReasonCode.IDLE_PROVISIONING_RECEIVER,
        "fp-must",
    )


def test_provision_skips_a_receiver_on_another_version_that_does_not_provision() -> None:
    d = one(JOB, [peer("old", 1.0, esphome_version=OTHER)], policy=PROV)
    assert what(d) == (Where.LOCAL, ReasonCode.NO_ELIGIBLE_RECEIVER)
    # The same receiver under `release` is skipped too; under `any` it is used as is.
    assert (
        what(one(JOB, [peer("old", 1.0, esphome_version=OTHER)], policy=VersionPolicy.RELEASE))[1]
        is ReasonCode.NO_ELIGIBLE_RECEIVER
    )
    assert one(JOB, [peer("old", esphome_version=OTHER)], policy=VersionPolicy.ANY).receiver


def test_a_pinned_job_wants_its_version_whatever_the_policy() -> None:
    pinned = WaitingJob("j1", esphome_version=OTHER)
    same = peer("same", 1.0)  # runs our V, not the pin
    ready = peer("ready", 500.0, esphome_version=OTHER)
    d = one(pinned, [same, ready], policy=VersionPolicy.RELEASE)
    assert (d.code, d.receiver) == (ReasonCode.IDLE_RECEIVER, "fp-ready")
    must = peer("must", 9.0, provisions=True)
    d = one(pinned, [same, must], policy=VersionPolicy.ANY)
    assert (d.code, d.receiver) == (ReasonCode.IDLE_PROVISIONING_RECEIVER, "fp-must")
    assert what(one(pinned, [same], policy=VersionPolicy.EXACT_REQUIRED)) == (
        Where.FAIL,
        ReasonCode.NO_EXACT_RECEIVER,
    )


def test_waiting_job_carries_the_pin() -> None:
    job = Job(JobType.COMPILE, "/c/x.yaml", options=JobOptions(esphome_version=OTHER))
    assert waiting_job(job).esphome_version == OTHER
    assert waiting_job(Job(JobType.COMPILE, "/c/x.yaml")).esphome_version is None


def test_two_pinned_jobs_take_two_receivers_ready_first() -> None:
    a, b = WaitingJob("a", esphome_version=OTHER), WaitingJob("b", esphome_version=OTHER)
    ready = peer("ready", 100.0, toolchains=frozenset({OTHER}))
    must = peer("must", 1.0, provisions=True)
    first, second = plan([a, b], [must, ready], local_version=V, local_free=False)
    assert (first.code, first.receiver) == (ReasonCode.IDLE_RECEIVER, "fp-ready")
    assert (second.code, second.receiver) == (ReasonCode.IDLE_PROVISIONING_RECEIVER, "fp-must")
