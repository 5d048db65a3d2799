"""The whole mesh path with real ESPHome: a host-platform config installed from node A
compiles on receiver B (real esphome and PlatformIO, offline), the artifacts come back,
and A flashes a real running host device over the real OTA protocol."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.conftest import link, node, remote_jobs, wait_peer
from tests.conftest import ESPHOME
from tests.daemon.conftest import MeshdFactory
from tests.daemon.test_install_host import _esphome_wrapper
from tests.support.host_device import HostDevice, HostFirmware, host_yaml

pytestmark = pytest.mark.slow


def test_install_compiles_on_receiver_and_flashes_from_offloader(
    meshd: MeshdFactory,
    host_firmware: HostFirmware,
    host_device: HostDevice,
    tmp_path: Path,
) -> None:
    wrapper = str(_esphome_wrapper(tmp_path))
    # The receiver runs real esphome in the build sandbox, which takes the network away
    # itself (--no-sandbox-network): the wrapper's own `unshare --net` is not allowed
    # inside (no nested user namespaces).
    desk = node(
        meshd,
        "desk",
        "--no-offload",
        "--no-mdns",
        "--no-sandbox-network",
        "--esphome",
        ESPHOME,
        env=host_firmware.env,
    )
    pi = node(
        meshd,
        "pi",
        "--no-receiver",
        "--no-include-local",
        "--no-mdns",
        "--esphome",
        wrapper,
        env=host_firmware.env,
    )
    _, desk_fp = link(pi, desk)
    wait_peer(pi, desk_fp, connected=True, idle=True, esphome_version="2026.6.5")
    # The receiver compiles the Pi's configuration in the build sandbox (docs/SECURITY.md).
    assert str(desk.cli_json("status")["node"]["sandbox"]).startswith("bubblewrap")

    # The Pi's own copy of the project: it has never been compiled on the Pi.
    configs = tmp_path / "pi-configs"
    configs.mkdir()
    config = configs / host_firmware.config.name
    config.write_text(
        host_yaml(
            name=host_firmware.name,
            port=host_firmware.ota_port,
            password=host_firmware.password,
            marker="R",
        )
    )

    result = pi.cli("install", str(config), "--device", "127.0.0.1", timeout=600)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{pi.log()}\n{desk.log()}"

    # The device rebooted into the firmware the receiver built.
    host_device.wait_for("meshd build marker R", timeout=60)
    compiled, uploaded = pi.cli_json("jobs")["jobs"]
    assert compiled["type"] == "compile" and compiled["runner"] == desk_fp
    assert uploaded["type"] == "upload" and uploaded["runner"] == "local"
    assert uploaded["status"] == "completed"
    # B's own job list shows the compile, tagged with the offloader.
    (remote,) = remote_jobs(desk)
    assert remote["status"] == "completed" and remote["args"]["remote_job"] == compiled["id"]
    assert remote["args"]["offloader_name"] == "pi"
    # The Pi holds only what a flash needs, where esphome upload looks for it.
    program = configs / ".esphome" / "build" / host_firmware.name / ".pioenvs"
    program = program / host_firmware.name / "program"
    assert program.is_file()
    assert not (configs / ".esphome" / "build" / host_firmware.name / "src").exists()
