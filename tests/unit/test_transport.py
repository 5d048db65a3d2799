"""The CLI's HTTP transport against real sockets on loopback: good answers and bad ones.

A raw asyncio server writes exactly the bytes each test gives it, so framing the real
daemon never produces (EOF mid-body, garbage, a flood) is exercised too: each must
end in a ``TransportError`` or a complete answer, never a hang or another exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from meshd.api import transport
from meshd.api.transport import Origin, TransportError

CONNECT = 5.0


@asynccontextmanager
async def serving(answer: bytes | Callable[[bytes], bytes]) -> AsyncIterator[Origin]:
    """A one-shot HTTP server on 127.0.0.1 that answers every request with ``answer``."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head)
        writer.write(answer(head) if callable(answer) else answer)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Origin("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()


async def _get(origin: Origin, target: str = "/x") -> transport.Response:
    return await transport.request(origin, "GET", target, connect_timeout=CONNECT)


async def test_content_length_answer_and_the_request_it_answered() -> None:
    seen: list[bytes] = []

    def answer(head: bytes) -> bytes:
        seen.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async with serving(answer) as origin:
        response = await transport.request(
            origin,
            "GET",
            "/api/v1/status",
            headers=[("Authorization", "Bearer t")],
            connect_timeout=CONNECT,
        )
    assert (response.status, response.body) == (200, b"{}")
    head = seen[0].decode()
    assert head.startswith("GET /api/v1/status HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{origin.port}" in head.lower()
    assert "authorization: bearer t" in head.lower()
    assert "connection: close" in head.lower()


async def test_chunked_answer_streams_lines() -> None:
    body = b"5\r\nab\ncd\r\n4\r\n\nef\n\r\n1\r\ng\r\n0\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with (
        serving(answer) as o,
        transport.stream(o, "GET", "/log", connect_timeout=CONNECT) as (head, chunks),
    ):
        assert head.status_code == 200
        got = [line async for line in transport.lines(chunks, max_line=100)]
    assert got == [b"ab", b"cd", b"ef", b"g"]


async def test_an_overlong_line_is_cut_not_buffered_forever() -> None:
    async with (
        serving(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789") as o,
        transport.stream(o, "GET", "/log", connect_timeout=CONNECT) as (_head, chunks),
    ):
        got = [line async for line in transport.lines(chunks, max_line=4)]
    assert b"".join(got) == b"0123456789" and max(map(len, got)) <= 4


async def test_error_status_is_an_answer() -> None:
    answer = b'HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\n{"error":1}'
    async with serving(answer) as origin:
        response = await _get(origin)
    assert (response.status, response.reason, response.body) == (404, "Not Found", b'{"error":1}')


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"", id="closed-before-answering"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", id="eof-mid-body"),
        pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", id="bad-length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"
        ),
    ],
)
async def test_broken_answers_are_transport_errors(answer: bytes) -> None:
    async with serving(answer) as origin:
        with pytest.raises(TransportError):
            await _get(origin)


async def test_an_answer_beyond_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "MAX_RESPONSE_BYTES", 1000)
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    async with serving(answer) as origin:
        with pytest.raises(TransportError, match="larger than 1000 bytes"):
            await _get(origin)


async def test_nothing_listening_is_a_transport_error() -> None:
    server = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(TransportError):
        await _get(Origin("127.0.0.1", port))


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://127.0.0.1:6055", Origin("127.0.0.1", 6055)),
        ("http://[::1]:6055/", Origin("::1", 6055)),
        ("http://box.lan/prefix/", Origin("box.lan", 80, "/prefix")),
    ],
)
def test_origin_parse(url: str, origin: Origin) -> None:
    assert Origin.parse(url) == origin


def test_origin_authority_brackets_ipv6() -> None:
    assert Origin("::1", 6055).authority == "[::1]:6055"


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:6055", "127.0.0.1:6055", "http://:80", "http://h:99999"]
)
def test_origin_refuses(url: str) -> None:
    with pytest.raises(TransportError):
        Origin.parse(url)
