"""A stranger without the code cannot close, burn or block a pairing window.

Every attacker here is a real pairing-mode peer on loopback, connecting from its own
address (127.0.0.2 and up: Linux routes all of 127/8 to lo), running the real
``pair_join`` with a wrong code. The operator's joiner comes from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import meshd.link.server as link_server
from meshd.link import CloseReason, Mode
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.pairing import (
    MAX_FAILURES,
    PairingCode,
    PairingError,
    PairingReceiver,
    fingerprint_prefix,
    pair_join,
    source_of,
)
from meshd.mesh.security.trust import TrustStore
from tests.support.clock import FakeClock as Clock

from .conftest import LOOPBACK, Harness


@contextlib.contextmanager
def connecting_from(source: str) -> Iterator[None]:
    """Make the link's outgoing connections start from ``source`` (a loopback alias)."""
    original = asyncio.open_connection

    def open_from(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("local_addr", (source, 0))
        return original(*args, **kwargs)

    link_server.asyncio.open_connection = open_from  # type: ignore[assignment]
    try:
        yield
    finally:
        link_server.asyncio.open_connection = original  # type: ignore[assignment]


def wrong_code(code: PairingCode, n: int) -> PairingCode:
    secret = "".join("abcdefgh"[(n >> (3 * i)) % 8] for i in range(12))
    if secret == code.secret:
        secret = "z" * 12
    return PairingCode(code.prefix, secret)


async def start(
    harness: Harness, bob: Identity, store_b: TrustStore, **kwargs: Any
) -> tuple[int, PairingReceiver, PairingCode, Clock]:
    clock = Clock()
    receiver = PairingReceiver(bob, store_b, name="desktop", clock=clock, **kwargs)
    server = await harness.server(
        bob,
        authorize=store_b.authorizer(),
        pairing=receiver.allow_handshake,
        pairing_router=receiver.router,
    )
    return server.port, receiver, receiver.open(ttl=3600), clock


async def test_a_strangers_wrong_codes_neither_close_nor_block_the_window(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    store_a: TrustStore,
    store_b: TrustStore,
    tmp_path: Any,
) -> None:
    port, receiver, code, clock = await start(harness, bob, store_b)
    with TrustStore.open(tmp_path / "m") as store_m:
        # Far more guesses than MAX_FAILURES, waiting out each backoff: before, the
        # fifth closed the window for everyone.
        for n in range(MAX_FAILURES + 3):
            with connecting_from("127.0.0.2"), pytest.raises(PairingError):
                await pair_join(LOOPBACK, port, wrong_code(code, n), mallory, store_m)
            clock.now += 60
        assert store_m.list() == []
    assert receiver.is_open
    assert receiver.failures == MAX_FAILURES  # the rest were refused before any check
    # No clock advance: the stranger's backoff is his, not the joiner's.
    peer = await pair_join(LOOPBACK, port, code, alice, store_a, name="pi")
    assert peer.fingerprint == bob.fingerprint_hex
    assert store_b.get(alice.fingerprint) is not None
    assert store_b.get(mallory.fingerprint) is None


async def test_a_joiner_who_mistypes_right_after_a_stranger_is_not_delayed(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    store_a: TrustStore,
    store_b: TrustStore,
    tmp_path: Any,
) -> None:
    port, _receiver, code, clock = await start(harness, bob, store_b)
    with (
        TrustStore.open(tmp_path / "m") as store_m,
        connecting_from("127.0.0.2"),
        pytest.raises(PairingError, match="wrong pairing code"),
    ):
        await pair_join(LOOPBACK, port, wrong_code(code, 1), mallory, store_m)
    with pytest.raises(PairingError, match="wrong pairing code"):
        await pair_join(LOOPBACK, port, wrong_code(code, 2), alice, store_a)  # a typo
    clock.now += 1.5  # the joiner's own first backoff (1 s), not the stranger's
    await pair_join(LOOPBACK, port, code, alice, store_a)
    assert store_b.get(alice.fingerprint) is not None


async def test_many_addresses_get_a_bounded_number_of_guesses(
    harness: Harness,
    alice: Identity,
    bob: Identity,
    mallory: Identity,
    store_a: TrustStore,
    store_b: TrustStore,
    tmp_path: Any,
) -> None:
    """The secret check is rate-limited for all sources together: past the burst a
    proof is refused *before* the secret is compared, so even the right code is, and
    nothing is counted; once the bucket refills the right code works."""
    port, receiver, code, clock = await start(harness, bob, store_b, guess_rate=0.5, guess_burst=3)
    with TrustStore.open(tmp_path / "m") as store_m:
        for n in range(3):
            with connecting_from(f"127.0.0.{10 + n}"), pytest.raises(PairingError, match="wrong"):
                await pair_join(LOOPBACK, port, wrong_code(code, n), mallory, store_m)
        for n in range(3, 8):
            with connecting_from(f"127.0.0.{10 + n}"), pytest.raises(PairingError, match="many"):
                await pair_join(LOOPBACK, port, wrong_code(code, n), mallory, store_m)
    assert receiver.failures == 3 and receiver.is_open
    with pytest.raises(PairingError, match="too many pairing attempts"):
        await pair_join(LOOPBACK, port, code, alice, store_a)
    assert store_b.get(alice.fingerprint) is None
    clock.now += 2.0  # one guess back at 0.5/s
    await pair_join(LOOPBACK, port, code, alice, store_a)
    assert store_b.get(alice.fingerprint) is not None


async def test_sessions_that_never_prove_anything_count_for_nothing(
    harness: Harness, alice: Identity, bob: Identity, mallory: Identity, store_b: TrustStore
) -> None:
    port, receiver, _code, _clock = await start(harness, bob, store_b)
    prefix = fingerprint_prefix(bob.fingerprint)
    with connecting_from("127.0.0.2"):
        for _ in range(MAX_FAILURES * 2):
            session = await harness.connect(
                mallory,
                port,
                mode=Mode.PAIRING,
                authorize=lambda c: fingerprint_prefix(c.fingerprint) == prefix,
            )
            await session.close(CloseReason.GOING_AWAY)
    assert receiver.is_open and receiver.failures == 0


async def test_refusals_from_one_address_are_logged_once_per_interval(
    harness: Harness,
    bob: Identity,
    mallory: Identity,
    store_b: TrustStore,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port, _receiver, code, _clock = await start(harness, bob, store_b, max_failures=1)
    with TrustStore.open(tmp_path / "m") as store_m, connecting_from("127.0.0.2"):
        for n in range(20):
            with pytest.raises(PairingError):
                await pair_join(LOOPBACK, port, wrong_code(code, n), mallory, store_m)
    refusals = [
        r
        for r in caplog.records
        if r.name == "meshd.mesh.security.pairing" and "refused" in r.getMessage()
    ]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]
    assert all(r.levelno <= logging.WARNING for r in caplog.records)


def test_source_is_the_address_and_an_ipv6_64() -> None:
    assert source_of("192.168.1.7:40000") == "192.168.1.7"
    assert source_of("::ffff:192.168.1.7:40000") == "192.168.1.7"
    assert source_of("2001:db8:1:2:aaaa::1:40000") == "2001:db8:1:2::/64"
    assert source_of("[2001:db8:1:2:bbbb::9]:40000") == "2001:db8:1:2::/64"
    assert source_of("::1:5555") == "::/64"
    assert source_of(None) == "unknown"
