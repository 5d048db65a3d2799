#!/usr/bin/env python3
"""Micro-benchmark of the peer link on loopback, against a raw TCP copy in the same run.

    python tests/bench/bench_link.py [--size-mib 64] [--rounds 3] [--handshakes 40]

Measures, side by side and alternating so machine noise hits both alike:

* raw: an asyncio stream server reading and discarding N bytes written in 256 KiB
  pieces with drain(): the ceiling for anything built on asyncio streams;
* link: ``LinkSession.send_stream`` of the same N bytes to a ``LinkServer`` stream
  handler (ChaCha20-Poly1305 per frame, msgpack, SHA-256 on both ends, flow control);
* handshake: TCP connect + full handshake + first hello, and the sans-IO handshake
  alone (CPU cost without sockets).

Raw and link are each measured twice: with both ends in this process (one event loop,
so every byte's work shares one interpreter) and with the receiving end in a child
process (``--child``), which is how two meshd daemons really talk. The child reports
each finished transfer on stdout; the clock stops when the parent reads that line.

Prints a table and writes tests/bench/results/link.json. Talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from meshd.link import IncomingStream, LinkServer, LinkSession, Router, connect  # noqa: E402
from meshd.link.limits import DEFAULT_CHUNK_SIZE  # noqa: E402
from tests.support.connection_pair import ConnectionPair  # noqa: E402

LOOPBACK = "127.0.0.1"
RESULTS = Path(__file__).resolve().parent / "results" / "link.json"
MIB = 1024 * 1024
# The raw copy's write size, fixed so the baseline is the same whatever the link's
# chunk size is.
RAW_WRITE = 256 * 1024


class Sample(NamedTuple):
    """One transfer: wall seconds, and CPU seconds of each end (process, loop thread).

    In one process both ends are the same process: ``receiver_*`` are then zero and
    ``sender_*`` hold the cost of both ends.
    """

    seconds: float
    sender_cpu: float
    sender_loop_cpu: float
    receiver_cpu: float = 0.0
    receiver_loop_cpu: float = 0.0


class Clock:
    """Wall and CPU time of one transfer, from ``Clock()`` to ``stop()``.

    CPU per MiB is what a transfer costs and hardly depends on what else the shared
    machine runs; wall-clock throughput does. Process CPU counts every thread (hashing
    runs on worker threads); the loop thread's CPU is what serialises on the event loop.
    """

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.proc = time.process_time()
        self.thread = time.thread_time()

    def stop(self) -> tuple[float, float, float]:
        """(wall seconds, process CPU seconds, loop-thread CPU seconds)."""
        return (
            time.perf_counter() - self.wall,
            time.process_time() - self.proc,
            time.thread_time() - self.thread,
        )


async def raw_copy(payload: bytes) -> Sample:
    """Move ``payload`` over a plain asyncio TCP connection inside this process."""
    done = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        while got < len(payload):
            data = await reader.read(MIB)
            if not data:
                break
            got += len(data)
        done.set_result(got)
        writer.close()

    server = await asyncio.start_server(sink, LOOPBACK, 0, limit=MIB)
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=MIB)
        view = memoryview(payload)
        clock = Clock()
        for i in range(0, len(view), RAW_WRITE):
            writer.write(view[i : i + RAW_WRITE])
            await writer.drain()
        got = await done
        sample = Sample(*clock.stop())
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    if got != len(payload):
        raise RuntimeError("raw copy lost bytes")
    return sample


async def link_copy(payload: bytes, server: LinkServer, client_key: Ed25519PrivateKey) -> Sample:
    """Stream ``payload`` over a link session to a server in this process."""
    session = await connect(LOOPBACK, server.port, client_key, authorize=lambda c: True)
    try:
        clock = Clock()
        digest = await session.send_stream(payload, kind="bench")
        got, received_digest = await RECEIVED.get()
        sample = Sample(*clock.stop())
    finally:
        await session.close()
    if got != len(payload) or received_digest != digest:
        raise RuntimeError("link copy lost or changed bytes")
    return sample


RECEIVED: asyncio.Queue[tuple[int, bytes | None]]


class Child:
    """The receiving end in its own process: a raw sink and a link server (``--child``)."""

    def __init__(self, proc: asyncio.subprocess.Process, raw_port: int, link_port: int) -> None:
        self.proc = proc
        self.raw_port = raw_port
        self.link_port = link_port

    @classmethod
    async def start(cls, hash_thread: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            "--hash-thread",
            hash_thread,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        ports = json.loads(await proc.stdout.readline())
        return cls(proc, ports["raw"], ports["link"])

    async def report(self) -> list[str]:
        """The child's next line: ``raw <bytes> <cpu> <loop cpu>`` or
        ``link <bytes> <sha256 hex> <cpu> <loop cpu>``."""
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark child exited")
        return line.decode().split()

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            async with asyncio.timeout(10):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def raw_copy_child(payload: bytes, child: Child) -> Sample:
    """Move ``payload`` over plain TCP to the child process."""
    _reader, writer = await asyncio.open_connection(LOOPBACK, child.raw_port, limit=MIB)
    view = memoryview(payload)
    clock = Clock()
    for i in range(0, len(view), RAW_WRITE):
        writer.write(view[i : i + RAW_WRITE])
        await writer.drain()
    writer.write_eof()
    report = await child.report()
    seconds, proc, thread = clock.stop()
    writer.close()
    await writer.wait_closed()
    if report[:2] != ["raw", str(len(payload))]:
        raise RuntimeError(f"raw copy to the child lost bytes: {report}")
    return Sample(seconds, proc, thread, float(report[2]), float(report[3]))


async def link_copy_child(payload: bytes, child: Child, client_key: Ed25519PrivateKey) -> Sample:
    """Stream ``payload`` over a link session to the child process."""
    session = await connect(LOOPBACK, child.link_port, client_key, authorize=lambda c: True)
    try:
        clock = Clock()
        digest = await session.send_stream(payload, kind="bench")
        report = await child.report()
        seconds, proc, thread = clock.stop()
    finally:
        await session.close()
    if report[:3] != ["link", str(len(payload)), digest.hex()]:
        raise RuntimeError(f"link copy to the child lost or changed bytes: {report}")
    return Sample(seconds, proc, thread, float(report[3]), float(report[4]))


async def child_main() -> None:
    """Receiver process: serve until stdin closes, one stdout line per finished transfer."""

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = 0
        clock = Clock()
        while data := await reader.read(MIB):
            got += len(data)
        _, proc, thread = clock.stop()
        say(f"raw {got} {proc} {thread}")
        writer.close()

    async def link_sink(_session: LinkSession, stream: IncomingStream) -> None:
        got = 0
        clock = Clock()
        async for chunk in stream:
            got += len(chunk)
        _, proc, thread = clock.stop()
        assert stream.digest is not None
        say(f"link {got} {stream.digest.hex()} {proc} {thread}")

    router = Router()
    router.on_stream("bench", link_sink)
    raw_server = await asyncio.start_server(sink, LOOPBACK, 0, limit=MIB)
    link_server = LinkServer(Ed25519PrivateKey.generate(), authorize=lambda c: True, router=router)
    await link_server.start(LOOPBACK, 0)
    say(json.dumps({"raw": raw_server.sockets[0].getsockname()[1], "link": link_server.port}))
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    try:
        await stdin.read()  # EOF: the parent is done
    finally:
        await link_server.close()
        raw_server.close()
        await raw_server.wait_closed()


async def bench_sink(_session: LinkSession, stream: IncomingStream) -> None:
    got = 0
    async for chunk in stream:
        got += len(chunk)
    await RECEIVED.put((got, stream.digest))


def sans_io_handshake() -> float:
    """Seconds for one in-memory handshake (both sides' CPU work, no sockets)."""
    start = time.perf_counter()
    ConnectionPair().handshake()
    return time.perf_counter() - start


def summarise(size_mib: int, samples: list[Sample]) -> dict[str, Any]:
    """Best throughput of the rounds, and median CPU milliseconds per MiB of each end."""

    def per_mib(values: list[float]) -> float:
        return round(statistics.median(values) * 1000 / size_mib, 3)

    return {
        "mib_s": round(size_mib / min(s.seconds for s in samples), 1),
        "mib_s_all": [round(size_mib / s.seconds, 1) for s in samples],
        "sender_cpu_ms_per_mib": per_mib([s.sender_cpu for s in samples]),
        "sender_loop_cpu_ms_per_mib": per_mib([s.sender_loop_cpu for s in samples]),
        "receiver_cpu_ms_per_mib": per_mib([s.receiver_cpu for s in samples]),
        "receiver_loop_cpu_ms_per_mib": per_mib([s.receiver_loop_cpu for s in samples]),
    }


def set_hash_thread(choice: str) -> bool | None:
    """Force stream hashing onto the worker thread ("on") or the loop ("off"); "auto"
    leaves meshd's choice (by CPU count). None: this tree hashes on the loop only."""
    try:
        from meshd.link import hashing
    except ImportError:  # a tree from before meshd.link.hashing
        return None
    if choice != "auto":
        hashing.OFFLOAD = choice == "on"
    return hashing.OFFLOAD


async def run(size_mib: int, rounds: int, handshakes: int, hash_thread: str) -> dict[str, Any]:
    global RECEIVED
    RECEIVED = asyncio.Queue()
    payload = os.urandom(size_mib * MIB)
    router = Router()
    router.on_stream("bench", bench_sink)
    server_key, client_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    server = LinkServer(server_key, authorize=lambda c: True, router=router)
    await server.start(LOOPBACK, 0)
    child = await Child.start(hash_thread)
    samples: dict[str, list[Sample]] = {"raw": [], "link": [], "raw_2p": [], "link_2p": []}
    connect_times: list[float] = []
    try:
        await link_copy(payload[: 4 * MIB], server, client_key)  # warm-up
        await link_copy_child(payload[: 4 * MIB], child, client_key)
        for _ in range(rounds):
            samples["raw"].append(await raw_copy(payload))
            samples["link"].append(await link_copy(payload, server, client_key))
            samples["raw_2p"].append(await raw_copy_child(payload, child))
            samples["link_2p"].append(await link_copy_child(payload, child, client_key))
        for _ in range(handshakes):
            start = time.perf_counter()
            session = await connect(LOOPBACK, server.port, client_key, authorize=lambda c: True)
            connect_times.append(time.perf_counter() - start)
            await session.close()
    finally:
        await server.close()
        await child.stop()
    sans_io = [sans_io_handshake() for _ in range(handshakes)]
    modes = {key: summarise(size_mib, values) for key, values in samples.items()}
    return {
        "size_mib": size_mib,
        "rounds": rounds,
        "chunk_kib": DEFAULT_CHUNK_SIZE // 1024,
        "hash_thread": set_hash_thread(hash_thread),
        # one process, one event loop: both ends share an interpreter
        "raw_mib_s": modes["raw"]["mib_s"],
        "link_mib_s": modes["link"]["mib_s"],
        "ratio_link_over_raw": round(modes["link"]["mib_s"] / modes["raw"]["mib_s"], 3),
        # two processes: the receiver in a child, as between two daemons
        "raw_2p_mib_s": modes["raw_2p"]["mib_s"],
        "link_2p_mib_s": modes["link_2p"]["mib_s"],
        "ratio_2p_link_over_raw": round(modes["link_2p"]["mib_s"] / modes["raw_2p"]["mib_s"], 3),
        "modes": modes,
        "handshake_connect_ms_median": round(statistics.median(connect_times) * 1000, 2),
        "handshake_connect_ms_p90": round(statistics.quantiles(connect_times, n=10)[-1] * 1000, 2)
        if len(connect_times) >= 2
        else None,
        "handshake_sans_io_ms_median": round(statistics.median(sans_io) * 1000, 2),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "note": "shared machine, throughput is noisy (best of rounds); CPU is the median",
        },
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"meshd peer link on loopback ({result['size_mib']} MiB, best of"
        f" {result['rounds']}, {result['chunk_kib']} KiB chunks,"
        f" hash thread {'on' if result['hash_thread'] else 'off'})"
    )
    table.add_column("measure")
    table.add_column("one process", justify="right")
    table.add_column("two processes", justify="right")
    table.add_row("raw TCP copy", f"{result['raw_mib_s']} MiB/s", f"{result['raw_2p_mib_s']} MiB/s")
    table.add_row(
        "link stream", f"{result['link_mib_s']} MiB/s", f"{result['link_2p_mib_s']} MiB/s"
    )
    table.add_row(
        "ratio link / raw",
        f"{result['ratio_link_over_raw']:.2f}",
        f"{result['ratio_2p_link_over_raw']:.2f}",
    )
    modes = result["modes"]
    for name, one, two in (("raw", "raw", "raw_2p"), ("link", "link", "link_2p")):
        table.add_row(
            f"{name}: CPU ms/MiB, both ends",
            f"{modes[one]['sender_cpu_ms_per_mib']}",
            f"{modes[two]['sender_cpu_ms_per_mib']} + {modes[two]['receiver_cpu_ms_per_mib']}",
        )
        table.add_row(
            f"{name}: loop-thread CPU ms/MiB",
            f"{modes[one]['sender_loop_cpu_ms_per_mib']}",
            f"{modes[two]['sender_loop_cpu_ms_per_mib']}"
            f" + {modes[two]['receiver_loop_cpu_ms_per_mib']}",
        )
    table.add_row("connect + handshake (median)", f"{result['handshake_connect_ms_median']} ms", "")
    table.add_row("connect + handshake (p90)", f"{result['handshake_connect_ms_p90']} ms", "")
    table.add_row("sans-IO handshake (median)", f"{result['handshake_sans_io_ms_median']} ms", "")
    Console().print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--handshakes", type=int, default=40)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--hash-thread",
        choices=("auto", "on", "off"),
        default="auto",
        help="stream SHA-256 on a worker thread (default: meshd's choice by CPU count)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    set_hash_thread(args.hash_thread)
    if args.child:
        asyncio.run(child_main())
        return {}
    result = asyncio.run(run(args.size_mib, args.rounds, args.handshakes, args.hash_thread))
    report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
