"""A daemon killed with SIGKILL mid-compile: the restart kills what the dead one left running.

esphome and PlatformIO run in their own sessions, so they outlive a SIGKILLed daemon
and would race the re-queued job for the same build directory. The real runners must
record each job's process group (``JobContext.on_process``) for the restore to kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.db import database_path
from tests.support.daemon import MeshdFactory, host_config
from tests.support.pids import gone_sync, group_members, pid_alive
from tests.support.waits import poll_until


def recorded_groups(data_dir: Path) -> set[int]:
    """Process groups the daemon has recorded for the orphan kill (read-only peek)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{database_path(data_dir)}?mode=ro", uri=True)
    ) as db:
        return {row[0] for row in db.execute("SELECT pgid FROM job_processes")}


@pytest.fixture
def orphans() -> Iterator[list[int]]:
    """Process groups a test must not leak, even when the daemon failed to kill them."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def test_restart_after_sigkill_kills_the_old_compile_group_before_rerunning(
    meshd: MeshdFactory, tmp_path: Path, orphans: list[int]
) -> None:
    pid_file, child_file = tmp_path / "compile.pid", tmp_path / "child.pid"
    daemon = meshd(
        env={"STANDIN_PID_FILE": str(pid_file), "STANDIN_CHILD_PID_FILE": str(child_file)}
    ).start()
    config = host_config(tmp_path / "cfg", "slow", compile_seconds=600)
    job_id = daemon.cli_json("compile", str(config), "--detach")["compile"]
    daemon.wait_status(job_id, "running")
    compile_pid = int(poll_until(lambda: pid_file.exists() and pid_file.read_text(), what="pid"))
    child_pid = int(child_file.read_text())
    orphans.append(compile_pid)  # esphome's group: the compile is its leader
    # The daemon records the group right after spawning it; kill only once it has, or
    # the test would race that write (the bug was: it never happened at all).
    poll_until(lambda: compile_pid in recorded_groups(daemon.data_dir), what="the group recorded")

    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)  # the daemon only, as the OOM killer would
    daemon.proc.wait(timeout=30)
    # esphome dies with the daemon (PR_SET_PDEATHSIG); its child stays in the group.
    poll_until(lambda: not pid_alive(compile_pid), what="the compile to die with the daemon")
    assert pid_alive(child_pid), "nothing was left to kill"

    config.write_text(config.read_text().replace("compile_seconds=600", "compile_seconds=0"))
    pid_file.unlink()
    daemon.start()
    done = daemon.wait_status(job_id, "completed", "failed", "cancelled")
    assert done["status"] == "completed", daemon.cli("logs", job_id).stdout

    assert gone_sync(compile_pid, child_pid, timeout=1.0), (
        "the dead daemon's compile group was still running after the restart"
    )
    assert group_members(compile_pid) == []
    log = daemon.cli("logs", job_id).stdout.splitlines()
    killed = next(i for i, line in enumerate(log) if "left by the previous run" in line)
    reruns = [i for i, line in enumerate(log) if line.startswith("$ ") and " compile " in line]
    assert len(reruns) == 2, log
    assert reruns[0] < killed < reruns[1], "the old group must be gone before the job reruns"
    assert f"killed process group {compile_pid}" in log[killed]
