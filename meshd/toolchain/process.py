"""Run a child in its own process group, stream its lines, and kill the whole group.

esphome spawns PlatformIO which spawns compilers; killing only the direct child would
leave them running. So every child gets ``start_new_session=True`` and a cancel sends
SIGTERM to the group, waits a grace period, then SIGKILL. The caller's
``CancelledError`` is always re-raised once the group is gone.

If the daemon itself dies (SIGKILL, OOM, power button), the direct child is killed
by the kernel at once (Linux ``PR_SET_PDEATHSIG``): an ``esphome upload`` must not go
on flashing a device for a daemon that can no longer record the outcome or learn that
the user cancelled it meanwhile. Whatever else the group left is killed by the next
start (``meshd.jobs.orphans``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Long enough for esphome/PlatformIO to write their state files on SIGTERM, short
# enough that a cancel in the UI feels immediate.
DEFAULT_KILL_GRACE = 5.0

# Tool output lines longer than this are cut: a runaway line must not grow memory.
MAX_LINE = 64 * 1024
READ_CHUNK = 64 * 1024
# Lines kept for a failure's message: enough to show a compiler error and its context.
TAIL_LINES = 40
# How long the output pipe may stay open after the leader exited, before the group is
# killed (and again before a pipe held outside the group is abandoned).
OUTPUT_LINGER = 2.0
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _find_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(ctypes.util.find_library("c")).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _find_prctl()


def _die_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with process ``parent`` (None off Linux)."""
    prctl = _PRCTL
    if prctl is None:
        return None

    def die_with_parent() -> None:
        # Runs in the child between fork and exec: one C call, no Python-level locks.
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return die_with_parent


@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    tail: tuple[str, ...]
    """The last lines of output, for error messages."""


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _terminate(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the group, then SIGKILL whatever is left after ``grace`` seconds."""
    pgid = proc.pid  # start_new_session makes the child its group leader
    _kill_group(pgid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    # Grandchildren may outlive the leader; the group id stays valid while any live.
    _kill_group(pgid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


async def run_process(
    argv: Sequence[str],
    *,
    on_line: Callable[[str], None],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    kill_grace: float = DEFAULT_KILL_GRACE,
    tail_lines: int = TAIL_LINES,
    on_start: Callable[[int], None] | None = None,
) -> ProcessResult:
    """Run ``argv`` to completion, calling ``on_line`` for each line of stdout+stderr.

    Raises ``FileNotFoundError`` when the program does not exist. On cancellation the
    whole process group is terminated before ``CancelledError`` propagates.
    """
    # The output pipe is ours, not asyncio's: ``Process.wait()`` on a PIPE waits for the
    # pipe to close too, so a grandchild holding it would hide the leader's exit.
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=_die_with(os.getpid()),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    if on_start is not None:
        on_start(proc.pid)
    tail: deque[str] = deque(maxlen=tail_lines)

    def emit(piece: bytes) -> None:
        line = piece.decode("utf-8", "replace")
        tail.append(line)
        on_line(line)

    try:
        reader, transport = await _open_reader(read_fd)
    except BaseException:
        await asyncio.shield(_terminate(proc, kill_grace))
        raise
    try:
        returncode = await _read_until_exit(proc, reader, emit)
    except BaseException:
        await asyncio.shield(_terminate(proc, kill_grace))
        raise
    finally:
        transport.close()
    # The leader exited; anything it left behind in its group is an orphan of ours.
    _kill_group(proc.pid, signal.SIGKILL)
    return ProcessResult(returncode=returncode, tail=tuple(tail))


async def _open_reader(read_fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    """A stream over the read end of the child's output pipe (owned from here on)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 * READ_CHUNK, loop=loop)
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return reader, transport


async def _pump(stdout: asyncio.StreamReader, emit: Callable[[bytes], None]) -> None:
    """Split the child's output into lines until the pipe closes."""
    pending = b""
    while chunk := await stdout.read(READ_CHUNK):
        # Progress bars redraw with a bare \r; each redraw is a line of its own,
        # as ESPHome's dashboard treats them, so OTA percentages stream live.
        pieces = _LINE_BREAK.split(pending + chunk)
        pending = pieces.pop()
        for piece in pieces:
            if piece:
                emit(piece)
        while len(pending) > MAX_LINE:
            emit(pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
    if pending:
        emit(pending)


async def _read_until_exit(
    proc: asyncio.subprocess.Process,
    stdout: asyncio.StreamReader,
    emit: Callable[[bytes], None],
) -> int:
    """Stream output until the leader exits and the pipe closes; return its exit code.

    A grandchild that outlives the leader while holding the pipe (a PlatformIO helper,
    a compiler server) would otherwise keep the job running forever after the tool
    itself finished. So once the leader is gone the pipe gets ``OUTPUT_LINGER`` seconds
    to drain, then the group is killed, and a pipe still held by something that left
    the group is abandoned.
    """
    pump = asyncio.ensure_future(_pump(stdout, emit))
    exited = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait((pump, exited), return_when=asyncio.FIRST_COMPLETED)
        if pump.done() and pump.exception() is not None:
            # The line handler failed (the job log hit a full disk): stop the tool now
            # rather than let it block on a pipe nobody reads any more.
            await pump
        returncode = await exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump), OUTPUT_LINGER)
        if not pump.done():
            _kill_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(pump), OUTPUT_LINGER)
        await _settle(pump)
        return returncode
    finally:
        for task in (pump, exited):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)


async def _settle(pump: asyncio.Future[None]) -> None:
    """Finish ``pump`` now: wait for it if it ended, else stop reading an abandoned pipe."""
    if pump.done():
        await pump  # re-raises a failure of the reader itself
        return
    pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump
