"""Session fixtures shared by every test suite: offline PlatformIO, a real host build, a device.

Kept to what several suites reuse (toolchain, daemon, mesh):

* ``offline_pio_core``: a PLATFORMIO_CORE_DIR that builds ESPHome's ``host:`` platform
  with no network (tests/support/pio_offline.py).
* ``esphome_env``: the environment for esphome runs: venv first on PATH, the offline
  core dir, PlatformIO telemetry and update checks off.
* ``offline_toolchain`` / ``loopback_toolchain``: meshd Toolchains running the real
  esphome inside ``unshare -n`` (compile, config, clean) or directly (uploads to a
  device on 127.0.0.1).
* ``host_firmware``: one cold host compile per session (~30-40 s on 2 cores).
* ``host_project``: that project for a test that rewrites its YAML or compiles it
  warm; the YAML is restored afterwards.
* ``host_device``: a running copy of the session firmware, on loopback only.

Everything that may try to download runs under ``unshare -n`` (tests/support/netns.py).

And one autouse guard for every test: ``leak_guard`` fails a test that leaves asyncio
tasks, pending timer handles or child processes behind (tests/support/leaks.py).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pytest_asyncio import is_async_test

from meshd.toolchain.tools import Toolchain
from tests.support import leaks
from tests.support.host_device import (
    HostDevice,
    HostFirmware,
    build_loopback_shim,
    free_port,
    host_yaml,
)
from tests.support.netns import NETNS_PREFIX, isolated, netns_available
from tests.support.pio_offline import offline_env, provision_offline_core

VENV_BIN = Path(sys.executable).parent
ESPHOME = str(VENV_BIN / "esphome") if (VENV_BIN / "esphome").exists() else "esphome"
HOST_NAME = "meshd-host"
HOST_PASSWORD = "meshd-test-password"
# A cold host compile takes ~40 s on 2 cores; allow for a loaded CI machine.
COLD_COMPILE_TIMEOUT = 600


@pytest.fixture(autouse=True)
def leak_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if it leaves child processes (and, if async, tasks or timers) behind.

    Set up before, and torn down after, every other fixture of the test, so what a
    fixture cleans up in its own teardown is not a leak.
    """
    before = leaks.child_pids()
    if is_async_test(request.node):
        request.getfixturevalue("_async_leak_guard")
    yield
    leaked = leaks.leaked_children(before)
    if leaked:
        listing = "\n  ".join(leaks.describe_process(pid) for pid in leaked)
        pytest.fail(f"leak guard: the test left {len(leaked)} child process(es):\n  {listing}")


@pytest_asyncio.fixture
async def _async_leak_guard() -> AsyncIterator[None]:
    """The event-loop half of ``leak_guard``: runs in the test's loop, before it closes."""
    yield
    loop = asyncio.get_running_loop()
    # One turn of the loop: callbacks of what teardowns just cancelled run now.
    await asyncio.sleep(0)
    tasks = leaks.pending_tasks(loop)
    timers = leaks.pending_timers(loop)
    if tasks or timers:
        lines = [f"task {task!r}" for task in tasks] + [f"timer {handle!r}" for handle in timers]
        for task in tasks:  # do not let them run on into the loop's shutdown
            task.cancel()
        listing = "\n  ".join(lines)
        pytest.fail(
            f"leak guard: the test left {len(tasks)} task(s) and {len(timers)} timer(s) "
            f"in its event loop:\n  {listing}"
        )


def _require_netns() -> None:
    if not netns_available():
        pytest.skip("needs `unshare -n` (root, util-linux, iproute2) to keep builds offline")


@pytest.fixture(scope="session")
def offline_pio_core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned offline PLATFORMIO_CORE_DIR (tool-scons + native platform)."""
    return provision_offline_core(tmp_path_factory.mktemp("pio-core"))


@pytest.fixture(scope="session")
def esphome_env(offline_pio_core: Path) -> dict[str, str]:
    """Environment for esphome/PlatformIO: venv on PATH, offline core dir, no phoning home."""
    env = offline_env(offline_pio_core)
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("ESPHOME_DATA_DIR", None)
    return env


@pytest.fixture(scope="session")
def offline_toolchain(esphome_env: dict[str, str]) -> Toolchain:
    """The real esphome, run in a network namespace with only loopback (compile, config...)."""
    _require_netns()
    return Toolchain(esphome=(*NETNS_PREFIX, ESPHOME), env=esphome_env)


@pytest.fixture(scope="session")
def loopback_toolchain(esphome_env: dict[str, str]) -> Toolchain:
    """The real esphome in this namespace, for uploads to devices on 127.0.0.1."""
    esptool = VENV_BIN / "esptool"
    return Toolchain(
        esphome=(ESPHOME,),
        esptool=(str(esptool) if esptool.exists() else "esptool",),
        env=esphome_env,
    )


@pytest.fixture(scope="session")
def host_firmware(
    tmp_path_factory: pytest.TempPathFactory, esphome_env: dict[str, str]
) -> HostFirmware:
    """One cold ``esphome compile`` of a host-platform project for the whole session."""
    _require_netns()
    if shutil.which("g++") is None:
        pytest.skip("the host platform needs g++ (and libssl-dev)")
    project = tmp_path_factory.mktemp("host-project")
    port = free_port()
    yaml_text = host_yaml(name=HOST_NAME, port=port, password=HOST_PASSWORD, marker="A")
    config = project / "host.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    started = time.monotonic()
    result = subprocess.run(
        isolated(ESPHOME, "compile", str(config)),
        env=esphome_env,
        capture_output=True,
        text=True,
        timeout=COLD_COMPILE_TIMEOUT,
        check=False,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        pytest.fail(f"cold host compile failed ({result.returncode}):\n{tail}")
    firmware = HostFirmware(
        config=config,
        name=HOST_NAME,
        ota_port=port,
        password=HOST_PASSWORD,
        marker="A",
        snapshot=project / "program-A",
        env=esphome_env,
        cold_compile_seconds=elapsed,
        original_yaml=yaml_text,
    )
    shutil.copy2(firmware.program, firmware.snapshot)
    return firmware


@pytest.fixture
def host_project(host_firmware: HostFirmware) -> Iterator[HostFirmware]:
    """The session host project for one test; its YAML is restored afterwards.

    Tests run one at a time, so they share the build tree and compile warm (3-5 s).
    """
    yield host_firmware
    host_firmware.config.write_text(host_firmware.original_yaml, encoding="utf-8")
    # The validated-config cache may hold the test's YAML; drop it so esphome re-reads.
    cache = host_firmware.config.parent / ".esphome" / "storage" / "host.yaml.validated.yaml"
    cache.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def loopback_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LD_PRELOAD library that keeps host devices' sockets on loopback."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return build_loopback_shim(tmp_path_factory.mktemp("loopback-shim"))


@pytest.fixture
def host_device(
    host_firmware: HostFirmware, loopback_shim: Path, tmp_path: Path
) -> Iterator[HostDevice]:
    """A running copy of the session firmware (marker A), listening on 127.0.0.1 only."""
    device = HostDevice(
        host_firmware.snapshot, tmp_path / "device", port=host_firmware.ota_port, shim=loopback_shim
    )
    try:
        device.start()
        device.wait_for("meshd build marker A")
        yield device
    finally:
        device.stop()
