"""Trust refusals and pairing over loopback: good codes pair, bad ones never do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meshd.link import (
    CloseReason,
    ErrorCode,
    LinkSession,
    Mode,
    RequestFailed,
    Router,
    TrustRefused,
    expect_fingerprint,
)
from meshd.link.connection import Connection, Role
from meshd.link.messages import CompileAccept, CompileRequest
from meshd.link.server import LinkServer
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.pairing import (
    MAX_FAILURES,
    PREFIX_CHARS,
    PairingCode,
    PairingError,
    PairingReceiver,
    fingerprint_prefix,
    pair_join,
)
from meshd.mesh.security.trust import Permission, TrustStore
from tests.support.clock import FakeClock

from .conftest import LOOPBACK, Harness


async def receiver_server(
    harness: Harness,
    bob: Identity,
    store_b: TrustStore,
    clock: FakeClock | None = None,
    router: Router | None = None,
) -> tuple[LinkServer, PairingReceiver]:
    receiver = PairingReceiver(bob, store_b, name="desktop", clock=clock or FakeClock())
    server = await harness.server(
        bob,
        authorize=store_b.authorizer(),
        pairing=receiver.allow_handshake,
        pairing_router=receiver.router,
        router=router,
    )
    return server, receiver


def answer_hs1_then_record(impostor: Identity, record: list[bytes]) -> Any:
    """A responder with the impostor's key: answers HS1 with a valid HS2, then records
    every byte the client sends afterwards (HS3 would carry its identity)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.RESPONDER, impostor.private_key)
        prefix = await reader.readexactly(4)
        conn.receive_data(prefix + await reader.readexactly(int.from_bytes(prefix, "big")))
        conn.next_event()
        writer.write(conn.data_to_send())
        await writer.drain()
        record.append(await reader.read())

    return handle


# -- plain trust ---------------------------------------------------------------------


async def test_untrusted_key_is_refused(
    harness: Harness, alice: Identity, bob: Identity, store_b: TrustStore
) -> None:
    handled: list[LinkSession] = []

    async def on_session(session: LinkSession) -> None:
        handled.append(session)

    server = await harness.server(bob, authorize=store_b.authorizer(), on_session=on_session)
    with pytest.raises(TrustRefused) as info:
        await harness.connect(alice, server.port)
    assert info.value.reason is CloseReason.UNTRUSTED and info.value.by_peer
    assert "not trusted" in str(info.value)
    assert handled == [] and server.sessions == frozenset()
    # Once trusted, the same key gets in.
    store_b.add(alice.fingerprint, may_send_work=True)
    session = await harness.connect(alice, server.port)
    assert session.peer.trusted and not session.closed


async def test_client_refuses_unexpected_server_key_before_revealing_itself(
    harness: Harness, alice: Identity, bob: Identity, mallory: Identity
) -> None:
    """Mallory answers at Bob's address; the client hangs up after HS2, so Mallory
    never receives HS3 (the client's identity) or anything after it."""
    received_after_hs1: list[bytes] = []
    port = await harness.raw_server(answer_hs1_then_record(mallory, received_after_hs1))
    with pytest.raises(TrustRefused) as info:
        await harness.connect(alice, port, authorize=expect_fingerprint(bob.fingerprint))
    assert not info.value.by_peer  # our own authorizer said no
    await asyncio.sleep(0.3)
    assert received_after_hs1 == [b""]


# -- pairing -------------------------------------------------------------------------


async def test_pairing_makes_both_sides_trust_each_other(
    harness: Harness, alice: Identity, bob: Identity, store_a: TrustStore, store_b: TrustStore
) -> None:
    server, receiver = await receiver_server(harness, bob, store_b)
    code = receiver.open()
    assert str(code).count("-") == 7
    peer = await pair_join(LOOPBACK, server.port, str(code).lower(), alice, store_a, name="pi")
    assert peer.fingerprint == bob.fingerprint_hex and peer.name == "desktop"
    assert peer.may_build_for_me and not peer.may_send_work
    assert peer.addresses == (f"{LOOPBACK}:{server.port}",)
    joiner = store_b.get(alice.fingerprint)
    assert joiner is not None and joiner.may_send_work and not joiner.may_build_for_me
    assert joiner.name == "pi" and joiner.public_key == alice.public_key
    assert not receiver.is_open  # one use
    # Now a normal session works, each side checking the role it needs.
    session = await harness.connect(
        alice, server.port, authorize=store_a.authorizer(Permission.BUILD_FOR_ME)
    )
    assert session.peer.trusted


async def test_wrong_secret_is_refused_rate_limited_and_logged(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    store_a: TrustStore,
    store_b: TrustStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    server, receiver = await receiver_server(harness, bob, store_b, clock)
    code = receiver.open()
    wrong = PairingCode(code.prefix, "a" * 12 if code.secret != "a" * 12 else "b" * 12)
    with pytest.raises(PairingError, match="wrong pairing code"):
        await pair_join(LOOPBACK, server.port, wrong, alice, store_a)
    assert "wrong pairing code" in caplog.text
    # Immediately again: refused at the handshake by the backoff, even with the right code.
    with pytest.raises(PairingError, match="refused"):
        await pair_join(LOOPBACK, server.port, code, alice, store_a)
    assert store_a.list() == [] and store_b.list() == []
    # After the backoff the right code still works (a typo is not fatal).
    clock.now += 10
    await pair_join(LOOPBACK, server.port, code, alice, store_a)
    assert store_b.get(alice.fingerprint) is not None


async def test_too_many_wrong_codes_shut_that_address_out(
    harness: Harness, alice: Identity, bob: Identity, store_a: TrustStore, store_b: TrustStore
) -> None:
    """The window stays open for others (tests/link/test_pairing_abuse.py); this
    address, having guessed MAX_FAILURES times, may not try again in this window."""
    clock = FakeClock()
    server, receiver = await receiver_server(harness, bob, store_b, clock)
    code = receiver.open()
    for i in range(MAX_FAILURES):
        wrong = PairingCode(code.prefix, f"{i:0>12}".replace("0", "a").replace("1", "b"))
        with pytest.raises(PairingError):
            await pair_join(LOOPBACK, server.port, wrong, alice, store_a)
        clock.now += 20  # past each backoff (1, 2, 4, 8, 16 s), within the window
    assert receiver.is_open and receiver.failures == MAX_FAILURES
    with pytest.raises(PairingError) as info:
        await pair_join(LOOPBACK, server.port, code, alice, store_a)
    assert info.value.reason is CloseReason.PAIRING_CLOSED
    assert store_b.list() == []


async def test_expired_code_is_refused(
    harness: Harness, alice: Identity, bob: Identity, store_a: TrustStore, store_b: TrustStore
) -> None:
    clock = FakeClock()
    server, receiver = await receiver_server(harness, bob, store_b, clock)
    code = receiver.open(ttl=300)
    clock.now += 301
    with pytest.raises(PairingError) as info:
        await pair_join(LOOPBACK, server.port, code, alice, store_a)
    assert info.value.reason is CloseReason.PAIRING_CLOSED
    assert store_a.list() == [] and store_b.list() == []


async def test_used_code_is_refused(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    store_a: TrustStore,
    store_b: TrustStore,
) -> None:
    server, receiver = await receiver_server(harness, bob, store_b)
    code = receiver.open()
    await pair_join(LOOPBACK, server.port, code, alice, store_a)
    with pytest.raises(PairingError):
        await pair_join(LOOPBACK, server.port, code, mallory, store_a)
    assert store_b.get(mallory.fingerprint) is None


async def test_code_for_another_receiver_sends_nothing(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    store_a: TrustStore,
    store_b: TrustStore,
) -> None:
    server, receiver = await receiver_server(harness, bob, store_b)
    receiver.open()
    other = PairingCode.new(mallory.fingerprint)
    with pytest.raises(PairingError, match="does not match"):
        await pair_join(LOOPBACK, server.port, other, alice, store_a)
    assert receiver.is_open  # the receiver saw no proof at all, so no failure counted
    assert store_b.list() == []


async def test_man_in_the_middle_swapping_the_receiver_key_learns_nothing(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    store_a: TrustStore,
    store_b: TrustStore,
) -> None:
    """Mallory sits between joiner and receiver: she relays the joiner to the real
    receiver only after terminating the link herself with her own key. The joiner checks
    her key against the code's prefix, hangs up after HS2, and Mallory gets neither the
    joiner's identity nor a proof she could relay."""
    server, receiver = await receiver_server(harness, bob, store_b)
    code = receiver.open()
    captured: list[bytes] = []

    port = await harness.raw_server(answer_hs1_then_record(mallory, captured))
    with pytest.raises(PairingError, match="does not match"):
        await pair_join(LOOPBACK, port, code, alice, store_a)
    await asyncio.sleep(0.3)
    assert captured == [b""]
    assert receiver.is_open and store_b.list() == [] and store_a.list() == []
    # The genuine receiver still pairs with the same code afterwards.
    await pair_join(LOOPBACK, server.port, code, alice, store_a)
    assert store_a.get(bob.fingerprint) is not None


async def test_pairing_session_carries_no_job_messages(
    harness: Harness, alice: Identity, bob: Identity, store_b: TrustStore
) -> None:
    called: list[CompileRequest] = []

    async def compile_handler(_s: LinkSession, m: CompileRequest) -> CompileAccept:
        called.append(m)
        return CompileAccept(m.job_id)

    router = Router()
    router.on(CompileRequest, compile_handler)
    receiver = PairingReceiver(bob, store_b)
    receiver.open()
    server = await harness.server(
        bob, authorize=store_b.authorizer(), pairing=receiver.allow_handshake, router=router
    )
    prefix = fingerprint_prefix(bob.fingerprint)
    session = await harness.connect(
        alice,
        server.port,
        mode=Mode.PAIRING,
        authorize=lambda c: fingerprint_prefix(c.fingerprint) == prefix,
    )
    assert not session.peer.trusted
    with pytest.raises(RequestFailed) as info:
        await session.request(CompileRequest("j", "a.yaml", "1", b"d" * 32, 1))
    assert info.value.code == ErrorCode.FORBIDDEN
    assert called == []


def test_code_format_and_parsing(bob: Identity) -> None:
    code = PairingCode.new(bob.fingerprint)
    assert len(code.prefix) == PREFIX_CHARS and code.matches(bob.fingerprint)
    assert PairingCode.parse(str(code)) == code
    assert PairingCode.parse(str(code).replace("-", " ").lower()) == code
    for bad in ("", "abcd", str(code) + "A", str(code).replace(str(code)[0], "1", 1)):
        with pytest.raises(PairingError):
            PairingCode.parse(bad)
