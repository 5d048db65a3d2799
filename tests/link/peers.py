"""Misbehaving peers for the loopback tests: a frame-aware proxy and a silent peer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.link.connection import Connection, PeerAuthenticated, Role
from meshd.link.errors import CloseReason
from meshd.link.server import run_handshake

from .conftest import LOOPBACK, Harness

# Client-to-server frame indexes: 0 = HS1, 1 = HS3, 2.. = sealed session frames.
FIRST_SESSION_FRAME = 2

# mutate(index, frame) -> (bytes to forward, then half-close the server side?)
Mutator = Callable[[int, bytes], tuple[bytes, bool]]


async def frame_proxy(harness: Harness, target_port: int, mutate: Mutator) -> int:
    """A loopback proxy that forwards whole frames client->server through ``mutate``
    and copies server->client bytes unchanged. Returns its port."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(LOOPBACK, target_port)

        async def c2s() -> None:
            index = 0
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    prefix = await client_r.readexactly(4)
                    body = await client_r.readexactly(int.from_bytes(prefix, "big"))
                    out, half_close = mutate(index, prefix + body)
                    index += 1
                    server_w.write(out)
                    await server_w.drain()
                    if half_close:
                        server_w.write_eof()
                        return
            server_w.close()

        async def s2c() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await server_r.read(65536):
                    client_w.write(data)
                    await client_w.drain()
            client_w.close()

        try:
            await asyncio.gather(c2s(), s2c())
        finally:
            server_w.close()
            client_w.close()

    return await harness.raw_server(handle)


async def accept_all(_peer: PeerAuthenticated) -> tuple[CloseReason, str] | None:
    return None


async def silent_server(harness: Harness, key: Ed25519PrivateKey) -> int:
    """A responder that completes the handshake and then never says a word again."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(Role.RESPONDER, key)
        await run_handshake(conn, reader, writer, accept_all)
        await asyncio.sleep(3600)  # cancelled by the harness

    return await harness.raw_server(handle)
