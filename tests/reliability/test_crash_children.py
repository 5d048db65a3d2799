"""What a SIGKILLed daemon leaves running, and what its restart does about it.

The crash trials (test_crash_trials.py) find these cases by chance; here each one is
set up on purpose with a real ``meshd serve``: a compile whose esphome is silent (as a
linker is) with a "compiler" child in its group, and an OTA upload to an emulated
device in the middle of its transfer.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from tests.daemon.conftest import Meshd, MeshdFactory, host_config, pid_alive
from tests.support.ota_emulator import OtaDevices

WAIT = 30.0  # safety net against hangs, not a speed assertion


def _journal(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _until(what: str, check: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def _entry(journal: Path, cmd: str) -> dict[str, Any] | None:
    return next((e for e in _journal(journal) if e["cmd"] == cmd), None)


def _crash(daemon: Meshd) -> int:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    os.kill(pid, signal.SIGKILL)  # the daemon only: its children are on their own
    daemon.proc.wait(timeout=WAIT)
    return pid


def test_a_compile_dies_with_the_daemon_and_its_children_at_restart(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    config = host_config(
        tmp_path / "cfg", "silent", compile_seconds=0.2, link_seconds=60, grandchild_seconds=120
    )
    daemon = meshd(env={"STANDIN_JOURNAL": str(journal)}, args=("--no-mdns",)).start()
    job_id = daemon.cli_json("compile", str(config), "--detach")["compile"]
    compiler = _until("the compile's child", lambda: _entry(journal, "grandchild"))
    esphome = _entry(journal, "compile")
    assert esphome is not None
    _until("the compile to go silent", lambda: "Linking" in daemon.cli("logs", job_id).stdout)

    _crash(daemon)
    # The kernel kills esphome with the daemon (PR_SET_PDEATHSIG)...
    _until("esphome to die with the daemon", lambda: not pid_alive(esphome["pid"]))
    # ...but not what esphome started: that is the restart's job.
    assert pid_alive(compiler["pid"])

    host_config(tmp_path / "cfg", "silent", compile_seconds=0.2)  # quick on the re-run
    daemon.start()
    assert not pid_alive(compiler["pid"]), "the restart kills what the dead daemon left"
    job = daemon.wait_status(job_id, "completed", "failed", "cancelled")
    assert job["status"] == "completed"
    log = daemon.cli("logs", job_id).stdout
    assert "left by the previous run" in log and "restarted: meshd stopped" in log


def test_an_upload_dies_with_the_daemon_and_flashes_once_after_restart(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.jsonl"
    with OtaDevices(1) as devices:
        port = devices.port(0)
        config = host_config(
            tmp_path / "cfg", "radio", upload_seconds=6, firmware_bytes=400_000, ota_port=port
        )
        daemon = meshd(env={"STANDIN_JOURNAL": str(journal)}, args=("--no-mdns",)).start()
        ids = daemon.cli_json("install", str(config), "--device", "127.0.0.1", "--detach")
        _until("the upload to start", lambda: _entry(journal, "upload"))
        _until("bytes on the device", lambda: devices.devices[0].received_bytes > 0)
        uploader = _entry(journal, "upload")
        assert uploader is not None

        _crash(daemon)
        _until("esphome upload to die with the daemon", lambda: not pid_alive(uploader["pid"]))
        assert devices.images(0) == [], "a half-sent image is never committed"

        host_config(
            tmp_path / "cfg", "radio", upload_seconds=0.2, firmware_bytes=400_000, ota_port=port
        )
        daemon.start()
        upload = daemon.wait_status(ids["upload"], "completed", "failed", "cancelled")
        assert upload["status"] == "completed", daemon.cli("logs", ids["upload"]).stdout
        images = devices.images(0)
        builds = re.findall(r"sha256 ([0-9a-f]{64})", daemon.cli("logs", ids["compile"]).stdout)
        assert [hashlib.sha256(i.data).hexdigest() for i in images if i.accepted] == builds[-1:]
        assert len(images) == 1, "flashed exactly once"
