"""An install chain through a real ``meshd serve`` with the real esphome, onto a real
host-platform device running on 127.0.0.1: it must end completed and flashed."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.conftest import ESPHOME
from tests.daemon.conftest import MeshdFactory
from tests.support.host_device import HostDevice, HostFirmware
from tests.support.netns import NETNS_PREFIX

pytestmark = pytest.mark.slow


def _esphome_wrapper(directory: Path) -> Path:
    """``esphome`` for the daemon: uploads run here (the device is on this loopback);
    everything else runs in a fresh network namespace, so nothing can download."""
    isolated = " ".join(shlex.quote(part) for part in (*NETNS_PREFIX, ESPHOME))
    script = directory / "esphome-wrapper"
    script.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f'  [ "$arg" = upload ] && exec {shlex.quote(ESPHOME)} "$@"\n'
        "done\n"
        f'exec {isolated} "$@"\n'
    )
    script.chmod(0o755)
    return script


def test_install_chain_flashes_a_real_host_device(
    meshd: MeshdFactory,
    host_project: HostFirmware,
    host_device: HostDevice,
    tmp_path: Path,
) -> None:
    wrapper = _esphome_wrapper(tmp_path)
    daemon = meshd(esphome=str(wrapper), env=host_project.env).start()
    host_project.write_config(marker="D")  # unique per test: the build tree is shared

    result = daemon.cli("install", str(host_project.config), "--device", "127.0.0.1")

    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{daemon.log()}"
    assert "completed compile" in result.stdout and "completed upload" in result.stdout
    # The tool output was shown while following: the OTA protocol's own lines.
    assert "OTA successful" in result.stdout
    # The device rebooted into the new firmware: the flash really happened.
    host_device.wait_for("meshd build marker D", timeout=60)
    jobs = daemon.cli_json("jobs")["jobs"]
    assert [(job["type"], job["status"]) for job in jobs] == [
        ("compile", "completed"),
        ("upload", "completed"),
    ]
    assert jobs[1]["progress"] == 1.0
