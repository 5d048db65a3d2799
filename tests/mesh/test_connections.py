"""Connections (meshd/mesh/peering/connections.py) against real link servers on 127.0.0.1.

Each side is a real identity, trust store, registry and (where it accepts sessions) a
``LinkServer``; nothing is faked. A switchable TCP relay stands in for "the address
now answers with another key". Every test ends with nothing of the link or mesh left
running.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshd.address import AddressError, HostPort
from meshd.link import CloseReason, LinkServer, LinkSession, Router, SessionConfig
from meshd.mesh.peering.connections import Connections, DialTarget, SessionHooks
from meshd.mesh.peering.registry import MdnsAdvert, PeerRecord, Registry
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.trust import TrustStore
from tests.mesh.nodes import assert_no_mesh_tasks_left

LOOPBACK = "127.0.0.1"
WAIT = 30.0  # a safety net against hangs, not a speed assertion
FAST = SessionConfig(heartbeat_interval=0.2, dead_after=3.0, request_timeout=5.0)


class Side:
    """One node's peering: identity, trust, registry, Connections and maybe a server."""

    def __init__(
        self,
        root: Path,
        name: str,
        *,
        static: tuple[str, ...] = (),
        dial: bool = True,
    ) -> None:
        self.name = name
        self.identity = Identity.generate()
        self.trust = TrustStore.open(root / name)
        self.registry = Registry(
            is_trusted=lambda fp: self.trust.get(fp) is not None,
            own_fingerprint=self.fingerprint,
        )
        self.opened: list[LinkSession] = []
        self.closed: list[LinkSession] = []
        self.connecting_changes = 0
        self.connections = Connections(
            self.identity,
            self.trust,
            self.registry,
            Router(),
            SessionHooks(opened=self.opened.append, closed=self.closed.append),
            session_config=FAST,
            static_peers=static,
            dial=dial,
            on_connecting_change=self._count_change,
        )
        self.server: LinkServer | None = None

    def _count_change(self) -> None:
        self.connecting_changes += 1

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint_hex

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"{LOOPBACK}:{self.server.port}"

    async def listen(self) -> None:
        self.server = LinkServer(
            self.identity,
            authorize=self.trust.authorizer(),
            on_session=self.connections.accept,
            config=FAST,
        )
        await self.server.start(LOOPBACK, 0)

    def peer(self, fingerprint: str) -> PeerRecord | None:
        return self.registry.get(fingerprint)

    async def until(self, what: str, check: Callable[[], object]) -> None:
        async with asyncio.timeout(WAIT):
            while not check():
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.connections.stop()
        if self.server is not None:
            await self.server.close()
        self.trust.close()


class Relay:
    """A TCP relay on loopback whose destination can be switched between connections."""

    def __init__(self) -> None:
        self.target = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"{LOOPBACK}:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        writers = [writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            up_r, up_w = await asyncio.open_connection(LOOPBACK, self.target)
            writers.append(up_w)
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        except OSError:
            pass
        finally:
            self._tasks.discard(task)
            for each in writers:
                each.close()
                with contextlib.suppress(OSError):
                    await each.wait_closed()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def sides(tmp_path: Path) -> AsyncIterator[Callable[..., Side]]:
    """Make sides; stop them all at the end and insist nothing is left running."""
    made: list[Side] = []

    def make(name: str, **kwargs: object) -> Side:
        side = Side(tmp_path, name, **kwargs)  # type: ignore[arg-type]
        made.append(side)
        return side

    try:
        yield make
    finally:
        for side in made:
            await side.stop()
        await assert_no_mesh_tasks_left()


def trust_builder(side: Side, other: Side, *, address: bool = True) -> None:
    """``side`` may send configurations to ``other`` (it is ``side``'s receiver)."""
    side.trust.add(
        other.fingerprint,
        name=other.name,
        addresses=(other.address,) if address else (),
        may_send_work=False,
        may_build_for_me=True,
    )


def trust_sender(side: Side, other: Side) -> None:
    """``side`` accepts work from ``other`` (``side`` is ``other``'s receiver)."""
    side.trust.add(other.fingerprint, name=other.name, may_send_work=True)


def seen_by_mdns(side: Side, other: Side, *addresses: str) -> None:
    """``side``'s discovery saw ``other``'s advert (the registry then shows its errors)."""
    side.registry.mdns_seen(
        MdnsAdvert(
            instance=f"{other.name}-{other.fingerprint[:8]}._meshd._tcp.local.",
            fingerprint=other.fingerprint,
            name=other.name,
            protocol=1,
            esphome_version=None,
            accepts_builds=True,
            idle=True,
            idle_since=None,
            addresses=addresses,
        )
    )


# -- the dial target ---------------------------------------------------------------------


def test_a_dial_target_is_a_fingerprint_or_an_address() -> None:
    assert DialTarget.peer("ab" * 32).key == "ab" * 32
    assert DialTarget.static("[::1]:6056").address == HostPort("::1", 6056)
    assert DialTarget.static("[::1]:6056").key == "[::1]:6056"
    with pytest.raises(ValueError, match="not both"):
        DialTarget(fingerprint="ab" * 32, address=HostPort("h", 1))
    with pytest.raises(ValueError, match="not both"):
        DialTarget()
    with pytest.raises(AddressError, match="needs brackets"):
        DialTarget.static("::1:6056")


# -- dialling a trusted receiver -----------------------------------------------------------


async def test_dials_a_trusted_receiver_and_counts_it_connecting_until_introduced(
    sides: Callable[..., Side],
) -> None:
    pi, desk = sides("pi"), sides("desk", dial=False)
    await desk.listen()
    trust_sender(desk, pi)
    trust_builder(pi, desk)
    await pi.connections.start()
    assert pi.connections.connecting()  # from the first moment: compiles wait for it
    await pi.until("session", lambda: pi.connections.session_for(desk.fingerprint))
    info = pi.peer(desk.fingerprint)
    assert info is not None and info.connected and info.last_error is None
    assert pi.opened and pi.opened[0].peer.fingerprint_hex == desk.fingerprint
    # Connected, but not introduced yet (node_info + lane_status): still connecting.
    assert pi.connections.connecting()
    pi.connections.introduced(desk.fingerprint)
    assert not pi.connections.connecting()
    peer = pi.trust.get(desk.fingerprint)
    assert peer is not None and peer.addresses[0] == desk.address


async def test_refused_by_the_receiver_keeps_retrying_and_says_what_to_run_there(
    sides: Callable[..., Side],
) -> None:
    pi, desk = sides("pi"), sides("desk", dial=False)
    await desk.listen()  # desk has not run `meshd trust` for the Pi yet
    trust_builder(pi, desk, address=False)
    seen_by_mdns(pi, desk, desk.address)
    await pi.connections.start()

    def refused() -> bool:
        info = pi.peer(desk.fingerprint)
        return info is not None and f"meshd trust {pi.fingerprint}" in (info.last_error or "")

    await pi.until("refusal shown", refused)
    assert pi.connections.dialling() == {DialTarget.peer(desk.fingerprint)}  # still trying
    assert not pi.connections.connecting()  # its first attempt is over: do not hold compiles
    trust_sender(desk, pi)  # the operator runs it there
    await pi.until("session", lambda: pi.connections.session_for(desk.fingerprint))
    info = pi.peer(desk.fingerprint)
    assert info is not None and info.connected and info.last_error is None


async def test_a_spoofed_address_is_skipped_and_the_real_one_still_dialled(
    sides: Callable[..., Side],
) -> None:
    """An advert puts the trusted receiver at an address where another key answers
    (mallory): that address is skipped with back-off, and the receiver's real address
    is still dialled (docs/SECURITY.md, the mDNS-spoof case)."""
    pi, desk, mallory = sides("pi"), sides("desk", dial=False), sides("mallory", dial=False)
    await desk.listen()
    await mallory.listen()
    relay = Relay()
    await relay.start()
    try:
        relay.target = mallory.server.port  # type: ignore[union-attr]
        trust_sender(desk, pi)
        trust_sender(mallory, pi)
        pi.trust.add(desk.fingerprint, may_build_for_me=True)
        real = f"127.0.0.1:{desk.server.port}"  # type: ignore[union-attr]
        # The spoofed address is the newest, so it is tried first.
        seen_by_mdns(pi, desk, real)
        seen_by_mdns(pi, desk, relay.address)
        assert pi.registry.addresses(desk.fingerprint)[0] == relay.address
        await pi.connections.start()
        await pi.until("session", lambda: pi.connections.session_for(desk.fingerprint))
        assert relay.accepted == 1 and mallory.opened == []
        assert set(pi.registry.addresses(desk.fingerprint)) == {real, relay.address}
        # The session ends: the redial skips the backed-off spoofed address.
        session = pi.connections.session_for(desk.fingerprint)
        assert session is not None
        await session.close()
        await pi.until(
            "redialled", lambda: pi.connections.session_for(desk.fingerprint) not in (None, session)
        )
        assert relay.accepted == 1
    finally:
        await pi.connections.stop()
        await relay.close()


async def test_an_unreachable_or_malformed_address_is_shown_and_retried(
    sides: Callable[..., Side],
) -> None:
    pi, desk = sides("pi"), sides("desk", dial=False)
    pi.trust.add(desk.fingerprint, addresses=("not-an-address",), may_build_for_me=True)
    seen_by_mdns(pi, desk)  # an advert without a usable address: only the trust store's
    await pi.connections.start()

    def shown() -> bool:
        info = pi.peer(desk.fingerprint)
        return info is not None and "expected HOST:PORT" in (info.last_error or "")

    await pi.until("error shown", shown)
    assert pi.connections.dialling() == {DialTarget.peer(desk.fingerprint)}
    await desk.listen()
    trust_sender(desk, pi)
    pi.trust.update(desk.fingerprint, addresses=(desk.address,))
    pi.connections.trust_changed()  # also kicks the back-off
    await pi.until("session", lambda: pi.connections.session_for(desk.fingerprint))


async def test_trust_withdrawn_closes_the_session_and_nothing_is_left_behind(
    sides: Callable[..., Side],
) -> None:
    pi, desk = sides("pi"), sides("desk", dial=False)
    await desk.listen()
    trust_sender(desk, pi)
    trust_builder(pi, desk)
    await pi.connections.start()
    await pi.until("session", lambda: pi.connections.session_for(desk.fingerprint))
    session = pi.connections.session_for(desk.fingerprint)
    assert session is not None
    pi.trust.remove(desk.fingerprint)
    pi.connections.trust_changed()
    await pi.until("closed", lambda: session.closed)
    error = await session.wait_closed()
    assert error.reason is CloseReason.UNTRUSTED
    await pi.until("loop ended", lambda: not pi.connections.dialling())
    await pi.until("hook", lambda: session in pi.closed)
    # The fixture then stops every side and checks no task of ours is still running.


# -- static peers ------------------------------------------------------------------------


async def test_a_static_peer_is_learnt_in_the_handshake_then_checked(
    sides: Callable[..., Side], tmp_path: Path
) -> None:
    desk = sides("desk", dial=False)
    await desk.listen()
    pi = sides("pi", static=(desk.address,))
    trust_sender(desk, pi)
    await pi.connections.start()
    target = DialTarget.static(desk.address)

    def refused() -> bool:
        info = pi.peer(desk.fingerprint)
        return info is not None and f"meshd trust {desk.fingerprint}" in (info.last_error or "")

    # The Pi does not trust desk's key yet: the key enters the registry with the fix.
    await pi.until("refused here", refused)
    await pi.until("loop ended", lambda: target not in pi.connections.dialling())
    trust_builder(pi, desk, address=False)  # only the static address says where desk is
    pi.connections.trust_changed()
    await pi.until("session", lambda: pi.connections.session_for(desk.fingerprint))
    info = pi.peer(desk.fingerprint)
    assert info is not None and info.connected and info.trusted
    assert "static" in info.sources and desk.address in info.addresses


async def test_static_peers_are_dialled_even_without_dialling_by_fingerprint(
    sides: Callable[..., Side],
) -> None:
    desk = sides("desk", dial=False)
    await desk.listen()
    node = sides("node", static=(desk.address,), dial=False)
    trust_sender(desk, node)
    trust_builder(node, desk)
    await node.connections.start()
    await node.until("session", lambda: node.connections.session_for(desk.fingerprint))
    assert node.connections.dialling() == {DialTarget.static(desk.address)}


# -- one session per pair ------------------------------------------------------------------


async def test_both_sides_dialling_keep_one_session_and_no_error(
    sides: Callable[..., Side],
) -> None:
    a, b = sides("a"), sides("b")
    await a.listen()
    await b.listen()
    for side, other in ((a, b), (b, a)):
        side.trust.add(
            other.fingerprint,
            addresses=(other.address,),
            may_send_work=True,
            may_build_for_me=True,
        )
    await asyncio.gather(a.connections.start(), b.connections.start())

    def settled() -> bool:
        sa = a.connections.session_for(b.fingerprint)
        sb = b.connections.session_for(a.fingerprint)
        live = [s for s in (*a.opened, *b.opened) if not s.closed]
        return (
            sa is not None
            and sb is not None
            and sa.peer.session_id == sb.peer.session_id
            and len(live) == 2
        )

    await a.until("one session", settled)
    initiator, responder = (a, b) if a.fingerprint < b.fingerprint else (b, a)
    kept = initiator.connections.session_for(responder.fingerprint)
    assert kept is not None and kept.peer.address == responder.address  # the one it dialled
    for side, other in ((a, b), (b, a)):
        await side.until("registry", lambda s=side, o=other: s.peer(o.fingerprint).connected)  # type: ignore[union-attr]
        info = side.peer(other.fingerprint)
        assert info is not None and info.connected and info.last_error is None
