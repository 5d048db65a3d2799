"""Find and kill process groups a crashed meshd left behind.

After a SIGKILL or power cut of the daemon, esphome and PlatformIO keep running in
their own sessions and would race the restarted job for the same build directory. The
engine records each job's process group leader together with the boot id and the
leader's start time, so the restore kills only that exact group: after a reboot, or
once the pid has been reused, the identity no longer matches and nothing is killed.
The leader itself usually dies with the daemon (``PR_SET_PDEATHSIG``, see
``meshd.toolchain.process``); its children (PlatformIO, compilers) stay in the group,
and the group is killed whole.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def process_identity(pid: int) -> str | None:
    """``boot_id:starttime`` of a live process, or None if it is gone or unknowable."""
    try:
        boot_id = _BOOT_ID.read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime) counted after the parenthesised command name, which may
    # itself contain spaces or parentheses.
    fields = stat.rsplit(")", 1)[1].split()
    return f"{boot_id}:{fields[19]}"


# SIGKILL is delivered asynchronously; restore waits this long at most for the old
# leader to be gone, so a re-run job never shares its build directory with it.
ORPHAN_EXIT_WAIT = 5.0


def _is_running(pid: int, identity: str) -> bool:
    if process_identity(pid) != identity:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp.
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _ours(pgid: int, identity: str) -> bool:
    """Is group ``pgid`` still the one recorded?

    While its leader lives, the leader's identity decides. Once the leader is gone
    (the kernel killed it with the daemon, or it exited), any process left in the
    group is ours: Linux never hands out a pid that is still some live group's id, so
    the group cannot have been reused while it has members.
    """
    if _is_running(pgid, identity):
        return True
    current = process_identity(pgid)
    if current is not None and current != identity:
        return False  # another process owns that pid now: a different group
    # Gone, or our leader's zombie not reaped yet: whatever is left in the group is ours.
    return bool(group_members(pgid))


def kill_orphan_group(pgid: int, identity: str) -> bool:
    """SIGKILL what is left of group ``pgid`` if it is the one recorded; True if killed."""
    if not _ours(pgid, identity):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    deadline = time.monotonic() + ORPHAN_EXIT_WAIT
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True
