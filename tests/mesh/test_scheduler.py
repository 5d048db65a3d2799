"""Every branch of the scheduler, over hand-built snapshots."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshd.mesh.dispatch.scheduler import (
    Kind,
    PeerView,
    VersionPolicy,
    WaitingJob,
    compatible,
    plan,
    release_of,
)

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


def one(job: WaitingJob, peers: list[PeerView], **kw: object):  # type: ignore[no-untyped-def]
    opts = {"local_version": V, "local_free": True, **kw}
    return plan([job], peers, **opts)[0]  # type: ignore[arg-type]


JOB = WaitingJob("j1")


def test_oldest_idle_receiver_wins() -> None:
    d = one(JOB, [peer("a", 300.0), peer("b", 100.0), peer("c", 200.0)])
    assert (d.kind, d.peer) == (Kind.REMOTE, "fp-b")
    assert "idle the longest" in d.reason


def test_ties_break_by_fingerprint_and_missing_since_counts_as_newest() -> None:
    d = one(JOB, [peer("b", 5.0), peer("a", 5.0), peer("z", None)])
    assert d.peer == "fp-a"


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
    assert d.peer == "fp-b"
    alone = one(JOB, [peer("a", 1.0, **override)])
    assert alone.kind is Kind.LOCAL
    assert why in alone.reason


def test_excluded_receiver_is_not_used_again_for_that_job() -> None:
    job = WaitingJob("j1", excluded=frozenset({"fp-a"}))
    d = one(job, [peer("a", 1.0), peer("b", 50.0)])
    assert d.peer == "fp-b"


def test_one_job_per_receiver_and_fifo_gets_oldest_idle_first() -> None:
    jobs = [WaitingJob(f"j{i}") for i in range(5)]
    peers = [peer("a", 30.0), peer("b", 10.0), peer("c", 20.0)]
    decisions = plan(jobs, peers, local_version=V, local_free=True)
    assert [d.peer for d in decisions[:3]] == ["fp-b", "fp-c", "fp-a"]
    assert decisions[3].kind is Kind.LOCAL
    assert decisions[4].kind is Kind.WAIT


def test_in_flight_receiver_takes_no_second_job() -> None:
    d = one(JOB, [peer("a", 1.0, in_flight=True)], local_free=False)
    assert d.kind is Kind.WAIT


def test_all_busy_runs_locally_when_include_local_and_slot_free() -> None:
    busy = [peer("a", None, idle=False), peer("b", None, idle=False)]
    assert one(JOB, busy).kind is Kind.LOCAL
    assert one(JOB, busy, local_free=False).kind is Kind.WAIT
    off = one(JOB, busy, include_local=False)
    assert off.kind is Kind.WAIT and "include-local off" in off.reason


def test_no_eligible_receiver_runs_locally_even_with_include_local_off() -> None:
    d = one(JOB, [], include_local=False)
    assert d.kind is Kind.LOCAL and "none known" in d.reason
    assert one(JOB, [], local_free=False).kind is Kind.WAIT


def test_exact_required_fails_instead_of_falling_back() -> None:
    other = [peer("a", 1.0, esphome_version="2026.6.4")]
    d = one(JOB, other, policy=VersionPolicy.EXACT_REQUIRED)
    assert d.kind is Kind.FAIL and "exactly" in d.reason
    assert one(JOB, other, policy=VersionPolicy.EXACT).kind is Kind.LOCAL
    exact = [peer("b", 1.0)]
    assert one(JOB, exact, policy=VersionPolicy.EXACT_REQUIRED).peer == "fp-b"


def test_forced_local_ignores_idle_receivers() -> None:
    forced = WaitingJob("j1", force_local=True)
    assert one(forced, [peer("a", 1.0)]).kind is Kind.LOCAL
    waiting = one(forced, [peer("a", 1.0)], local_free=False)
    assert waiting.kind is Kind.WAIT and "forced local" in waiting.reason


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
    assert d.kind is Kind.LOCAL and "not known yet" in d.reason
    anyway = plan(
        [JOB], [peer("a", 1.0)], local_version="", local_free=True, policy=VersionPolicy.ANY
    )[0]
    assert anyway.peer == "fp-a"


def test_first_connection_attempts_hold_off_the_local_fallback() -> None:
    waiting = plan([JOB], [], local_version=V, local_free=True, receivers_connecting=True)[0]
    assert waiting.kind is Kind.WAIT and "connect" in waiting.reason
    # An idle eligible receiver is used at once; a forced-local job never waits.
    ready = plan(
        [JOB], [peer("a", 1.0)], local_version=V, local_free=True, receivers_connecting=True
    )[0]
    assert ready.peer == "fp-a"
    forced = WaitingJob("j2", force_local=True)
    assert (
        plan([forced], [], local_version=V, local_free=True, receivers_connecting=True)[0].kind
        is Kind.LOCAL
    )
