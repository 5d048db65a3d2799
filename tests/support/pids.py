"""Is a process (or a whole process group) still running? Read from ``/proc``.

A zombie counts as gone: it has exited and only waits for its parent (or init) to
reap it. Signals are delivered asynchronously, so callers that just sent one wait with
:func:`gone` / :func:`gone_sync` (bounded polls), never with a bare sleep.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support.waits import poll_until, until_async

# A killed process group is gone within milliseconds; this is a safety net.
GONE_TIMEOUT = 10.0


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


async def gone(*pids: int, timeout: float = GONE_TIMEOUT) -> bool:
    """True once every pid is dead (False after ``timeout``)."""
    try:
        await until_async(lambda: not any(pid_alive(pid) for pid in pids), timeout=timeout)
    except TimeoutError:
        return False
    return True


def gone_sync(*pids: int, timeout: float = GONE_TIMEOUT) -> bool:
    """:func:`gone` for code outside an event loop."""
    try:
        poll_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=timeout)
    except TimeoutError:
        return False
    return True
