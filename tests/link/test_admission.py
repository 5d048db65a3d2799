"""Strangers on the peer port: per-source and total caps on handshaking connections,
tried with a real LinkServer on loopback and clients bound to different 127.0.0.x
source addresses (two "hosts"), plus the bookkeeping and log limiter on their own."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshd.link import LinkServer, expect_fingerprint
from meshd.link.admission import MAX_HANDSHAKING, MAX_HANDSHAKING_PER_SOURCE, Admission, LogLimiter
from meshd.link.messages import HaveQuery
from meshd.mesh.security.identity import Identity

from .conftest import LOOPBACK, Harness

STRANGER = "127.0.0.2"
# Long enough that no stranger's connection times out while the test runs: what lets
# the trusted peer in must be the caps, not the clock.
PATIENT = 120.0


async def open_from(harness: Harness, source: str, port: int) -> asyncio.StreamReader:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0))
    harness.writers.append(writer)
    return reader


async def trusted_peer_works(harness: Harness, alice: Identity, server: LinkServer) -> None:
    session = await harness.connect(alice, server.port)
    assert session.peer.trusted
    # A request nobody handles is answered (UNSUPPORTED): the session is really up.
    with pytest.raises(Exception, match="unsupported"):
        await session.request(HaveQuery(()))


async def until_closed_count(readers: list[asyncio.StreamReader], count: int) -> set[int]:
    """Indexes of the readers the server hung up on, once ``count`` of them are."""
    reads = {asyncio.ensure_future(r.read()): i for i, r in enumerate(readers)}
    closed: set[int] = set()
    try:
        async with asyncio.timeout(30):  # safety net only
            pending = set(reads)
            while len(closed) < count:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    assert task.result() == b""  # the server said nothing, it hung up
                    closed.add(reads[task])
        return closed
    finally:
        for task in reads:
            task.cancel()
        await asyncio.gather(*reads, return_exceptions=True)


async def test_256_idle_sockets_from_one_host_leave_room_for_a_trusted_peer(
    harness: Harness, alice: Identity, bob: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshd.link.server")
    server = await harness.server(
        bob, authorize=expect_fingerprint(alice.fingerprint), handshake_timeout=PATIENT
    )
    readers = [await open_from(harness, STRANGER, server.port) for _ in range(256)]
    refused = await until_closed_count(readers, 256 - MAX_HANDSHAKING_PER_SOURCE)
    # The first eight are the ones still waiting for a handshake; the rest were refused.
    assert refused == set(range(MAX_HANDSHAKING_PER_SOURCE, 256))
    assert server._admission.held_by(STRANGER) == MAX_HANDSHAKING_PER_SOURCE
    await trusted_peer_works(harness, alice, server)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 2, [r.getMessage() for r in warnings]
    assert STRANGER in warnings[0].getMessage()


async def test_a_flood_from_many_hosts_still_lets_a_trusted_peer_in(
    harness: Harness, alice: Identity, bob: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshd.link.server")
    server = await harness.server(
        bob, authorize=expect_fingerprint(alice.fingerprint), handshake_timeout=PATIENT
    )
    sources = [f"127.0.0.{10 + i}" for i in range(MAX_HANDSHAKING + 20)]
    readers = [await open_from(harness, source, server.port) for source in sources]
    # Past the total cap each newcomer displaced the oldest stranger: 20 were dropped.
    dropped = await until_closed_count(readers, 20)
    assert dropped == set(range(20))
    assert len(server._admission) == MAX_HANDSHAKING
    await trusted_peer_works(harness, alice, server)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 2


async def test_strangers_that_complete_a_handshake_are_refused_and_forgotten(
    harness: Harness, alice: Identity, bob: Identity, mallory: Identity
) -> None:
    """Full handshakes by an untrusted key cost the server nothing that lasts."""
    from meshd.link import TrustRefused

    server = await harness.server(bob, authorize=expect_fingerprint(alice.fingerprint))
    for _ in range(3 * MAX_HANDSHAKING_PER_SOURCE):
        with pytest.raises(TrustRefused):
            await harness.connect(mallory, server.port)
    assert len(server._admission) == 0 and not server.sessions
    await trusted_peer_works(harness, alice, server)


# -- the bookkeeping on its own ---------------------------------------------------------


def test_admission_caps_one_source() -> None:
    book: Admission[int] = Admission(per_source=2, total=10)
    assert book.admit(1, "a") == (True, None)
    assert book.admit(2, "a") == (True, None)
    assert book.admit(3, "a") == (False, None)
    assert book.admit(4, "b") == (True, None)
    book.release(1, "a")
    book.release(1, "a")  # idempotent
    assert book.admit(5, "a") == (True, None)
    assert len(book) == 3 and book.held_by("a") == 2


def test_admission_displaces_the_busiest_sources_oldest() -> None:
    book: Admission[int] = Admission(per_source=3, total=4)
    for conn, source in [(1, "a"), (2, "a"), (3, "b"), (4, "a")]:
        assert book.admit(conn, source) == (True, None)
    # Full: a newcomer from c (holding none) displaces a's oldest connection.
    assert book.admit(5, "c") == (True, 1)
    assert book.held_by("a") == 2 and len(book) == 4
    # b holds one, a two: b's newcomer displaces a's next oldest.
    assert book.admit(6, "b") == (True, 2)
    # Now a, b and c hold 1, 2, 1: a newcomer from b is the busiest itself and waits.
    assert book.admit(7, "b") == (False, None)
    assert sorted(book.connections()) == [3, 4, 5, 6]


def test_admission_rejects_nonsense_caps() -> None:
    with pytest.raises(ValueError, match="per_source"):
        Admission(per_source=5, total=4)


def test_log_limiter_speaks_once_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    limiter = LogLimiter(60.0, max_keys=2, clock=lambda: now[0])
    assert limiter.allow("x") == 0
    assert [limiter.allow("x") for _ in range(5)] == [None] * 5
    now[0] = 61.0
    assert limiter.allow("x") == 5
    assert limiter.allow("y") == 0
    assert limiter.allow("z") == 0  # x is forgotten: memory stays bounded
    assert limiter.allow("x") == 0
