"""A rename is atomic for the user: cancelled, superseded, failed or interrupted by a
crash, it leaves the old YAML intact and no new YAML behind; completed, it leaves only
the new one. Real ``meshd serve`` with the stand-in esphome, whose rename writes the
new YAML first and then compiles and uploads, as esphome's does."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.daemon.conftest import Meshd, MeshdFactory, host_config

WAIT = 60.0  # a safety net against hangs


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _start_rename(daemon: Meshd, cfg: Path, new_name: str) -> str:
    job: str = daemon.cli_json("rename", str(cfg), new_name, "--detach")["rename"]
    new = cfg.with_name(f"{new_name}.yaml")
    _until(new.exists, f"{new.name} to be written")  # esphome is compiling it now
    daemon.wait_status(job, "running")
    return job


def _only_old_left(cfg: Path, original: str, new_name: str) -> None:
    assert cfg.read_text() == original, "the old YAML changed"
    assert not cfg.with_name(f"{new_name}.yaml").exists(), "the new YAML was left behind"
    assert not list(cfg.parent.glob(".*meshd-rename")), "the rename marker was left behind"


def test_cancelled_rename_keeps_the_old_yaml_only(daemon: Meshd, tmp_path: Path) -> None:
    cfg = host_config(tmp_path / "cfg", "lamp", compile_seconds=60)
    original = cfg.read_text()
    job = _start_rename(daemon, cfg, "desk-lamp")
    assert daemon.cli("cancel", job).returncode == 0
    assert daemon.wait_status(job, "cancelled", "failed", "completed")["status"] == "cancelled"
    _only_old_left(cfg, original, "desk-lamp")
    assert "rename did not finish" in daemon.cli("logs", job).stdout


def test_superseded_rename_keeps_the_old_yaml_only(daemon: Meshd, tmp_path: Path) -> None:
    cfg = host_config(tmp_path / "cfg", "lamp", compile_seconds=60)
    original = cfg.read_text()
    job = _start_rename(daemon, cfg, "desk-lamp")
    # A new job for the configuration supersedes the rename.
    clean = daemon.cli_json("clean", str(cfg), "--detach")["clean"]
    assert daemon.wait_status(job, "cancelled", "failed", "completed")["status"] == "cancelled"
    assert daemon.wait_status(clean, "completed", "failed", "cancelled")["status"] == "completed"
    _only_old_left(cfg, original, "desk-lamp")


@pytest.mark.parametrize("fault", ["compile_fail", "upload_fail", "invalid"])
def test_failed_rename_keeps_the_old_yaml_only(daemon: Meshd, tmp_path: Path, fault: str) -> None:
    cfg = host_config(tmp_path / "cfg", "lamp", **{fault: 1})
    original = cfg.read_text()
    job = daemon.cli_json("rename", str(cfg), "desk-lamp", "--detach")["rename"]
    assert daemon.wait_status(job, "failed", "cancelled", "completed")["status"] == "failed"
    _only_old_left(cfg, original, "desk-lamp")


def test_completed_rename_leaves_the_new_yaml_only(daemon: Meshd, tmp_path: Path) -> None:
    cfg = host_config(tmp_path / "cfg", "lamp")
    job = daemon.cli_json("rename", str(cfg), "desk-lamp", "--detach")["rename"]
    assert daemon.wait_status(job, "completed", "failed", "cancelled")["status"] == "completed"
    new = cfg.with_name("desk-lamp.yaml")
    assert not cfg.exists() and new.exists()
    assert "name: desk-lamp" in new.read_text()
    assert not list(cfg.parent.glob(".*meshd-rename"))


def test_rename_never_touches_a_yaml_that_already_has_the_name(
    daemon: Meshd, tmp_path: Path
) -> None:
    cfg = host_config(tmp_path / "cfg", "lamp")
    taken = host_config(tmp_path / "cfg", "desk-lamp")
    theirs = taken.read_text()
    job = daemon.cli_json("rename", str(cfg), "desk-lamp", "--detach")["rename"]
    assert daemon.wait_status(job, "failed", "cancelled", "completed")["status"] == "failed"
    assert taken.read_text() == theirs and cfg.exists()


@pytest.mark.slow
def test_rename_interrupted_by_a_crash_is_cleaned_up_on_restart(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    daemon = meshd().start()
    cfg = host_config(tmp_path / "cfg", "lamp", compile_seconds=60)
    job = _start_rename(daemon, cfg, "desk-lamp")
    assert daemon.proc is not None
    os.kill(daemon.proc.pid, signal.SIGKILL)  # the daemon only; its esphome group lives on
    daemon.proc.wait(timeout=WAIT)
    assert cfg.with_name("desk-lamp.yaml").exists()  # what a crash leaves behind
    # Make the re-run quick; the restored job renames from the old YAML again.
    cfg.write_text(cfg.read_text().replace("compile_seconds=60", "compile_seconds=0"))
    daemon.start()
    assert daemon.wait_status(job, "completed", "failed", "cancelled")["status"] == "completed"
    new = cfg.with_name("desk-lamp.yaml")
    assert not cfg.exists() and new.exists() and "compile_seconds=0" in new.read_text()
    assert "left by an interrupted rename" in daemon.cli("logs", job).stdout
    assert not list(cfg.parent.glob(".*meshd-rename"))
