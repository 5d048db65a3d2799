"""Fixtures for the link tests: identities, trust stores, and a harness that starts
servers and sessions on 127.0.0.1 only and fails the test if anything is left running."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshd.link import LinkServer, LinkSession, SessionConfig, connect
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.trust import TrustStore

LOOPBACK = "127.0.0.1"

# Short timings so heartbeat and timeout tests finish quickly; still far above the
# scheduling noise of a shared 2-core machine.
FAST = SessionConfig(heartbeat_interval=0.2, dead_after=3.0, request_timeout=5.0)


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()


@pytest.fixture
def mallory() -> Identity:
    return Identity.generate()


@pytest.fixture
def store_a(tmp_path: Path) -> Iterator[TrustStore]:
    with TrustStore.open(tmp_path / "a") as store:
        yield store


@pytest.fixture
def store_b(tmp_path: Path) -> Iterator[TrustStore]:
    with TrustStore.open(tmp_path / "b") as store:
        yield store


class Harness:
    """Starts link servers/clients and loopback helpers; ``aclose`` tears all down."""

    def __init__(self) -> None:
        self.servers: list[LinkServer] = []
        self.sessions: list[LinkSession] = []
        self.raw_servers: list[asyncio.Server] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def server(self, identity: Identity, **kwargs: Any) -> LinkServer:
        kwargs.setdefault("authorize", lambda candidate: True)
        kwargs.setdefault("config", FAST)
        server = LinkServer(identity, **kwargs)
        await server.start(LOOPBACK, 0)
        self.servers.append(server)
        return server

    async def connect(self, identity: Identity, port: int, **kwargs: Any) -> LinkSession:
        kwargs.setdefault("authorize", lambda candidate: True)
        kwargs.setdefault("config", FAST)
        session = await connect(LOOPBACK, port, identity, **kwargs)
        self.sessions.append(session)
        return session

    async def raw_server(self, callback: Any) -> int:
        """A plain asyncio server on loopback (for misbehaving peers and proxies)."""

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            task = asyncio.current_task()
            assert task is not None
            self.tasks.append(task)
            await callback(reader, writer)

        server = await asyncio.start_server(tracked, LOOPBACK, 0)
        self.raw_servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.append(task)
        return task

    async def aclose(self) -> None:
        for session in self.sessions:
            await session.close()
        for server in self.servers:
            await server.close()
        for writer in self.writers:
            writer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for raw in self.raw_servers:
            raw.close()
            await raw.wait_closed()
        # Let transports finish closing, then insist nothing of ours is still running.
        for _ in range(20):
            leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if not leftover:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"tasks left running: {leftover}")


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        await h.aclose()
