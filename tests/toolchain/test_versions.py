"""The toolchain store, provisioning a real stand-in esphome wheel with real pip, offline.

Every provisioning here runs ``python -m venv`` and ``pip install --no-index
--find-links <wheelhouse> esphome==<version>`` for real; the wheel is a stand-in
written by tests/support/standin_wheel.py (its ``esphome version`` answers like the
real CLI). The tests run inside the test network namespace, and a wheelhouse is a
local directory, so nothing can be downloaded. The cancel test points pip at an HTTP
index on 127.0.0.1 that never answers, so pip is really stuck in the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from meshd.toolchain.versions import (
    PipOptionError,
    PipOptions,
    ProvisionError,
    SweepPolicy,
    ToolchainStore,
    ToolchainVersionError,
    check_version,
    hermetic_environ,
    plan_sweep,
)
from meshd.toolchain.versions.pip import install_argv
from meshd.toolchain.versions.store import BUILDS_DIR, LAST_USED, READY_MARKER
from meshd.toolchain.versions.sweep import DAY, Installed
from tests.support.standin_wheel import build_standin_wheel

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("versions_worker.py")
V1 = "2099.1.0"
V2 = "2099.2.0"
# Upper bound for a real condition to come true on a loaded 2-core machine (a venv plus
# a pip install of one tiny wheel takes ~1 s idle).
WAIT = 120.0


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Log:
    """A job-log stand-in: collects lines the store streams."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    build_standin_wheel(house, V1)
    build_standin_wheel(house, V2)
    return house


@pytest.fixture
def store(tmp_path: Path, wheelhouse: Path) -> ToolchainStore:
    return ToolchainStore(tmp_path / "data", pip=PipOptions(find_links=(str(wheelhouse),)))


def build_dirs(store: ToolchainStore) -> list[str]:
    builds = store.root / BUILDS_DIR
    return sorted(p.name for p in builds.iterdir()) if builds.exists() else []


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (to prove a process group is gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
    return found


# -- version strings and pip options (pure) -------------------------------------------


@pytest.mark.parametrize("text", ["2026.6.5", "2026.7.0b1", "2026.12.0rc2", "1.20.4", "2099.1.0"])
def test_release_versions_accepted(text: str) -> None:
    assert check_version(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2026.6",
        "2026.6.5.1",
        "2026.06.5",  # pip would normalise it; esphome would then answer 2026.6.5
        "v2026.6.5",
        " 2026.6.5",
        "2026.6.5\n",
        "2026.6.5; rm -rf /",
        "2026.6.5 --index-url http://evil.example/",
        "--index-url=http://evil.example/",
        "../../etc",
        "2026.6.5/../../x",
        ">=2026.6.5",
        "2026.6.*",
        "2026.6.5[dev]",
        "2026.6.5+local",
        "2026.7.0-dev",
        "2026.7.0.dev1",
        "\u0662\u0660\u0662\u0666.6.5",  # Arabic-Indic digits match \d, not [0-9]
        "2026.6.5\x00",
        "9" * 30,
    ],
)
def test_unsafe_or_odd_versions_refused(text: str) -> None:
    with pytest.raises(ToolchainVersionError, match=r"not an esphome release version|empty"):
        check_version(text)


def test_non_string_version_refused() -> None:
    with pytest.raises(ToolchainVersionError, match="string"):
        check_version(2026)


def test_pip_options_become_explicit_arguments(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    only_links = PipOptions(find_links=("/srv/wheels", "/mnt/usb/wheels"))
    argv = install_argv(python, V1, only_links)
    assert argv[:3] == [str(python), "-m", "pip"]
    assert argv[argv.index("--no-index") :] == [
        "--no-index",
        "--find-links",
        "/srv/wheels",
        "--find-links",
        "/mnt/usb/wheels",
        f"esphome=={V1}",
    ]
    assert {"--disable-pip-version-check", "--no-input"} <= set(argv)

    mirror = PipOptions(index_url="http://mirror.lan/simple", find_links=("/srv/wheels",))
    argv = install_argv(python, V1, mirror, host_python="/usr/bin/python3")
    assert argv[:5] == ["/usr/bin/python3", "-m", "pip", "--python", str(python)]
    assert "--no-index" not in argv
    assert argv[-5:] == [
        "--index-url",
        "http://mirror.lan/simple",
        "--find-links",
        "/srv/wheels",
        f"esphome=={V1}",
    ]
    assert "--index-url" not in install_argv(python, V1, PipOptions())
    assert "--no-index" not in install_argv(python, V1, PipOptions())
    with pytest.raises(ToolchainVersionError):
        install_argv(python, "1.0; echo", PipOptions())


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"index_url": "--trusted-host=evil"}, "start with '-'"),
        ({"index_url": "ftp://mirror/simple"}, "not an http"),
        ({"index_url": "mirror.lan/simple"}, "not an http"),
        ({"index_url": "http://mirror.lan/simple extra"}, "whitespace"),
        ({"find_links": ("wheels",)}, "absolute path"),
        ({"find_links": ("-f/srv",)}, "start with '-'"),
        ({"find_links": ("/srv/wheels\n--pre",)}, "whitespace"),
        ({"find_links": ("gopher://x/",)}, "not an http"),
    ],
)
def test_bad_pip_options_refused(kwargs: dict[str, object], why: str) -> None:
    with pytest.raises(PipOptionError, match=why):
        PipOptions(**kwargs)  # type: ignore[arg-type]


def test_hermetic_environ_drops_what_would_leak_into_a_venv() -> None:
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PYTHONPATH": "/work/meshd",
        "PYTHONHOME": "/opt/py",
        "PIP_TARGET": "/tmp/elsewhere",
        "PIP_PREFIX": "/tmp/elsewhere",
        "PIP_USER": "1",
        "PLATFORMIO_CORE_DIR": "/srv/pio",
    }
    assert hermetic_environ(base) == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PLATFORMIO_CORE_DIR": "/srv/pio",
    }


# -- sweep planning (pure) --------------------------------------------------------------


def test_sweep_plan_idle_budget_and_leases() -> None:
    now = 1_000 * DAY
    mib = 1024**2
    installed = [
        Installed("2026.1.0", now - 60 * DAY, 300 * mib, in_use=False),  # idle too long
        Installed("2026.2.0", now - 90 * DAY, 300 * mib, in_use=True),  # idle but leased
        Installed("2026.3.0", now - 5 * DAY, 300 * mib, in_use=False),  # LRU of the rest
        Installed("2026.4.0", now - 1 * DAY, 300 * mib, in_use=False),
    ]
    policy = SweepPolicy(max_idle=30 * DAY, disk_budget=700 * mib)
    decisions = {d.version: d for d in plan_sweep(installed, policy, now)}
    assert decisions["2026.1.0"].remove and "unused for 60 days" in decisions["2026.1.0"].reason
    assert not decisions["2026.2.0"].remove and decisions["2026.2.0"].reason == "in use"
    assert decisions["2026.3.0"].remove and "disk budget" in decisions["2026.3.0"].reason
    assert not decisions["2026.4.0"].remove


def test_sweep_plan_never_removes_a_leased_toolchain() -> None:
    installed = [Installed("2026.1.0", 0.0, 10**9, in_use=True)]
    [decision] = plan_sweep(installed, SweepPolicy(max_idle=0, disk_budget=0), now=10 * DAY)
    assert not decision.remove


def test_sweep_plan_without_limits_keeps_everything() -> None:
    installed = [Installed("2026.1.0", 0.0, 10**12, in_use=False)]
    [decision] = plan_sweep(installed, SweepPolicy(max_idle=None, disk_budget=None), 10**9)
    assert not decision.remove


# -- provisioning with real pip ---------------------------------------------------------


async def test_ready_only_after_the_version_check(tmp_path: Path, store: ToolchainStore) -> None:
    gate = tmp_path / "gate"
    gated_house = tmp_path / "gated"
    build_standin_wheel(gated_house, V1, gate=gate)
    store = ToolchainStore(store.root.parent, pip=PipOptions(find_links=(str(gated_house),)))
    log = Log()
    task = asyncio.create_task(store.ensure(V1, on_line=log))
    try:
        # pip is done and the installed `esphome version` is running, held at the gate.
        await wait_until(lambda: Path(f"{gate}.waiting").exists(), "the version check")
        assert log.count(f"Successfully installed esphome-{V1}") == 1
        assert not store.is_ready(V1)
        assert not store.path(V1).exists()
        assert store.ready_versions() == []
        [build] = build_dirs(store)
        assert not (store.root / BUILDS_DIR / build / READY_MARKER).exists()
        gate.touch()
        toolchain = await task
    finally:
        gate.touch()
        if not task.done():
            task.cancel()
    assert store.is_ready(V1)
    assert store.ready_versions() == [V1]
    assert toolchain.path == store.path(V1)
    assert f"Version: {V1}" in log.text
    answer = subprocess.run(
        [*toolchain.esphome, "version"], capture_output=True, text=True, check=True
    )
    assert answer.stdout.strip() == f"Version: {V1}"
    marker = (toolchain.path / READY_MARKER).read_text()
    assert f'"esphome_version": "{V1}"' in marker


async def test_a_package_reporting_another_version_is_never_ready(tmp_path: Path) -> None:
    house = tmp_path / "liar"
    build_standin_wheel(house, V1, reports="2026.6.5")
    store = ToolchainStore(tmp_path / "data", pip=PipOptions(find_links=(str(house),)))
    with pytest.raises(
        ProvisionError, match=r"reports version '2026\.6\.5', not '2099\.1\.0'"
    ) as e:
        await store.ensure(V1)
    assert e.value.stage == "check"
    assert not store.is_ready(V1)
    assert not store.path(V1).exists()
    assert build_dirs(store) == []


async def test_a_failing_version_check_is_never_ready(tmp_path: Path) -> None:
    house = tmp_path / "broken"
    build_standin_wheel(house, V1, version_exit=3)
    store = ToolchainStore(tmp_path / "data", pip=PipOptions(find_links=(str(house),)))
    with pytest.raises(ProvisionError, match="exit 3") as e:
        await store.ensure(V1)
    assert e.value.stage == "check"
    assert store.ready_versions() == []
    assert build_dirs(store) == []


async def test_two_concurrent_provisions_run_pip_once(store: ToolchainStore) -> None:
    first, second = Log(), Log()
    a, b = await asyncio.gather(store.ensure(V1, on_line=first), store.ensure(V1, on_line=second))
    assert a == b
    installs = first.count(f"Successfully installed esphome-{V1}") + second.count(
        f"Successfully installed esphome-{V1}"
    )
    assert installs == 1
    assert second.count("being provisioned for another job; waiting") == 1
    assert len(build_dirs(store)) == 1
    # Ready now: a third call runs nothing at all.
    third = Log()
    await store.ensure(V1, on_line=third)
    assert third.lines == []


async def test_two_processes_provisioning_one_version_run_pip_once(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    house = tmp_path / "gated"
    build_standin_wheel(house, V1, gate=gate)
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(WORKER), "provision", str(data), str(house), V1]
    outputs: list[list[str]] = [[], []]

    async def run(index: int) -> int:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
        )
        assert proc.stdout is not None
        async for raw in proc.stdout:
            outputs[index].append(raw.decode().rstrip("\n"))
        return await proc.wait()

    first = asyncio.create_task(run(0))
    second: asyncio.Task[int] | None = None
    try:
        await wait_until(lambda: Path(f"{gate}.waiting").exists(), "the first process's check")
        second = asyncio.create_task(run(1))
        await wait_until(
            lambda: any("another meshd process is provisioning" in line for line in outputs[1]),
            "the second process to wait for the first",
        )
        gate.touch()
        assert await first == 0, outputs[0]
        assert await second == 0, outputs[1]
    finally:
        gate.touch()
        for task in (first, second):
            if task is not None and not task.done():
                task.cancel()
    every_line = outputs[0] + outputs[1]
    assert sum(f"Successfully installed esphome-{V1}" in line for line in every_line) == 1
    assert outputs[0][-1].startswith("READY ") and outputs[1][-1].startswith("READY ")
    assert ToolchainStore(data).ready_versions() == [V1]


class StalledIndex:
    """An HTTP "package index" on 127.0.0.1 that takes requests and never answers."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request_line = await reader.readline()
            self.requests.append(request_line.decode("latin-1").strip())
            await asyncio.Event().wait()  # a network that has gone quiet
        finally:
            writer.close()
            self._handlers.discard(task)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StalledIndex]:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/simple"
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()


async def test_cancel_while_pip_waits_on_the_network_leaves_nothing(
    tmp_path: Path, wheelhouse: Path
) -> None:
    data = tmp_path / "data"
    async with StalledIndex().running() as index:
        store = ToolchainStore(data, pip=PipOptions(index_url=index.url), kill_grace=2.0)
        log = Log()
        task = asyncio.create_task(store.ensure(V1, on_line=log))
        await wait_until(lambda: bool(index.requests), "pip to ask the index")
        assert "/simple/esphome/" in index.requests[0]
        assert processes_mentioning(str(store.root)), "pip should be running"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert processes_mentioning(str(store.root)) == []
    assert not store.is_ready(V1)
    assert not store.path(V1).exists()
    assert build_dirs(store) == []
    assert log.count("ready") == 0
    # The locks were released: the same version provisions at once from a wheelhouse.
    retry = ToolchainStore(data, pip=PipOptions(find_links=(str(wheelhouse),)))
    assert (await retry.ensure(V1)).path == retry.path(V1)
    assert retry.ready_versions() == [V1]


async def test_cancel_during_the_version_check_leaves_nothing(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    house = tmp_path / "gated"
    build_standin_wheel(house, V1, gate=gate)
    store = ToolchainStore(
        tmp_path / "data", pip=PipOptions(find_links=(str(house),)), kill_grace=2.0
    )
    groups: list[int] = []
    task = asyncio.create_task(store.ensure(V1, on_process=groups.append))
    waiting = Path(f"{gate}.waiting")
    await wait_until(waiting.exists, "the version check")
    checker = int(waiting.read_text())
    # venv, pip, then the check: each child's process group was reported as it started.
    assert len(groups) == 3 and groups[-1] == checker
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not Path(f"/proc/{checker}").exists()
    assert not store.is_ready(V1)
    assert not store.path(V1).exists()
    assert build_dirs(store) == []


async def test_a_version_check_that_never_answers_fails(tmp_path: Path) -> None:
    gate = tmp_path / "never"
    house = tmp_path / "hangs"
    build_standin_wheel(house, V1, gate=gate)
    store = ToolchainStore(
        tmp_path / "data",
        pip=PipOptions(find_links=(str(house),)),
        kill_grace=1.0,
        check_timeout=1.0,
    )
    with pytest.raises(ProvisionError, match="did not answer within 1 s") as e:
        await store.ensure(V1)
    assert e.value.stage == "check"
    checker = int(Path(f"{gate}.waiting").read_text())
    assert not Path(f"/proc/{checker}").exists()
    assert store.ready_versions() == []
    assert build_dirs(store) == []


async def test_empty_wheelhouse_gives_pips_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    store = ToolchainStore(tmp_path / "data", pip=PipOptions(find_links=(str(empty),)))
    log = Log()
    with pytest.raises(ProvisionError) as e:
        await store.ensure(V1, on_line=log)
    assert e.value.stage == "pip"
    message = str(e.value)
    assert f"pip install esphome=={V1} failed" in message
    assert f"No matching distribution found for esphome=={V1}" in message
    assert "No matching distribution found" in log.text  # pip's own lines reached the log
    assert store.ready_versions() == []
    assert build_dirs(store) == []


async def test_corrupt_wheel_gives_pips_reason(tmp_path: Path) -> None:
    house = tmp_path / "corrupt"
    house.mkdir()
    (house / f"esphome-{V1}-py3-none-any.whl").write_bytes(b"this is not a zip file" * 100)
    store = ToolchainStore(tmp_path / "data", pip=PipOptions(find_links=(str(house),)))
    with pytest.raises(ProvisionError) as e:
        await store.ensure(V1)
    assert e.value.stage == "pip"
    # pip's own words: "ERROR: Wheel 'esphome' located at <path> is invalid."
    assert f"esphome-{V1}-py3-none-any.whl is invalid" in str(e.value)
    assert store.ready_versions() == []
    assert build_dirs(store) == []


async def test_missing_python_is_a_clear_error(tmp_path: Path, wheelhouse: Path) -> None:
    store = ToolchainStore(
        tmp_path / "data",
        pip=PipOptions(find_links=(str(wheelhouse),)),
        python=str(tmp_path / "no-such-python"),
    )
    with pytest.raises(ProvisionError, match=r"cannot run .*no-such-python") as e:
        await store.ensure(V1)
    assert e.value.stage == "venv"
    assert build_dirs(store) == []


async def test_venv_with_its_own_pip(tmp_path: Path, wheelhouse: Path) -> None:
    """A daemon without a usable pip of its own: the venv's bundled pip installs."""
    store = ToolchainStore(
        tmp_path / "data", pip=PipOptions(find_links=(str(wheelhouse),)), use_host_pip=False
    )
    toolchain = await store.ensure(V2)
    assert (toolchain.path / "bin" / "pip").exists()
    assert store.ready_versions() == [V2]


async def test_bad_version_touches_nothing(store: ToolchainStore) -> None:
    for bad in ("2026.6.5; rm -rf /", "../../escape", "2026.6.5 --pre"):
        with pytest.raises(ToolchainVersionError):
            await store.ensure(bad)
        with pytest.raises(ToolchainVersionError):
            async with store.use(bad):
                pass
    assert not store.root.exists()


async def test_leftovers_of_a_crashed_provisioning_are_replaced(store: ToolchainStore) -> None:
    """A daemon killed mid-provision left a build dir and a link to it, no marker."""
    builds = store.root / BUILDS_DIR
    dead = builds / f"esphome-{V1}.deadbeef"
    (dead / "bin").mkdir(parents=True)
    (dead / "bin" / "esphome").write_text("#!/bin/sh\necho Version: 2099.1.0\n")
    store.path(V1).symlink_to(dead.relative_to(store.root))
    assert not store.is_ready(V1)
    toolchain = await store.ensure(V1)
    assert not dead.exists()
    assert toolchain.path.resolve().parent == builds.resolve()
    assert len(build_dirs(store)) == 1


# -- leases and sweeps ------------------------------------------------------------------


async def test_sweep_removes_unused_and_never_a_leased_one(store: ToolchainStore) -> None:
    await store.ensure(V1)
    await store.ensure(V2)
    far_future = time.time() + 365 * DAY
    everything = SweepPolicy(max_idle=0, disk_budget=0)
    async with store.use(V1) as leased:
        assert store.in_use(V1)
        report = await store.sweep(everything, now=far_future)
        decisions = {d.version: d for d in report.decisions}
        assert decisions[V2].remove and "unused for" in decisions[V2].reason
        assert not decisions[V1].remove and decisions[V1].reason == "in use"
        assert store.ready_versions() == [V1]
        # Still runnable while leased.
        subprocess.run([*leased.esphome, "version"], check=True, capture_output=True)
    assert not store.in_use(V1)
    report = await store.sweep(everything, now=far_future)
    assert report.removed == (V1,)
    assert store.ready_versions() == []
    assert build_dirs(store) == []


async def test_watchers_hear_of_ready_and_swept_toolchains_most_recent_first(
    store: ToolchainStore,
) -> None:
    heard: list[list[str]] = []
    remove = store.watch(lambda: heard.append(store.recent_versions()))
    await store.ensure(V1)
    await store.ensure(V2)
    assert heard == [[V1], [V2, V1]]  # newest provisioned first
    hour_ago = time.time() - 3600
    os.utime(store.path(V2) / LAST_USED, (hour_ago, hour_ago))
    async with store.use(V1):
        pass  # a lease moves V1 to the front (what a bounded advert keeps)
    assert store.recent_versions() == [V1, V2]
    await store.ensure(V1)  # already ready: no change to announce
    assert len(heard) == 2
    report = await store.sweep(SweepPolicy(max_idle=0, disk_budget=None), now=time.time() + DAY)
    assert set(report.removed) == {V1, V2}
    assert heard[-1] == [] and len(heard) == 3
    await store.sweep(SweepPolicy(max_idle=0, disk_budget=None))  # nothing removed
    assert len(heard) == 3
    remove()


async def test_sweep_keeps_recent_ones_within_budget(store: ToolchainStore) -> None:
    await store.ensure(V1)
    report = await store.sweep(SweepPolicy(max_idle=DAY, disk_budget=None))
    assert report.removed == ()
    assert store.ready_versions() == [V1]
    report = await store.sweep(SweepPolicy(max_idle=None, disk_budget=0))
    assert report.removed == (V1,)
    assert "disk budget" in report.decisions[0].reason


@pytest.fixture
def leasing_process(tmp_path: Path, store: ToolchainStore, wheelhouse: Path) -> Iterator[None]:
    """Another process holding a lease on V1 until the test ends."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(WORKER), "lease", str(store.root.parent), str(wheelhouse), V1]
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                if line.startswith(("LEASED", "FAILED")):
                    assert line.startswith("LEASED"), line
                    break
            yield
        finally:
            proc.stdin.close()  # the worker leaves its lease when its stdin closes
            proc.wait(timeout=WAIT)


async def test_sweep_never_removes_one_leased_by_another_process(
    store: ToolchainStore, leasing_process: None
) -> None:
    assert store.is_ready(V1)
    assert not store.in_use(V1)  # not in this process
    report = await store.sweep(SweepPolicy(max_idle=0, disk_budget=0), now=time.time() + DAY)
    assert report.removed == ()
    assert report.decisions[0].reason == "in use"
    assert store.is_ready(V1)


async def test_sweep_removes_a_ready_directory_that_is_not_a_link(store: ToolchainStore) -> None:
    """A toolchain laid down by hand (a real directory, not meshd's link) is swept too."""
    manual = store.path(V1)
    (manual / "bin").mkdir(parents=True)
    (manual / "bin" / "esphome").write_text("#!/bin/sh\necho Version: 2099.1.0\n")
    (manual / READY_MARKER).write_text(f'{{"esphome_version": "{V1}"}}')
    assert store.ready_versions() == [V1]
    report = await store.sweep(SweepPolicy(max_idle=0), now=time.time() + DAY)
    assert report.removed == (V1,)
    assert not manual.exists()


async def test_sweep_clears_unpublished_build_dirs(store: ToolchainStore) -> None:
    await store.ensure(V1)
    orphan = store.root / BUILDS_DIR / f"esphome-{V2}.0badc0de"
    (orphan / "lib").mkdir(parents=True)
    report = await store.sweep(SweepPolicy(max_idle=None, disk_budget=None))
    assert report.leftovers == (orphan.name,)
    assert not orphan.exists()
    assert store.ready_versions() == [V1]
