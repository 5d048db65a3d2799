"""What a test may not leave behind: asyncio tasks, timer handles, child processes.

Used by the autouse guard in tests/conftest.py (as aioesphomeapi's conftest does): a
test that leaks fails in its teardown with a list of what it left, instead of passing
and letting the leftover break a later test or linger after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is optional
    psutil = None

# Teardowns kill their processes, but signals land asynchronously: allow this long
# for the kernel to finish the job before calling a process leaked.
CHILD_EXIT_GRACE = 5.0


def pending_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[object]]:
    """Tasks of ``loop`` that have not finished, other than the caller's own."""
    current = asyncio.current_task(loop)
    return [task for task in asyncio.all_tasks(loop) if not task.done() and task is not current]


def pending_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """``call_later``/``call_at`` handles still due to run (not cancelled)."""
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])
    return [handle for handle in scheduled if not handle.cancelled()]


def child_pids() -> set[int]:
    """Live children (any depth) of this process, zombies included: both are leaks."""
    if psutil is not None:
        with contextlib.suppress(psutil.Error):
            return {child.pid for child in psutil.Process().children(recursive=True)}
    found: set[int] = set()
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                for text in children.read_text().split():
                    if int(text) not in found:
                        found.add(int(text))
                        todo.append(int(text))
    return found


def describe_process(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} [{state}] {cmdline.strip()[:200]}"


def leaked_children(before: set[int], grace: float = CHILD_EXIT_GRACE) -> list[int]:
    """Children that were not there before the test and do not go away within ``grace``."""
    deadline = time.monotonic() + grace
    while True:
        leaked = sorted(child_pids() - before)
        if not leaked or time.monotonic() > deadline:
            return leaked
        time.sleep(0.02)
