"""The control API's connection gate on a real aiohttp server over loopback sockets.

Small caps and short timeouts make each rule visible; tests/daemon/test_api_hardening.py
floods a real ``meshd serve`` with the shipped values.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp import web

from meshd.api.connections import ConnectionGate, LogThrottle


@dataclass
class Served:
    gate: ConnectionGate
    port: int
    release: asyncio.Event


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    gate = ConnectionGate(per_source=4, total=6, first_request_timeout=0.5, idle_timeout=0.5)
    release = asyncio.Event()

    async def quick(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def hold(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="released")

    app = web.Application(middlewares=[gate.middleware()])
    app.add_routes([web.get("/quick", quick), web.get("/hold", hold)])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    assert runner.server is not None
    gate.install(runner.server)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Served(gate, port, release)
    finally:
        release.set()
        await runner.cleanup()


async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True once the server has closed (EOF or reset); waits at most a few seconds."""
    try:
        async with asyncio.timeout(5):
            return await reader.read(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def get(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str) -> bytes:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


async def _wait_for(condition: object, what: str) -> None:
    for _ in range(100):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}")


async def test_a_silent_connection_is_closed(served: Served) -> None:
    reader, writer = await open_from("127.0.0.2", served.port)
    assert await closed_by_server(reader)
    writer.close()
    assert served.gate.timed_out == 1


async def test_headers_dripped_slowly_are_cut_off(served: Served) -> None:
    reader, writer = await open_from("127.0.0.2", served.port)
    writer.write(b"GET /quick HTTP/1.1\r\n")
    await writer.drain()
    dripping = asyncio.ensure_future(_drip(writer))
    try:
        assert await closed_by_server(reader)
    finally:
        dripping.cancel()
        writer.close()


async def _drip(writer: asyncio.StreamWriter) -> None:
    for _ in range(100):
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(0.1)


async def test_idle_after_a_request_is_closed_but_a_used_connection_works(served: Served) -> None:
    reader, writer = await open_from("127.0.0.2", served.port)
    assert await get(writer, reader, "/quick") == b"ok"
    assert await get(writer, reader, "/quick") == b"ok"  # keep-alive within the idle time
    assert await closed_by_server(reader)
    writer.close()


async def test_idle_flood_from_one_source_evicts_its_oldest_never_locks_it_out(
    served: Served,
) -> None:
    served.gate.first_request_timeout = 60  # only eviction may close these here
    flood = [await open_from("127.0.0.2", served.port) for _ in range(10)]
    await _wait_for(lambda: served.gate.evicted >= 6, "the oldest idle ones are evicted")
    assert served.gate.open_connections <= served.gate.per_source
    # The first six were evicted, the newest four are held.
    assert all([await closed_by_server(r) for r, _ in flood[:6]])
    assert served.gate.timed_out == 0
    # A real client from the same address still gets in (it evicts an idle one).
    reader, writer = await open_from("127.0.0.2", served.port)
    assert await get(writer, reader, "/quick") == b"ok"
    for _, w in [*flood, (reader, writer)]:
        w.close()


async def test_busy_connections_are_kept_and_the_newcomer_refused(served: Served) -> None:
    busy = []
    for _ in range(served.gate.per_source):
        reader, writer = await open_from("127.0.0.2", served.port)
        writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        busy.append((reader, writer))
    await _wait_for(
        lambda: sum(c.active for c in served.gate._connections.values()) == 4, "all four busy"
    )
    reader, writer = await open_from("127.0.0.2", served.port)
    assert await closed_by_server(reader)
    assert served.gate.refused == 1
    # Another source is not affected by this one's cap.
    other_r, other_w = await open_from("127.0.0.3", served.port)
    assert await get(other_w, other_r, "/quick") == b"ok"
    served.release.set()
    for r, _ in busy:
        assert b"released" in await r.read(4096)
    for _, w in [*busy, (reader, writer), (other_r, other_w)]:
        w.close()


async def test_total_cap_evicts_from_the_busiest_source(served: Served) -> None:
    served.gate.first_request_timeout = 60
    conns = [await open_from("127.0.0.2", served.port) for _ in range(4)]
    conns += [await open_from("127.0.0.3", served.port) for _ in range(2)]
    await _wait_for(lambda: served.gate.open_connections == 6, "six admitted")
    reader, writer = await open_from("127.0.0.4", served.port)
    assert await get(writer, reader, "/quick") == b"ok"
    assert served.gate.open_connections <= served.gate.total
    assert await closed_by_server(conns[0][0])  # the oldest of the busiest source
    assert served.gate.timed_out == 0 and served.gate.evicted == 1
    for _, w in [*conns, (reader, writer)]:
        w.close()


def test_log_throttle_keeps_one_line_per_interval_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    throttle = LogThrottle(logging.getLogger("t"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        for _ in range(1000):
            throttle.warning("k", "refused %s", "127.0.0.2")
        now[0] += 61
        throttle.warning("k", "refused %s", "127.0.0.2")
    assert [r.getMessage() for r in caplog.records] == [
        "refused 127.0.0.2",
        "refused 127.0.0.2 (999 more like it in the last 60 s)",
    ]


def test_loopback_aliases_exist() -> None:
    """The tests above connect from 127.0.0.2-4: Linux routes all of 127/8 to lo."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.4", 0))
