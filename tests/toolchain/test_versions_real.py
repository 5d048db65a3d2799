"""A real second esphome release, provisioned offline by the store, compiles real firmware.

``scripts/test`` fills ``.cache/wheelhouse/esphome-<version>/`` with ``pip wheel`` (the
release and every dependency, sdists built into wheels) *before* the tests enter their
network namespace, and marks it complete with a ``.complete`` file. This test then
provisions that release with ``--no-index --find-links`` (nothing can be downloaded
from inside the namespace), compiles the host-platform firmware with it against the
offline PlatformIO core, and runs the program: it must say it is that release.
``MESHD_TEST_WHEELHOUSE`` points elsewhere if the cache lives somewhere else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest

from meshd.toolchain.storage import load_storage
from meshd.toolchain.versions import PipOptions, ToolchainStore, is_version
from tests.support.host_device import HostDevice, free_port, host_yaml
from tests.support.netns import isolated, netns_available

ROOT = Path(__file__).resolve().parents[2]
COMPILE_TIMEOUT = 900


def _second_release() -> tuple[str, Path]:
    """(version, wheelhouse) of a complete wheelhouse for a release other than ours."""
    base = Path(os.environ.get("MESHD_TEST_WHEELHOUSE", ROOT / ".cache" / "wheelhouse"))
    ours = metadata.version("esphome")
    found = sorted(base.glob("esphome-*/.complete")) if base.is_dir() else []
    for marker in found:
        version = marker.parent.name.removeprefix("esphome-")
        if is_version(version) and version != ours:
            return version, marker.parent
    pytest.skip(
        f"no complete wheelhouse of a second esphome release under {base}: scripts/test "
        "fills it (pip wheel) before the tests go offline; the registry was unreachable "
        "then, or pytest was run without scripts/test"
    )


@pytest.mark.slow
async def test_real_second_release_provisions_offline_and_builds_firmware(
    tmp_path: Path, esphome_env: dict[str, str], loopback_shim: Path
) -> None:
    if not netns_available():
        pytest.skip("needs `unshare -n` to keep the compile offline")
    if shutil.which("g++") is None:
        pytest.skip("the host platform needs g++ (and libssl-dev)")
    version, wheelhouse = _second_release()
    store = ToolchainStore(tmp_path / "data", pip=PipOptions(find_links=(str(wheelhouse),)))
    lines: list[str] = []
    started = time.monotonic()
    async with store.use(version, on_line=lines.append) as toolchain:
        provision_seconds = time.monotonic() - started
        assert any("Successfully installed" in line and version in line for line in lines)
        answer = subprocess.run(
            [*toolchain.esphome, "version"], capture_output=True, text=True, check=True
        )
        assert answer.stdout.strip() == f"Version: {version}"
        # The PlatformIO that release pins must be the one the offline core dir serves.
        pio = subprocess.run(
            [str(toolchain.python), "-m", "platformio", "--version"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "6.1.19" in pio.stdout

        project = tmp_path / "project"
        project.mkdir()
        config = project / "host.yaml"
        port = free_port()
        config.write_text(host_yaml(name="meshd-second", port=port, password="pw", marker="V2"))
        env = dict(esphome_env)
        env["PATH"] = f"{toolchain.path / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        compile_started = time.monotonic()
        result = subprocess.run(
            isolated(*toolchain.esphome, "compile", str(config)),
            env=env,
            capture_output=True,
            text=True,
            timeout=COMPILE_TIMEOUT,
            check=False,
        )
        compile_seconds = time.monotonic() - compile_started
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert f"ESPHome {version}" in output

    record = load_storage(config, env)
    assert record.esphome_version == version
    assert record.firmware_bin_path is not None
    program = record.firmware_bin_path
    device = HostDevice(program, tmp_path / "device", port=port, shim=loopback_shim)
    try:
        device.start()
        device.wait_for(f"ESPHome version {version} compiled on")
        device.wait_for("meshd build marker V2")
    finally:
        device.stop()
    print(
        f"\nesphome {version}: provisioned offline in {provision_seconds:.1f} s, "
        f"cold host compile {compile_seconds:.1f} s"
    )
