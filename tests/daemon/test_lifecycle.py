"""SIGTERM, restart and systemd: the daemon's life cycle as systemd drives it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import REPO, MeshdFactory, host_config
from tests.support.pids import pid_alive
from tests.support.waits import poll_until

WAIT = 60.0  # a safety net against hangs


def test_sigterm_during_compile_then_restart_finishes_everything(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "compile.pid"
    daemon = meshd(env={"STANDIN_PID_FILE": str(pid_file)}).start()
    long = host_config(tmp_path / "cfg", "slow", compile_seconds=600)
    other = host_config(tmp_path / "cfg", "other")
    chain = daemon.cli_json("install", str(long), "--device", "127.0.0.1", "--detach")
    behind = daemon.cli_json("compile", str(other), "--detach")
    daemon.wait_status(chain["compile"], "running")
    compile_pid = int(poll_until(lambda: pid_file.exists() and pid_file.read_text(), what="pid"))

    assert daemon.terminate() == 0, daemon.log()
    assert not pid_alive(compile_pid), "the compile's process group survived SIGTERM"
    assert "shutting down" in daemon.log() and "stopped" in daemon.log()

    # Make the restarted compile quick; the restore rules decide what runs.
    long.write_text(long.read_text().replace("compile_seconds=600", "compile_seconds=0"))
    pid_file.unlink()
    daemon.start()
    states = daemon.cli_json("wait", chain["compile"], chain["upload"], behind["compile"])
    assert [job["status"] for job in states["jobs"]] == ["completed"] * 3
    log = daemon.cli("logs", chain["compile"]).stdout
    assert "interrupted by meshd shutdown" in log or "restarted:" in log
    assert log.rstrip().endswith("completed")


def test_sigterm_while_idle_exits_0_and_keeps_token(meshd: MeshdFactory) -> None:
    daemon = meshd().start()
    token = daemon.token
    assert daemon.terminate() == 0
    api = daemon.data_dir / "api.json"
    assert api.stat().st_mode & 0o777 == 0o600
    daemon.start()
    assert daemon.token == token  # scripts given --token survive a restart


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(WAIT)
    try:
        yield sock, path
    finally:
        sock.close()


def _messages_until(sock: socket.socket, wanted: str, seen: list[str]) -> None:
    while not any(wanted in message for message in seen):
        seen.append(sock.recv(4096).decode())


def test_sd_notify_ready_watchdog_stopping(
    meshd: MeshdFactory, notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, path = notify_socket
    # 0.2 s: pings every 0.1 s, so several arrive quickly.
    daemon = meshd(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
    daemon.start(wait=False)
    seen: list[str] = []
    _messages_until(sock, "READY=1", seen)
    # READY comes only once the API serves: api.json exists and answers.
    assert json.loads((daemon.data_dir / "api.json").read_text())["url"].startswith("http://")
    daemon.start_url_from_file()
    assert daemon.cli("status").returncode == 0
    before = len([m for m in seen if "WATCHDOG=1" in m])
    while len([m for m in seen if "WATCHDOG=1" in m]) < before + 3:
        seen.append(sock.recv(4096).decode())
    assert daemon.terminate() == 0
    _messages_until(sock, "STOPPING=1", seen)


def test_watchdog_for_another_pid_is_ignored(
    meshd: MeshdFactory, notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, path = notify_socket
    daemon = meshd(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    daemon.start()
    seen: list[str] = []
    _messages_until(sock, "READY=1", seen)
    assert daemon.terminate() == 0
    _messages_until(sock, "STOPPING=1", seen)
    assert not any("WATCHDOG=1" in message for message in seen)


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt install systemd)")
    # verify checks that ExecStart's program exists: point it at this checkout's meshd.
    meshd_bin = tmp_path / "bin" / "meshd"
    meshd_bin.parent.mkdir()
    meshd_bin.write_text(f'#!/bin/sh\nexec {sys.executable} -m meshd "$@"\n')
    meshd_bin.chmod(0o755)
    unit = (REPO / "systemd" / "meshd.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    installed = tmp_path / "meshd.service"
    installed.write_text(unit.replace("/opt/meshd/bin/meshd", str(meshd_bin)))
    result = subprocess.run(
        [analyze, "verify", str(installed)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    noise = [line for line in result.stderr.splitlines() if "meshd.service" in line]
    assert not noise, result.stderr
