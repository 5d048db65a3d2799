"""Discovery: TXT parsing, real zeroconf on 127.0.0.1, and a multi-host netns mesh.

Loopback tests run two (or more) ``AsyncZeroconf`` instances in this process, pinned to
127.0.0.1 and IPv4 only, in whatever namespace the suite runs in (scripts/test: a
private one with ``lo`` MULTICAST on). They are skipped, with the reason, if a
multicast datagram sent out 127.0.0.1 does not come back (``loopback_multicast_works``).
Peers are always looked up by their random fingerprint, so another suite advertising
on the same loopback cannot confuse them.

The multi-host test puts one discovery-only node (tests/mesh/discovery_node.py) in
each of three namespaces on a bridge (tests/support/mesh_netns.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshd.mesh.peering.discovery import (
    MAX_ADVERT_TOOLCHAINS,
    MAX_NAME_LEN,
    MAX_TC_LEN,
    MAX_TXT_BYTES,
    SERVICE_TYPE,
    AdvertError,
    AdvertInfo,
    Discovery,
    advert_toolchains,
    build_txt,
    instance_label,
    parse_advert,
)
from meshd.mesh.peering.registry import ChangeKind, MdnsAdvert, PeerChange, PeerRecord, Registry
from tests.support.fingerprints import random_fingerprint
from tests.support.mesh_netns import loopback_multicast_works, mesh_net, netns_permitted
from tests.support.waits import until_notified

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0  # generous bound for an event to arrive; never asserted as a duration

requires_loopback_multicast = pytest.mark.skipif(
    not loopback_multicast_works(),
    reason="multicast sent out 127.0.0.1 does not loop back here; run the suite with "
    "scripts/test (a private netns with `ip link set lo multicast on`)",
)


def props(**kw: str | bytes | None) -> dict[bytes, bytes | None]:
    return {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in kw.items()}


# -- pure: labels, TXT, parsing ---------------------------------------------------------


def test_instance_label_is_dns_safe_and_carries_the_fingerprint() -> None:
    f = "ab" * 32
    assert instance_label("My Desk!", f) == "My-Desk-abababab"
    assert instance_label("", f) == "meshd-abababab"
    assert instance_label("ü" * 10, f) == "meshd-abababab"
    long = instance_label("x" * 200, f)
    assert len(long) <= 63 and long.endswith("-abababab")


def test_txt_round_trips_through_the_parser() -> None:
    f = random_fingerprint()
    advert = AdvertInfo(f, "desk", 7420, 1, "2026.6.5", idle=True, idle_since=1_700_000_000.123)
    txt = build_txt(advert)
    assert txt["idle_since"] == "1700000000123"  # epoch milliseconds
    parsed = parse_advert(
        "desk._meshd._tcp.local.",
        {k.encode(): v.encode() for k, v in txt.items()},
        addresses=["10.0.0.5", "fe80::1%eth0"],
        port=7420,
    )
    assert parsed == MdnsAdvert(
        instance="desk._meshd._tcp.local.",
        fingerprint=f,
        name="desk",
        protocol=1,
        esphome_version="2026.6.5",
        accepts_builds=True,
        idle=True,
        idle_since=1_700_000_000.123,
        addresses=("10.0.0.5:7420", "[fe80::1%eth0]:7420"),
    )


def test_busy_txt_has_no_idle_since() -> None:
    txt = build_txt(
        AdvertInfo(random_fingerprint(), "d", 1, 1, "2026.6.5", idle=False, idle_since=5.0)
    )
    assert txt["idle"] == "0" and "idle_since" not in txt


def test_toolchain_hints_round_trip_bounded_most_recent_first() -> None:
    # 20 ready toolchains, most recently used first, and one a file system could hold
    # but a TXT cannot carry: the advert names the 8 most recent, within 200 bytes.
    recent = [f"2026.{month}.{patch}" for month in range(12, 2, -1) for patch in (1, 0)]
    advert = AdvertInfo(
        random_fingerprint(),
        "desk",
        7420,
        1,
        "2026.6.5",
        provisions=True,
        toolchains=("bad version", *recent),
    )
    txt = build_txt(advert)
    assert txt["prov"] == "1"
    assert txt["tc"].split(",") == recent[:MAX_ADVERT_TOOLCHAINS]
    assert len(txt["tc"]) <= MAX_TC_LEN and len("tc=" + txt["tc"]) < 255
    parsed = parse_advert(
        "d", {k.encode(): v.encode() for k, v in txt.items()}, addresses=["10.0.0.1"], port=1
    )
    assert parsed.provisions is True
    assert parsed.toolchains == tuple(recent[:MAX_ADVERT_TOOLCHAINS])
    # Long version strings: those that would overflow the value are left out, not cut.
    long = [f"2026.{i}.0-dev{'x' * 20}" for i in range(12)]
    chosen = advert_toolchains(long)
    assert chosen and len(",".join(chosen)) <= MAX_TC_LEN and set(chosen) <= set(long)
    assert "tc" not in build_txt(AdvertInfo(random_fingerprint(), "d", 1, 1, "2026.6.5"))


@pytest.mark.parametrize(
    ("change", "provisions", "toolchains", "why"),
    [
        ({"prov": "yes"}, False, (), "prov is not 0 or 1"),
        (
            {"prov": "1", "tc": "2026.5.1,../../etc,2026.4.0"},
            True,
            ("2026.5.1", "2026.4.0"),
            "not a version string",
        ),
        ({"tc": "2026.5.1,,2026.5.1"}, False, ("2026.5.1",), "not a version string"),
        ({"tc": "2026.1.1," * 30}, False, (), f"longer than {MAX_TC_LEN}"),
        (
            {"tc": ",".join(f"2026.{i}.0" for i in range(1, 13))},
            False,
            tuple(f"2026.{i}.0" for i in range(1, 9)),
            f"more than {MAX_ADVERT_TOOLCHAINS}",
        ),
        ({"tc": b"2026.5.1,\xff\xfe"}, False, ("2026.5.1",), "not a version string"),
    ],
)
def test_odd_toolchain_hints_lose_the_hint_not_the_advert(
    change: dict[str, str | bytes], provisions: bool, toolchains: tuple[str, ...], why: str
) -> None:
    reasons: list[str] = []
    parsed = parse_advert(
        "x", props(**GOOD, **change), addresses=["10.0.0.1"], port=7420, on_odd=reasons.append
    )
    assert (parsed.provisions, parsed.toolchains) == (provisions, toolchains)
    assert parsed.accepts_builds and parsed.idle  # the rest of the advert stands
    assert len(reasons) == 1 and why in reasons[0]


def test_advert_toolchain_hints_count_until_the_session_says_otherwise() -> None:
    registry = Registry()
    fp = random_fingerprint()
    advert = parse_advert(
        "d._meshd._tcp.local.",
        props(**{**GOOD, "fp": fp}, prov="1", tc="2026.5.1"),
        addresses=["10.0.0.1"],
        port=7420,
    )
    assert registry.mdns_seen(advert)
    [view] = registry.views()
    assert view.provisions and view.has_ready("2026.5.1")  # before any node_info
    registry.link_up(fp)
    registry.link_hello(fp, provisions=False, toolchains=["2026.4.0"])
    registry.mdns_seen(advert)  # an advert while connected does not override node_info
    [view] = registry.views()
    assert not view.provisions and view.toolchains == frozenset({"2026.4.0"})


GOOD = {"fp": "a" * 64, "proto": "1", "idle": "1", "idle_since": "1700000000000", "builds": "1"}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"fp": None}, "no fingerprint"),
        ({"fp": "zz" * 32}, "64 hex"),
        ({"fp": "a" * 63}, "64 hex"),
        ({"proto": None}, "proto"),
        ({"proto": "1e3"}, "proto"),
        ({"proto": "0"}, "proto"),
        ({"proto": "99999999"}, "proto"),
        ({"proto": " 1"}, "proto"),
        ({"idle": "yes"}, "idle"),
        ({"builds": "2"}, "builds"),
        ({"idle_since": "-5"}, "idle_since"),
        ({"idle_since": "1_000"}, "idle_since"),
        ({"idle_since": "9" * 40}, "idle_since"),
        ({"name": "n" * (MAX_NAME_LEN + 1)}, "name"),
        ({"name": "evil\x1b[31m"}, "control"),
        ({"name": b"\xff\xfe"}, "UTF-8"),
        ({"esphome": "2026.6.5; rm -rf"}, "version"),
    ],
)
def test_malformed_txt_is_rejected(change: dict[str, str | bytes | None], why: str) -> None:
    fields: dict[str, str | bytes | None] = {**GOOD, **change}
    raw = props(**{k: v for k, v in fields.items() if v is not None})
    with pytest.raises(AdvertError, match=why):
        parse_advert("x._meshd._tcp.local.", raw, addresses=["10.0.0.1"], port=7420)


def test_oversized_and_overfull_txt_is_rejected() -> None:
    raw = props(**GOOD)
    with pytest.raises(AdvertError, match="bytes"):
        parse_advert("x", raw, addresses=["10.0.0.1"], port=7420, txt_size=MAX_TXT_BYTES + 1)
    many = {**raw, **{f"k{i}".encode(): b"v" for i in range(40)}}
    with pytest.raises(AdvertError, match="keys"):
        parse_advert("x", many, addresses=["10.0.0.1"], port=7420)


@pytest.mark.parametrize(
    ("addresses", "port", "why"),
    [([], 7420, "no address"), (["not-an-ip"], 7420, "IP"), (["10.0.0.1"], 0, "port")],
)
def test_unusable_endpoints_are_rejected(addresses: list[str], port: int, why: str) -> None:
    with pytest.raises(AdvertError, match=why):
        parse_advert("x", props(**GOOD), addresses=addresses, port=port)


def test_missing_optional_fields_take_safe_defaults() -> None:
    parsed = parse_advert(
        "lab-1._meshd._tcp.local.",
        props(fp="A" * 64, proto="1", future_field="whatever"),
        addresses=["10.0.0.1"],
        port=7420,
    )
    assert parsed.fingerprint == "a" * 64  # normalised
    assert parsed.name == "lab-1"
    assert (parsed.idle, parsed.idle_since, parsed.accepts_builds) == (False, None, False)
    assert parsed.esphome_version is None


@given(
    st.dictionaries(
        st.sampled_from(
            [
                b"fp",
                b"proto",
                b"name",
                b"esphome",
                b"idle",
                b"idle_since",
                b"builds",
                b"prov",
                b"tc",
            ]
        )
        | st.binary(max_size=12),
        st.none() | st.binary(max_size=80),
        max_size=12,
    ),
    st.lists(st.text(max_size=20), max_size=3),
    st.none() | st.integers(-5, 70000),
)
def test_parser_only_returns_adverts_or_raises_advert_error(
    raw: dict[bytes, bytes | None], addresses: list[str], port: int | None
) -> None:
    try:
        parsed = parse_advert("h._meshd._tcp.local.", raw, addresses=addresses, port=port)
    except AdvertError:
        return
    assert len(parsed.fingerprint) == 64 and parsed.addresses
    assert len(parsed.toolchains) <= MAX_ADVERT_TOOLCHAINS


# -- loopback: real zeroconf ---------------------------------------------------------------


NodeFactory = Callable[..., Awaitable[tuple[Discovery, Registry]]]


@pytest.fixture
async def nodes() -> AsyncIterator[NodeFactory]:
    """Start Discovery instances pinned to 127.0.0.1; every one is stopped afterwards."""
    started: list[Discovery] = []

    async def make(
        advertise: AdvertInfo | None = None, browse: bool = True, **kw: Any
    ) -> tuple[Discovery, Registry]:
        registry = Registry()
        discovery = Discovery(
            registry, interfaces=[LOOPBACK], advertise=advertise, browse=browse, **kw
        )
        started.append(discovery)
        await discovery.start()
        return discovery, registry

    try:
        yield make
    finally:
        for discovery in started:
            await discovery.stop()


def advert_info(name: str = "receiver", **kw: Any) -> AdvertInfo:
    base: dict[str, Any] = {
        "fingerprint": random_fingerprint(),
        "name": name,
        "port": 7420,
        "protocol": 1,
        "esphome_version": "2026.6.5",
        "idle": True,
        "idle_since": 1_700_000_000.5,
    }
    return AdvertInfo(**{**base, **kw})


async def until(registry: Registry, predicate: Callable[[], bool], what: str) -> None:
    """Wait for ``predicate`` to hold, re-checking on every registry change."""
    try:
        await until_notified(registry.add_listener, predicate, timeout=WAIT, what=what)
    except TimeoutError as exc:
        pytest.fail(f"{exc}; registry: {registry.snapshot()}")


def peer(registry: Registry, fingerprint: str) -> PeerRecord:
    info = registry.get(fingerprint)
    assert info is not None, f"{fingerprint[:8]} not in {registry.snapshot()}"
    return info


@requires_loopback_multicast
async def test_advertised_node_appears_with_the_right_fields(nodes: NodeFactory) -> None:
    _browser, registry = await nodes()
    info = advert_info("Desk PC")
    adv, _ = await nodes(advertise=info, browse=False)
    await until(registry, lambda: info.fingerprint in registry, "the advert")
    snap = peer(registry, info.fingerprint).to_dict()
    assert snap["name"] == "Desk PC"
    assert snap["addresses"] == ["127.0.0.1:7420"]
    assert snap["sources"] == ["mdns"]
    assert snap["protocol"] == 1
    assert snap["esphome_version"] == "2026.6.5"
    assert snap["accepts_builds"] is True
    assert (snap["idle"], snap["claimed_idle_since"]) == (True, 1_700_000_000.5)
    assert (snap["trusted"], snap["connected"]) == (False, False)
    assert snap["mdns_instances"] == [adv.instance_name]
    assert adv.instance_name == f"Desk-PC-{info.fingerprint[:8]}.{SERVICE_TYPE}"


@requires_loopback_multicast
async def test_a_node_does_not_list_itself(nodes: NodeFactory) -> None:
    mine, other = advert_info("me"), advert_info("other")
    _, my_registry = await nodes(advertise=mine)
    await nodes(advertise=other, browse=False)
    await until(my_registry, lambda: other.fingerprint in my_registry, "the other node")
    assert mine.fingerprint not in my_registry


@requires_loopback_multicast
async def test_lane_changes_reach_the_browser(nodes: NodeFactory) -> None:
    _, registry = await nodes()
    info = advert_info()
    adv, _ = await nodes(advertise=info, browse=False)
    await until(registry, lambda: info.fingerprint in registry, "the advert")

    adv.update_lane(False, None)
    await until(registry, lambda: not peer(registry, info.fingerprint).idle, "idle=0")
    assert peer(registry, info.fingerprint).idle_since is None

    later = 1_700_000_100.25
    adv.update_lane(True, later)
    await until(registry, lambda: peer(registry, info.fingerprint).idle, "idle=1")
    assert peer(registry, info.fingerprint).claimed_idle_since == later

    # Busy again: the same lane state as two steps ago must still be seen as a change.
    adv.update_lane(False, None)
    await until(registry, lambda: not peer(registry, info.fingerprint).idle, "idle=0 again")


@requires_loopback_multicast
async def test_toolchain_changes_reach_the_browser(nodes: NodeFactory) -> None:
    _, registry = await nodes()
    info = advert_info(provisions=True)
    adv, _ = await nodes(advertise=info, browse=False)
    await until(registry, lambda: info.fingerprint in registry, "the advert")
    assert peer(registry, info.fingerprint).provisions
    assert peer(registry, info.fingerprint).toolchains == ()

    adv.update_advert(toolchains=["2026.5.1", "2026.4.0"])  # one became ready
    await until(
        registry,
        lambda: peer(registry, info.fingerprint).toolchains == ("2026.5.1", "2026.4.0"),
        "tc after provisioning",
    )
    sent = adv.updates_sent
    adv.update_advert(toolchains=["2026.5.1", "2026.4.0"])  # nothing changed: no update
    adv.update_advert(toolchains=["2026.5.1"])  # swept
    await until(
        registry, lambda: peer(registry, info.fingerprint).toolchains == ("2026.5.1",), "swept"
    )
    assert adv.updates_sent == sent + 1


@requires_loopback_multicast
async def test_a_burst_of_lane_changes_is_coalesced_and_the_last_state_wins(
    nodes: NodeFactory,
) -> None:
    _, registry = await nodes()
    info = advert_info()
    adv, _ = await nodes(advertise=info, browse=False)
    await until(registry, lambda: info.fingerprint in registry, "the advert")
    updates: list[PeerChange] = []
    registry.add_listener(
        lambda c: updates.append(c) if c.fingerprint == info.fingerprint else None
    )

    base = 1_700_001_000.0
    for i in range(20):
        idle = i % 2 == 1
        adv.update_lane(idle, base + i if idle else None)
        await asyncio.sleep(0.01)
    final = base + 19  # i = 19: idle

    await until(
        registry,
        lambda: peer(registry, info.fingerprint).claimed_idle_since == final,
        "the final lane state",
    )
    # One leading update at most, then one carrying the newest state: never 20.
    assert 1 <= adv.updates_sent <= 3
    assert 1 <= len(updates) <= 3
    # Nothing further is on its way: the publisher is idle with the last state sent.
    await asyncio.sleep(1.5)
    assert adv.updates_sent <= 3
    assert peer(registry, info.fingerprint).claimed_idle_since == final


@requires_loopback_multicast
async def test_goodbye_removes_the_peer(nodes: NodeFactory) -> None:
    _, registry = await nodes()
    info = advert_info()
    adv, _ = await nodes(advertise=info, browse=False)
    await until(registry, lambda: info.fingerprint in registry, "the advert")
    removed: list[PeerChange] = []
    registry.add_listener(removed.append)
    await adv.stop()
    await until(registry, lambda: info.fingerprint not in registry, "the goodbye")
    assert PeerChange(ChangeKind.REMOVED, info.fingerprint) in removed


@requires_loopback_multicast
async def test_a_silent_peer_goes_stale_after_its_ttl(nodes: NodeFactory) -> None:
    """No goodbye (crash, partition): expired records + an unanswered re-query remove it."""
    _, registry = await nodes(stale_check_interval=0.5)
    f = random_fingerprint()
    zc = AsyncZeroconf(interfaces=[LOOPBACK])
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"silent-{f[:8]}.{SERVICE_TYPE}",
        port=7420,
        properties={"fp": f, "proto": "1"},
        parsed_addresses=[LOOPBACK],
        host_ttl=3,
        other_ttl=3,
    )
    try:
        await (await zc.async_register_service(info))
        await until(registry, lambda: f in registry, "the advert")
        # Alive past several TTLs: each expiry is answered by a re-query.
        await asyncio.sleep(7)
        assert f in registry
        zc.zeroconf.registry.async_remove(info)  # stops answering, sends no goodbye
        await until(registry, lambda: f not in registry, "staleness")
    finally:
        await zc.async_close()


@requires_loopback_multicast
async def test_goodbye_keeps_a_static_peer(nodes: NodeFactory) -> None:
    _, registry = await nodes()
    info = advert_info()
    adv, _ = await nodes(advertise=info, browse=False)
    await until(registry, lambda: info.fingerprint in registry, "the advert")
    registry.add_static(info.fingerprint, "127.0.0.1:7420")
    await adv.stop()
    await until(registry, lambda: not peer(registry, info.fingerprint).mdns_instances, "goodbye")
    assert peer(registry, info.fingerprint).sources == ("static",)


@requires_loopback_multicast
async def test_hostile_adverts_are_dropped_without_exceptions(
    nodes: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    caplog.set_level(logging.WARNING, logger="meshd.mesh.peering.discovery")
    _, registry = await nodes()

    bad_fp = random_fingerprint()
    hostile: dict[str, dict[str, str]] = {
        "no-fp": {"proto": "1", "name": "nofp"},
        "bad-fp": {"fp": "zz" * 32, "proto": "1"},
        "bad-proto": {"fp": random_fingerprint(), "proto": "1e3"},
        "neg-since": {"fp": random_fingerprint(), "proto": "1", "idle": "1", "idle_since": "-5"},
        "huge-since": {
            "fp": random_fingerprint(),
            "proto": "1",
            "idle": "1",
            "idle_since": "9" * 40,
        },
        "bad-idle": {"fp": random_fingerprint(), "proto": "1", "idle": "yes"},
        "huge-name": {"fp": random_fingerprint(), "proto": "1", "name": "n" * 200},
        "huge-txt": {"fp": bad_fp, "proto": "1", **{f"pad{i}": "x" * 240 for i in range(6)}},
    }
    good_fp = random_fingerprint()
    # An odd toolchain hint loses the hint (logged once), not the advert.
    odd_fp = random_fingerprint()
    odd = {"fp": odd_fp, "proto": "1", "prov": "maybe", "tc": "2026.5.1,$(reboot)"}
    zc = AsyncZeroconf(interfaces=[LOOPBACK])
    infos = [
        AsyncServiceInfo(
            SERVICE_TYPE,
            f"{label}-{secrets.token_hex(3)}.{SERVICE_TYPE}",
            port=7420,
            properties=txt,
            parsed_addresses=[LOOPBACK],
        )
        for label, txt in [
            *hostile.items(),
            ("good", {"fp": good_fp, "proto": "1"}),
            ("odd", odd),
        ]
    ]
    try:
        registrations = [await zc.async_register_service(i) for i in infos]
        await asyncio.gather(*registrations)
        await until(registry, lambda: good_fp in registry, "the well-formed advert")
        await until(registry, lambda: odd_fp in registry, "the advert with odd hints")
        # The browser resolves in parallel: give the others until every one is logged.
        expected = len(hostile) + 2  # and the odd advert's two reasons
        async with asyncio.timeout(WAIT):
            while sum("ignoring mDNS advert" in r.message for r in caplog.records) < expected:
                await asyncio.sleep(0.05)
        odd_peer = peer(registry, odd_fp)
        listed = list(registry.fingerprints())
    finally:
        for info in infos:
            await (await zc.async_unregister_service(info))
        await zc.async_close()

    hostile_fps = {txt["fp"] for txt in hostile.values() if "fp" in txt}
    assert good_fp in listed and not hostile_fps & set(listed)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert loop_errors == []
    bad_logs = [r.message for r in caplog.records if "ignoring mDNS advert" in r.message]
    assert len(bad_logs) == expected  # once each, although announced three times
    assert (odd_peer.provisions, odd_peer.toolchains) == (False, ("2026.5.1",))


@requires_loopback_multicast
async def test_registry_cap_holds_against_an_advert_flood(nodes: NodeFactory) -> None:
    """A LAN advertising more services than the cap fills the registry, never past it."""
    registry = Registry(max_peers=3)
    browser = Discovery(registry, interfaces=[LOOPBACK])
    await browser.start()
    zc = AsyncZeroconf(interfaces=[LOOPBACK])
    infos = [
        AsyncServiceInfo(
            SERVICE_TYPE,
            f"flood{i}-{secrets.token_hex(3)}.{SERVICE_TYPE}",
            port=7420,
            properties={"fp": random_fingerprint(), "proto": "1"},
            parsed_addresses=[LOOPBACK],
        )
        for i in range(8)
    ]
    try:
        registrations = [await zc.async_register_service(i) for i in infos]
        await asyncio.gather(*registrations)
        await until(registry, lambda: len(registry) == 3, "a full registry")
        await asyncio.sleep(1.0)  # the remaining adverts arrive and are refused
        assert len(registry) == 3
    finally:
        for info in infos:
            await (await zc.async_unregister_service(info))
        await zc.async_close()
        await browser.stop()


# -- multi-host: namespaces on a bridge ----------------------------------------------------


TTL = 10
"""Record TTL in the netns test: short so a partition shows within about TTL + 2 s
(staleness sweep every 2 s) + the 3 s re-query; a live peer answers the re-query."""


class NodeProc:
    """One tests/mesh/discovery_node.py inside a host namespace."""

    def __init__(self, prefix: list[str], ip: str, name: str, log_dir: Path) -> None:
        self.fp = random_fingerprint()
        self.name = name
        self.stderr_path = log_dir / f"{name}.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tests.mesh.discovery_node", "--ip", ip,
             "--name", name, "--fp", self.fp, "--ttl", str(TTL), "--stale-check", "2"],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True,
        )  # fmt: skip
        self.peers: dict[str, dict[str, Any]] = {}
        self.ready = False
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def wait(self, predicate: Callable[[NodeProc], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            try:
                message = self._lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                message = None if remaining <= 0 else {}
            if message is None:
                pytest.fail(
                    f"{self.name}: timed out or exited waiting for {what}; peers: "
                    f"{self.peers}; stderr: {self.stderr_path.read_text()[-2000:]}"
                )
            if message.get("event") == "ready":
                self.ready = True
            elif message.get("event") == "peers":
                self.peers = {p["fingerprint"]: p for p in message["peers"]}

    def hold(self, seconds: float) -> None:
        """Keep consuming updates for ``seconds`` (state is then checked by the caller)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                message = self._lines.get(timeout=remaining)
            except queue.Empty:
                return
            if message is not None and message.get("event") == "peers":
                self.peers = {p["fingerprint"]: p for p in message["peers"]}

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send(cmd="stop")
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self._reader.join(timeout=5)
            self._stderr.close()


@pytest.fixture
def bridged_nodes(tmp_path: Path) -> Iterator[tuple[Any, list[NodeProc]]]:
    reason = netns_permitted()
    if reason is not None:
        pytest.skip(reason)
    with mesh_net(3) as net:
        procs: list[NodeProc] = []
        try:
            for i in range(3):
                procs.append(NodeProc(net.exec_prefix(i), net.address(i), f"node{i}", tmp_path))
            yield net, procs
        finally:
            for proc in procs:
                proc.close()
    assert net.leftovers() == []


@pytest.mark.slow
@pytest.mark.netns
@pytest.mark.timeout(240)
def test_discovery_crosses_a_bridge_and_a_partition_goes_stale(
    bridged_nodes: tuple[Any, list[NodeProc]],
) -> None:
    net, (a, b, c) = bridged_nodes
    for node in (a, b, c):
        node.wait(lambda n: n.ready, "registration", WAIT)
    for node in (a, b, c):
        others = {o.fp for o in (a, b, c) if o is not node}
        node.wait(lambda n, o=others: o <= set(n.peers), "the other two nodes", WAIT)
    assert b.peers[a.fp]["addresses"] == [f"{net.address(0)}:7420"]
    assert c.peers[a.fp]["addresses"] == [f"{net.address(0)}:7420"]
    assert b.peers[a.fp]["name"] == "node0"

    # Records are refreshed before their TTL runs out: still listed after 1.5 TTLs.
    b.hold(TTL * 1.5)
    assert a.fp in b.peers and c.fp in b.peers

    # A lane change crosses the bridge.
    a.send(cmd="lane", idle=False, idle_since=None)
    b.wait(lambda n: not n.peers[a.fp]["idle"], "node0 busy", WAIT)

    # Partition: node0's switch port goes down; no goodbye can reach anyone. Its SRV/TXT
    # records expire (TTL), the staleness sweep re-queries, nobody answers: removed.
    net.partition(0)
    b.wait(lambda n: a.fp not in n.peers, "node0 to go stale", TTL + 30)
    c.wait(lambda n: a.fp not in n.peers, "node0 to go stale", TTL + 30)
    assert c.fp in b.peers, "the rest of the mesh stays"

    # Healing alone does not bring it back (nobody queries for a record it forgot);
    # node0's next announcement (any lane change) does.
    net.heal(0)
    a.send(cmd="lane", idle=True, idle_since=1_700_000_200.0)
    b.wait(lambda n: a.fp in n.peers and n.peers[a.fp]["idle"], "node0 back", WAIT)
    assert b.peers[a.fp]["claimed_idle_since"] == 1_700_000_200.0
