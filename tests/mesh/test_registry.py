"""The peer registry: feeds (mDNS, link, trust), change notification, snapshot, cap."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from meshd.jobs.placement import Where
from meshd.mesh.dispatch.scheduler import PeerView, WaitingJob, plan
from meshd.mesh.peering.registry import (
    MAX_ADDRESSES,
    MAX_PEERS,
    RECENT_COMPILES,
    ChangeKind,
    MdnsAdvert,
    PeerChange,
    PeerSource,
    Registry,
)
from tests.support.clock import FakeClock
from tests.support.fingerprints import random_fingerprint

SNAPSHOT_KEYS = {
    "fingerprint",
    "name",
    "addresses",
    "sources",
    "trusted",
    "connected",
    "protocol",
    "esphome_version",
    "provisions",
    "toolchains",
    "accepts_builds",
    "idle",
    "idle_since",
    "claimed_idle_since",
    "running",
    "queued",
    "lane_via",
    "last_seen",
    "last_error",
    "compile_durations",
    "mdns_instances",
}


def advert(fingerprint: str, name: str = "desk", **kw: object) -> MdnsAdvert:
    base = MdnsAdvert(
        instance=f"{name}-{fingerprint[:8]}._meshd._tcp.local.",
        fingerprint=fingerprint,
        name=name,
        protocol=1,
        esphome_version="2026.6.5",
        accepts_builds=True,
        idle=True,
        idle_since=500.0,
        addresses=("10.0.0.5:7420",),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reg(clock: FakeClock) -> Registry:
    return Registry(clock=clock)


@pytest.fixture
def changes(reg: Registry) -> list[PeerChange]:
    seen: list[PeerChange] = []
    reg.add_listener(seen.append)
    return seen


def test_mdns_advert_creates_a_record_with_every_field(
    reg: Registry, changes: list[PeerChange]
) -> None:
    f = random_fingerprint()
    assert reg.mdns_seen(advert(f))
    [snap] = reg.snapshot()
    assert set(snap) == SNAPSHOT_KEYS
    assert (
        snap
        == {
            "fingerprint": f,
            "name": "desk",
            "addresses": ["10.0.0.5:7420"],
            "sources": ["mdns"],
            "trusted": False,
            "connected": False,
            "protocol": 1,
            "esphome_version": "2026.6.5",
            "accepts_builds": True,
            "idle": True,
            "idle_since": 1000.0,  # when this node saw it idle, on its own clock
            "claimed_idle_since": 500.0,
            "running": 0,
            "queued": 0,
            "lane_via": "mdns",
            "last_seen": 1000.0,
            "last_error": None,
            "compile_durations": [],
            "mdns_instances": [f"desk-{f[:8]}._meshd._tcp.local."],
            "provisions": False,
            "toolchains": [],
        }
    )
    json.dumps(reg.snapshot())  # JSON-able as is
    assert changes == [PeerChange(ChangeKind.ADDED, f)]


def test_node_info_and_lane_status_carry_provisioning_to_the_scheduler(reg: Registry) -> None:
    f = random_fingerprint()
    reg.mdns_seen(advert(f))
    reg.link_hello(f, provisions=True, toolchains=("2026.5.1",))
    [view] = reg.views()
    assert view.provisions and view.toolchains == frozenset({"2026.5.1"})
    assert view.has_ready("2026.5.1") and view.has_ready("2026.6.5")
    assert not view.has_ready("2026.7.0")
    reg.link_status(f, idle=True, idle_since=1.0, running=0, queued=0, toolchains=())
    [view] = reg.views()
    assert view.toolchains == frozenset() and view.provisions
    [snap] = reg.snapshot()
    assert snap["provisions"] is True and snap["toolchains"] == []


def test_refresh_without_change_is_not_announced_but_moves_last_seen(
    reg: Registry, changes: list[PeerChange], clock: FakeClock
) -> None:
    f = random_fingerprint()
    reg.mdns_seen(advert(f))
    clock.now += 5
    reg.mdns_seen(advert(f))
    assert len(changes) == 1
    info = reg.get(f)
    assert info is not None and info.last_seen == 1005.0


def test_lane_change_from_txt_is_announced(reg: Registry, changes: list[PeerChange]) -> None:
    f = random_fingerprint()
    reg.mdns_seen(advert(f))
    reg.mdns_seen(advert(f, idle=False, idle_since=None))
    info = reg.get(f)
    assert info is not None and (info.idle, info.idle_since) == (False, None)
    assert changes[-1] == PeerChange(ChangeKind.UPDATED, f)


def test_addresses_follow_dhcp_newest_first_deduplicated_bounded(reg: Registry) -> None:
    f = random_fingerprint()
    reg.mdns_seen(advert(f, addresses=("10.0.0.5:7420",)))
    reg.mdns_seen(advert(f, addresses=("10.0.0.9:7420",)))
    assert reg.addresses(f) == ["10.0.0.9:7420", "10.0.0.5:7420"]
    reg.mdns_seen(advert(f, addresses=("10.0.0.5:7420",)))
    assert reg.addresses(f) == ["10.0.0.5:7420", "10.0.0.9:7420"]
    for i in range(MAX_ADDRESSES + 3):
        reg.mdns_seen(advert(f, addresses=(f"10.0.1.{i}:7420",)))
    addresses = reg.addresses(f)
    assert len(addresses) == MAX_ADDRESSES
    assert addresses[0] == f"10.0.1.{MAX_ADDRESSES + 2}:7420"


def test_goodbye_removes_an_mdns_only_peer(reg: Registry, changes: list[PeerChange]) -> None:
    f = random_fingerprint()
    a = advert(f)
    reg.mdns_seen(a)
    reg.mdns_gone(a.instance)
    assert f not in reg
    assert changes[-1] == PeerChange(ChangeKind.REMOVED, f)


def test_goodbye_keeps_a_static_peer(reg: Registry) -> None:
    f = random_fingerprint()
    a = advert(f)
    reg.add_static(f, "192.168.1.20:7420")
    reg.mdns_seen(a)
    reg.mdns_gone(a.instance)
    info = reg.get(f)
    assert info is not None
    assert info.sources == ("static",)
    assert info.mdns_instances == ()


def test_goodbye_keeps_a_connected_peer_until_the_link_drops(reg: Registry) -> None:
    f = random_fingerprint()
    a = advert(f)
    reg.mdns_seen(a)
    reg.link_up(f)
    reg.mdns_gone(a.instance)
    info = reg.get(f)
    assert info is not None and info.connected and info.sources == ()
    reg.link_down(f, "heartbeat timeout")
    assert f not in reg


def test_goodbye_of_an_unknown_instance_is_harmless(reg: Registry) -> None:
    reg.mdns_gone("nobody._meshd._tcp.local.")
    assert len(reg) == 0


def test_instance_reclaimed_by_another_fingerprint_ends_the_old_claim(reg: Registry) -> None:
    old, new = random_fingerprint(), random_fingerprint()
    reg.mdns_seen(advert(old, instance="x._meshd._tcp.local."))
    reg.mdns_seen(advert(new, instance="x._meshd._tcp.local."))
    assert old not in reg and new in reg


def test_link_state_wins_over_unauthenticated_adverts(reg: Registry) -> None:
    f = random_fingerprint()
    reg.mdns_seen(advert(f, idle=True, idle_since=500.0, name="desk"))
    reg.link_up(f, address="10.0.0.5:7420")
    reg.link_status(f, idle=False, idle_since=None, running=1, queued=2)
    # A spoofed (or simply stale) advert claims idle: ignored while the session is up.
    reg.mdns_seen(advert(f, idle=True, idle_since=1.0, name="evil"))
    info = reg.get(f)
    assert info is not None
    assert (info.idle, info.running, info.queued, info.lane_via) == (False, 1, 2, "link")
    assert info.name == "desk"


def test_link_down_records_the_error_and_forgets_link_lane_state(reg: Registry) -> None:
    f = random_fingerprint()
    reg.add_static(f, "192.168.1.20:7420", name="server")
    reg.link_up(f, source=PeerSource.STATIC)
    reg.link_status(f, idle=True, idle_since=900.0, running=0, queued=0)
    reg.link_down(f, "handshake: key mismatch")
    info = reg.get(f)
    assert info is not None
    assert not info.connected and info.last_error == "handshake: key mismatch"
    assert not info.idle and info.idle_since is None
    reg.link_up(f)
    info = reg.get(f)
    assert info is not None and info.connected and info.last_error is None


def test_inbound_peer_unknown_before_is_added_on_link_up(
    reg: Registry, changes: list[PeerChange]
) -> None:
    f = random_fingerprint()
    assert reg.link_up(f, address="10.0.0.7:51234")
    info = reg.get(f)
    assert info is not None
    assert info.sources == ("inbound",) and info.connected
    assert changes == [PeerChange(ChangeKind.ADDED, f)]


def test_hello_and_status_push_fill_the_record(reg: Registry) -> None:
    f = random_fingerprint()
    reg.link_up(f, source=PeerSource.STATIC, address="10.0.0.7:7420")
    reg.link_hello(f, name="builder", protocol=1, esphome_version="2026.6.5", accepts_builds=True)
    reg.link_status(f, idle=True, idle_since=1234.5, running=0, queued=0)
    [snap] = reg.snapshot()
    assert snap["name"] == "builder"
    assert snap["sources"] == ["static"]
    assert (snap["idle"], snap["idle_since"], snap["lane_via"]) == (True, 1000.0, "link")
    assert snap["claimed_idle_since"] == 1234.5


def test_idle_since_is_our_clock_whatever_the_peer_claims(reg: Registry, clock: FakeClock) -> None:
    """A receiver whose clock is hours off neither looks idle for hours nor never idle."""
    behind, ahead = random_fingerprint(), random_fingerprint()
    reg.link_up(behind)
    reg.link_status(behind, idle=True, idle_since=1000.0 - 5 * 3600, running=0, queued=0)
    clock.now += 2
    reg.link_up(ahead)
    reg.link_status(ahead, idle=True, idle_since=1000.0 + 5 * 3600, running=0, queued=0)
    seen = {v.fingerprint: v.idle_since for v in reg.views()}
    assert seen == {behind: 1000.0, ahead: 1002.0}  # first seen idle first, nothing else
    # A repeat of the same claim is the same idle period; a new claim is a new one.
    clock.now += 3
    reg.link_status(behind, idle=True, idle_since=1000.0 - 5 * 3600, running=0, queued=0)
    assert reg.get(behind).idle_since == 1000.0  # type: ignore[union-attr]
    reg.link_status(behind, idle=True, idle_since=1000.0 - 4 * 3600, running=0, queued=0)
    assert reg.get(behind).idle_since == 1005.0  # type: ignore[union-attr]


def test_trusted_peers_are_listed_seen_or_not_and_never_dropped(
    reg: Registry, clock: FakeClock
) -> None:
    f = random_fingerprint()
    reg.sync_trust({f}, {f: ("desk", ("10.0.0.7:7420",))})
    [snap] = reg.snapshot()
    assert (snap["name"], snap["trusted"], snap["connected"]) == ("desk", True, False)
    assert snap["sources"] == ["trust"] and snap["addresses"] == ["10.0.0.7:7420"]
    assert snap["last_seen"] is None, "never heard from"
    reg.mdns_seen(advert(f))
    clock.now += 7
    reg.link_up(f)
    reg.link_down(f, "heartbeat timeout")
    reg.mdns_gone(f"desk-{f[:8]}._meshd._tcp.local.")  # its goodbye on stop
    [snap] = reg.snapshot()
    assert (snap["trusted"], snap["connected"], snap["last_error"]) == (
        True,
        False,
        "heartbeat timeout",
    )
    assert snap["last_seen"] == 1007.0, "when the session last said something"
    reg.sync_trust(set())  # untrusted: nothing else keeps the record
    assert reg.snapshot() == []


def test_a_receivers_claimed_idle_since_is_ignored(reg: Registry, clock: FakeClock) -> None:
    """A receiver claiming it has been idle since 1970 must not win every compile: the
    order is when *this node* saw each become idle (docs/SECURITY.md, the clock claim)."""
    honest, liar = random_fingerprint(), random_fingerprint()
    reg.link_up(honest)
    reg.link_status(honest, idle=True, idle_since=clock.now - 60, running=0, queued=0)
    clock.now += 10
    reg.link_up(liar)
    reg.link_status(liar, idle=True, idle_since=0.0, running=0, queued=0)
    clock.now += 10
    reg.link_status(liar, idle=True, idle_since=0.0, running=0, queued=0)  # repeated claim
    views = {v.fingerprint: v for v in reg.views()}
    assert views[honest].idle_since == 1000.0
    assert views[liar].idle_since == 1010.0
    assert views[honest].idle_since < views[liar].idle_since
    # Busy, then idle again: the new observation counts.
    reg.link_status(honest, idle=False, idle_since=None, running=1, queued=0)
    clock.now += 10
    reg.link_status(honest, idle=True, idle_since=0.0, running=0, queued=0)
    assert {v.fingerprint: v for v in reg.views()}[honest].idle_since == 1030.0


def test_busy_status_drops_idle_since(reg: Registry) -> None:
    f = random_fingerprint()
    reg.link_up(f)
    reg.link_status(f, idle=False, idle_since=1234.5, running=1, queued=0)
    info = reg.get(f)
    assert info is not None and info.idle_since is None


def test_trust_changes_are_applied_and_announced(
    clock: FakeClock,
) -> None:
    trusted_fp, other = random_fingerprint(), random_fingerprint()
    reg = Registry(clock=clock, is_trusted=lambda f: f == trusted_fp)
    seen: list[PeerChange] = []
    reg.add_listener(seen.append)
    reg.mdns_seen(advert(trusted_fp))
    reg.mdns_seen(advert(other, name="other"))
    assert [reg.get(f).trusted for f in (trusted_fp, other)] == [True, False]  # type: ignore[union-attr]
    seen.clear()
    reg.sync_trust({other})
    assert [reg.get(f).trusted for f in (trusted_fp, other)] == [False, True]  # type: ignore[union-attr]
    assert {c.fingerprint for c in seen} == {trusted_fp, other}
    seen.clear()
    reg.set_trusted(other, True)  # no change
    assert seen == []


def test_compile_durations_are_bounded(reg: Registry) -> None:
    f = random_fingerprint()
    reg.link_up(f)
    for i in range(RECENT_COMPILES + 5):
        reg.record_compile(f, float(i))
    reg.record_compile(f, -1.0)  # nonsense is ignored
    info = reg.get(f)
    assert info is not None
    assert info.compile_durations == tuple(float(i) for i in range(5, RECENT_COMPILES + 5))


def test_views_feed_the_scheduler(reg: Registry) -> None:
    older, newer = random_fingerprint(), random_fingerprint()
    for f, since in ((older, 100.0), (newer, 200.0)):
        reg.mdns_seen(advert(f, name=f[:4], idle_since=since))
        reg.set_trusted(f, True)
        reg.link_up(f)
        reg.link_status(f, idle=True, idle_since=since, running=0, queued=0)
    views = reg.views(in_flight={newer})
    assert all(isinstance(v, PeerView) for v in views)
    assert {v.fingerprint: v.in_flight for v in views} == {older: False, newer: True}
    [decision] = plan([WaitingJob("j1")], views, local_version="2026.6.5", local_free=True)
    assert (decision.where, decision.receiver) == (Where.REMOTE, older)


def test_a_failing_listener_does_not_stop_the_others(reg: Registry) -> None:
    seen: list[PeerChange] = []

    def broken(_change: PeerChange) -> None:
        raise RuntimeError("listener bug")

    reg.add_listener(broken)
    reg.add_listener(seen.append)
    reg.mdns_seen(advert(random_fingerprint()))
    assert len(seen) == 1


def test_removed_listener_is_not_called(reg: Registry) -> None:
    seen: list[PeerChange] = []
    remove = reg.add_listener(seen.append)
    remove()
    reg.mdns_seen(advert(random_fingerprint()))
    assert seen == []


# -- the cap ---------------------------------------------------------------------------


def test_cap_refuses_an_mdns_flood(clock: FakeClock) -> None:
    reg = Registry(clock=clock)
    first = [random_fingerprint() for _ in range(MAX_PEERS)]
    for f in first:
        assert reg.mdns_seen(advert(f, name=f[:6]))
    flood = [random_fingerprint() for _ in range(100)]
    assert not any(reg.mdns_seen(advert(f, name=f[:6])) for f in flood)
    assert len(reg) == MAX_PEERS
    assert set(reg.fingerprints()) == set(first)  # first come stays, nothing displaced


def test_cap_lets_a_verified_peer_evict_an_unimportant_one(clock: FakeClock) -> None:
    reg = Registry(clock=clock, max_peers=3)
    trusted, stale, fresh = random_fingerprint(), random_fingerprint(), random_fingerprint()
    reg.mdns_seen(advert(trusted, name="t"))
    reg.set_trusted(trusted, True)
    clock.now += 1
    reg.mdns_seen(advert(stale, name="s"))
    clock.now += 1
    reg.mdns_seen(advert(fresh, name="f"))
    newcomer = random_fingerprint()
    assert reg.link_up(newcomer, source=PeerSource.STATIC, address="10.0.0.8:7420")
    assert set(reg.fingerprints()) == {trusted, fresh, newcomer}


def test_cap_refuses_a_verified_peer_when_nothing_is_evictable(clock: FakeClock) -> None:
    reg = Registry(clock=clock, max_peers=2)
    for _ in range(2):
        f = random_fingerprint()
        reg.add_static(f, "10.0.0.1:7420")
    assert not reg.link_up(random_fingerprint())
    assert not reg.add_static(random_fingerprint(), "10.0.0.2:7420")
    assert len(reg) == 2


def test_room_frees_up_after_removal(clock: FakeClock) -> None:
    reg = Registry(clock=clock, max_peers=1)
    a = advert(random_fingerprint())
    reg.mdns_seen(a)
    assert not reg.mdns_seen(advert(random_fingerprint()))
    reg.mdns_gone(a.instance)
    assert reg.mdns_seen(advert(random_fingerprint()))


def test_own_fingerprint_is_never_a_peer() -> None:
    own = "ab" * 32
    registry = Registry(own_fingerprint=own)
    assert not registry.mdns_seen(advert(own))
    assert not registry.link_up(own)
    assert own not in registry and registry.snapshot() == []
