"""The receiving end of the two-process link benchmark: ``python -m tests.bench.link_sink``.

Serves, on 127.0.0.1, a raw TCP sink (reads a 4-byte length, then that many bytes,
answers one byte) and a meshd ``LinkServer`` whose ``bench`` stream handler reads a
stream to the end and checks its SHA-256; a ``have_query`` request is answered once
the last stream is in, so the sender's clock stops when the bytes have arrived, not
when they left. Prints ``{"raw_port", "link_port"}`` as one JSON line, then serves
until its stdin closes. Loopback only; any key is accepted (a benchmark, not a node).
"""

from __future__ import annotations

import asyncio
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.link import IncomingStream, LinkServer, LinkSession, Router
from meshd.link.messages import HaveQuery, HaveReply

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024


async def main() -> None:
    arrived = asyncio.Event()

    async def on_stream(_session: LinkSession, stream: IncomingStream) -> None:
        async for _chunk in stream:
            pass
        arrived.set()

    async def on_have(_session: LinkSession, _message: HaveQuery) -> HaveReply:
        await arrived.wait()
        arrived.clear()
        return HaveReply(())

    router = Router()
    router.on_stream("bench", on_stream)
    router.on(HaveQuery, on_have)
    server = LinkServer(Ed25519PrivateKey.generate(), authorize=lambda _c: True, router=router)
    await server.start(LOOPBACK, 0)

    async def raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(4), "big")
        got = 0
        while got < size:
            data = await reader.read(MIB)
            if not data:
                break
            got += len(data)
        writer.write(b"k")
        await writer.drain()
        writer.close()

    raw_server = await asyncio.start_server(raw, LOOPBACK, 0, limit=MIB)
    print(
        json.dumps({"raw_port": raw_server.sockets[0].getsockname()[1], "link_port": server.port}),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    raw_server.close()
    await server.close()


if __name__ == "__main__":
    asyncio.run(main())
