"""Which esphome the daemon runs: ``--esphome`` > beside its interpreter > PATH, and a
clear warning (``meshd status``, the status JSON) when there is none."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from meshd.toolchain.tools import ToolSource, locate_tool
from tests.cluster.conftest import until
from tests.daemon.conftest import MeshdFactory, host_config


def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_lookup_order(tmp_path: Path) -> None:
    venv_bin, elsewhere = tmp_path / "venv" / "bin", tmp_path / "elsewhere"
    interpreter = str(venv_bin / "python")  # never resolved: a venv's python is a symlink
    on_path = _executable(elsewhere / "esphome")

    # Only on PATH.
    found = locate_tool("esphome", interpreter=interpreter, path=str(elsewhere))
    assert found.source is ToolSource.PATH and found.command == (str(on_path),)
    assert found.warning is None

    # Beside the interpreter wins over PATH (the README's `.venv/bin/meshd serve`).
    beside = _executable(venv_bin / "esphome")
    found = locate_tool("esphome", interpreter=interpreter, path=str(elsewhere))
    assert found.source is ToolSource.BESIDE_PYTHON and found.command == (str(beside),)

    # An explicit command wins over both.
    found = locate_tool("esphome", ("python3", "-m", "esphome"), interpreter=interpreter)
    assert found.source is ToolSource.CONFIGURED and found.command == ("python3", "-m", "esphome")

    # A file beside the interpreter that is not executable is not a tool.
    beside.chmod(0o644)
    found = locate_tool("esphome", interpreter=interpreter, path=str(tmp_path / "empty"))
    assert found.source is ToolSource.MISSING and found.command == ("esphome",)
    assert found.warning is not None and "esphome not found" in found.warning
    assert "--esphome" in found.warning and "meshd[esphome]" in found.warning


def _bare_venv(directory: Path) -> Path:
    """A venv with no esphome in it, importing meshd's dependencies from this one."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=120
    )
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(directory), "platbase": str(directory)})
    )
    site.mkdir(parents=True, exist_ok=True)
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return directory / "bin" / "python"


def test_daemon_without_esphome_says_so(meshd: MeshdFactory, tmp_path: Path) -> None:
    python = _bare_venv(tmp_path / "venv")
    env = {"PATH": "/usr/bin:/bin"}
    for directory in (python.parent, *map(Path, env["PATH"].split(":"))):
        assert not (directory / "esphome").exists(), directory
    daemon = meshd(env=env)
    daemon.data_dir.mkdir(parents=True)
    # `meshd serve` as a user would start it: no --esphome, nothing on PATH.
    with daemon.log_path.open("ab") as log:
        daemon.proc = subprocess.Popen(
            [
                str(python),
                "-m",
                "meshd",
                "serve",
                "--data-dir",
                str(daemon.data_dir),
                "--api",
                "127.0.0.1:0",
                "--peer-listen",
                "127.0.0.1:0",
                "--no-mdns",
            ],
            env=daemon.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    until("api.json", lambda: (daemon.data_dir / "api.json").exists() or daemon.proc.poll())
    assert daemon.proc.poll() is None, daemon.log()
    daemon.start_url_from_file()

    node = daemon.cli_json("status")["node"]
    (warning,) = [w for w in node["warnings"] if "esphome" in w]
    assert warning.startswith("esphome not found")
    assert node["esphome"] == "esphome" and node["esphome_version"] is None
    human = daemon.cli("status")
    assert human.returncode == 0
    assert "warning: esphome not found" in " ".join(human.stderr.split())
    assert "esphome not found" in daemon.log()
    # A compile fails with a reason that says what to do, not a traceback.
    config = host_config(tmp_path / "cfg", "nothing")
    job_id = daemon.cli_json("compile", str(config), "--detach")["compile"]
    failed = daemon.wait_status(job_id, "failed")
    assert "esphome" in failed["error"]
