"""Version-matched remote builds between real ``meshd serve`` processes, offline.

The offloaders run the stand-in esphome A (its default); the receiver's own esphome is
B. A receiver provisions from a wheelhouse the test writes (``--toolchain-find-links``:
pip runs with ``--no-index``, nothing is downloaded) holding a stand-in esphome wheel
for A that hands every command but ``version`` to the stand-in CLI, so the build really
runs in the provisioned venv. That hand-over goes to a CLI outside the venv, which the
build sandbox rightly does not lend, so receivers that build run ``--unsafe-no-sandbox``;
``test_a_sandboxed_peer_build_runs_the_provisioned_esphome`` checks the sandboxed path
with a wheel that does not hand over. The in-process twins of these tests are in
tests/mesh/test_remote_versions.py; the store's own (locks, two processes, the sweep
plan) in tests/toolchain/test_versions.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from zeroconf import ServiceInfo, Zeroconf

from meshd.mesh.peering.discovery import SERVICE_TYPE, instance_label, parse_advert
from meshd.toolchain.storage import load_storage
from tests.cluster.conftest import WAIT, identity, link, node, remote_jobs, until, wait_peer
from tests.daemon.conftest import REPO, STANDIN, Meshd, MeshdFactory, host_config
from tests.support.mesh_netns import loopback_multicast_works
from tests.support.standin_wheel import build_standin_wheel

A = "2026.6.5"  # the stand-in's default: the offloaders'
B = "2026.5.2"  # the receiver's own
ON_B = {"STANDIN_ESPHOME_VERSION": B}
ENDED = ("completed", "failed", "cancelled")
WORKER = REPO / "tests" / "toolchain" / "versions_worker.py"


def wheelhouse(tmp_path: Path, *versions: str, gate: Path | None = None) -> Path:
    house = tmp_path / "wheelhouse"
    for version in versions or (A,):
        build_standin_wheel(house, version, delegate=STANDIN, gate=gate)
    return house


def toolchains(daemon: Meshd) -> Path:
    return daemon.data_dir / "toolchains"


def ready(daemon: Meshd, version: str) -> bool:
    """Published and marked ready, as the store decides (the marker names the version)."""
    published = toolchains(daemon) / f"esphome-{version}"
    try:
        marker = json.loads((published.resolve(strict=True) / ".meshd-toolchain.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(marker.get("esphome_version") == version)


def builds(daemon: Meshd) -> list[str]:
    directory = toolchains(daemon) / ".builds"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def job_log(daemon: Meshd, job_id: str) -> str:
    return daemon.cli("logs", job_id).stdout


def pip_runs(log: str) -> int:
    return log.count(f"[meshd] pip install esphome=={A}")


def processes_mentioning(*texts: str) -> list[int]:
    """Pids whose command line contains every one of ``texts``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if all(text.encode() in cmdline for text in texts):
                    found.append(int(entry.name))
    return found


@contextlib.contextmanager
def browser() -> Iterator[Zeroconf | None]:
    """A zeroconf pinned to 127.0.0.1 reading receivers' TXT, or None when multicast
    does not loop back here (then the advert checks are skipped, not the test)."""
    if not loopback_multicast_works():
        yield None
        return
    zc = Zeroconf(interfaces=["127.0.0.1"])
    try:
        yield zc
    finally:
        zc.close()


def advert_of(zc: Zeroconf, daemon: Meshd) -> dict[str, str]:
    """The receiver's TXT as this process sees it now (it must parse as an advert)."""
    me = identity(daemon)
    name = f"{instance_label(me['name'], me['fingerprint'])}.{SERVICE_TYPE}"
    info = ServiceInfo(SERVICE_TYPE, name)
    if not info.request(zc, 3000):
        return {}
    parse_advert(name, info.properties, addresses=["127.0.0.1"], port=info.port)
    return {k.decode(): (v or b"").decode() for k, v in info.properties.items()}


def wait_advert(zc: Zeroconf | None, daemon: Meshd, **wanted: str | None) -> None:
    if zc is None:
        return
    seen: list[dict[str, str]] = [{}]

    def matches() -> bool:
        seen[0] = advert_of(zc, daemon)
        return bool(seen[0]) and all(seen[0].get(k) == v for k, v in wanted.items())

    try:
        until(f"advert with {wanted}", matches)
    except TimeoutError:
        raise AssertionError(f"advert now: {seen[0]}") from None


def offloader(meshd: MeshdFactory, name: str, *args: str) -> Meshd:
    return node(meshd, name, "--no-receiver", "--no-mdns", *args)


@pytest.mark.slow
def test_the_receiver_provisions_the_offloaders_version_once_for_two_offloaders(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    # The wheel's `esphome version` waits for `gate`: provisioning is held in its version
    # check until the second offloader's job is waiting for the same version too.
    gate = tmp_path / "gate"
    house = wheelhouse(tmp_path, gate=gate)
    rx = node(
        meshd,
        "rx",
        "--no-offload",
        "--unsafe-no-sandbox",
        "--toolchain-find-links",
        str(house),
        env=ON_B,
    )
    first = offloader(meshd, "first", "--no-include-local")
    second = offloader(meshd, "second", "--no-include-local")
    _, rx_fp = link(first, rx)
    link(second, rx)
    for each in (first, second):
        wait_peer(each, rx_fp, connected=True, idle=True, provisions=True, esphome_version=B)
    with browser() as zc:
        wait_advert(zc, rx, prov="1", esphome=B, tc=None)

        kitchen = host_config(tmp_path / "cfg1", "kitchen")
        porch = host_config(tmp_path / "cfg2", "porch")
        one = first.cli_json("compile", str(kitchen), "--detach")["compile"]
        until("provisioning held in the version check", Path(f"{gate}.waiting").exists)
        assert not ready(rx, A)
        two = second.cli_json("compile", str(porch), "--detach")["compile"]
        gate.touch()
        for daemon, job_id in ((first, one), (second, two)):
            done = daemon.wait_status(job_id, *ENDED, timeout=WAIT * 3)
            assert done["status"] == "completed", (done, job_log(daemon, job_id), rx.log())
            assert done["runner"] == rx_fp

        # One pip run, in the first job's log, with each step of provisioning.
        logs = {j["args"]["offloader"]: job_log(rx, j["id"]) for j in remote_jobs(rx)}
        assert len(logs) == 2
        by_first = logs[identity(first)["fingerprint"]]
        by_second = logs[identity(second)["fingerprint"]]
        assert (pip_runs(by_first), pip_runs(by_second)) == (1, 0), by_first + by_second
        steps = [
            f"[meshd] provisioning esphome {A} in {toolchains(rx) / f'esphome-{A}'}",
            f"[meshd] pip install esphome=={A}",
            f"[meshd] checking that `esphome version` answers {A}",
            f"Version: {A}",
            f"[meshd] esphome {A} ready (",
            f"[meshd] building with esphome {A} from {toolchains(rx) / f'esphome-{A}'}",
        ]
        positions = [by_first.find(step) for step in steps]
        assert -1 not in positions and positions == sorted(positions), by_first
        assert f"[meshd] building with esphome {A} from" in by_second
        # On disk: one build directory, published and marked ready for A.
        assert ready(rx, A) and len(builds(rx)) == 1
        # The offloaders got firmware built by A (esphome's own build record says so).
        assert load_storage(kitchen).esphome_version == A
        assert load_storage(porch).esphome_version == A
        # The receiver tells both ways that A is ready: lane_status and its mDNS TXT.
        wait_peer(first, rx_fp, toolchains=[A])
        wait_advert(zc, rx, prov="1", tc=A)


def test_a_sandboxed_peer_build_runs_the_provisioned_esphome(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    # The wheel's esphome knows only `version`; for `compile` it says so and exits 2.
    # That answer proves the sandbox lent the provisioned venv and ran its program.
    house = tmp_path / "wheelhouse"
    build_standin_wheel(house, A)
    rx = node(
        meshd, "rx", "--no-offload", "--no-mdns", "--toolchain-find-links", str(house), env=ON_B
    )
    pi = offloader(meshd, "pi", "--no-include-local")
    _, rx_fp = link(pi, rx)
    wait_peer(pi, rx_fp, connected=True, idle=True, provisions=True)
    assert "bubblewrap" in str(rx.cli_json("status")["node"]["sandbox"])
    ids = pi.cli_json("compile", str(host_config(tmp_path / "cfg", "kitchen")), "--detach")
    pi.wait_status(ids["compile"], *ENDED)
    [remote] = remote_jobs(rx)
    log = job_log(rx, remote["id"])
    assert "/usr/bin/bwrap" in log and f"[meshd] esphome {A} ready" in log
    assert f"stand-in esphome {A}: unsupported command" in log, log
    assert "No such file or directory" not in log


def test_under_release_a_provisioning_receiver_on_another_release_is_skipped(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    house = wheelhouse(tmp_path)
    rx = node(
        meshd, "rx", "--no-offload", "--no-mdns", "--toolchain-find-links", str(house), env=ON_B
    )
    pi = offloader(meshd, "pi", "--version-policy", "release")
    _, rx_fp = link(pi, rx)
    wait_peer(pi, rx_fp, connected=True, idle=True, provisions=True)
    ids = pi.cli_json("compile", str(host_config(tmp_path / "cfg", "kitchen")), "--detach")
    done = pi.wait_status(ids["compile"], *ENDED)
    assert done["status"] == "completed" and done["runner"] == "local"
    assert remote_jobs(rx) == []
    assert not toolchains(rx).exists() or builds(rx) == []


def test_a_version_the_receiver_refuses_is_rejected_and_built_locally(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    # The offloader takes any receiver; this one builds only its own release and
    # provisions nothing, so it answers the request for A with version_mismatch.
    rx = node(
        meshd,
        "rx",
        "--no-offload",
        "--no-mdns",
        "--no-toolchain-provision",
        "--version-policy",
        "release",
        env=ON_B,
    )
    pi = offloader(meshd, "pi", "--version-policy", "any")
    _, rx_fp = link(pi, rx)
    wait_peer(pi, rx_fp, connected=True, idle=True, provisions=False, esphome_version=B)
    ids = pi.cli_json("compile", str(host_config(tmp_path / "cfg", "kitchen")), "--detach")
    done = pi.wait_status(ids["compile"], *ENDED)
    log = job_log(pi, ids["compile"])
    assert done["status"] == "completed" and done["runner"] == "local", (done, log)
    assert "re-routing (attempt 1)" in log
    assert f"version_mismatch: this receiver runs esphome {B}, not {A}" in log
    assert remote_jobs(rx) == []  # refused before anything was adopted


@contextlib.contextmanager
def stalled_index() -> Iterator[tuple[str, socket.socket]]:
    """A package index that takes connections (the kernel's backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/simple", server
    finally:
        server.close()


@pytest.mark.slow
def test_cancel_during_provisioning_leaves_nothing_ready_and_the_receiver_serves_on(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    with stalled_index() as (url, _server):
        rx = node(meshd, "rx", "--no-offload", "--no-mdns", "--toolchain-index-url", url, env=ON_B)
        pi = offloader(meshd, "pi", "--no-include-local")
        _, rx_fp = link(pi, rx)
        wait_peer(pi, rx_fp, connected=True, idle=True, provisions=True)
        ids = pi.cli_json("compile", str(host_config(tmp_path / "cfg", "kitchen")), "--detach")
        remote = until("the receiver's copy", lambda: remote_jobs(rx) or None)[0]
        until("pip waiting on the index", lambda: pip_runs(job_log(rx, remote["id"])) == 1)
        pip = (f"esphome=={A}", str(rx.data_dir))  # this receiver's pip, nobody else's
        until("pip running", lambda: processes_mentioning(*pip) or None)

        assert pi.cli("cancel", ids["compile"]).returncode == 0
        assert pi.wait_status(ids["compile"], *ENDED)["status"] == "cancelled"
        until(
            "the receiver's copy cancelled",
            lambda: [j["status"] for j in remote_jobs(rx)] == ["cancelled"],
        )
        # pip's process group is gone and so is its half-built venv; nothing is ready.
        until("pip gone", lambda: not processes_mentioning(*pip))
        assert not ready(rx, A)
        assert builds(rx) == [] and not (toolchains(rx) / f"esphome-{A}").exists()
        assert f"[meshd] esphome {A} ready" not in job_log(rx, remote["id"])

        # The receiver's compile lane is free: its own next job runs and completes.
        own = rx.cli_json("compile", str(host_config(tmp_path / "own", "desk")), "--detach")
        assert rx.wait_status(own["compile"], *ENDED)["status"] == "completed"
        wait_peer(pi, rx_fp, connected=True, idle=True, toolchains=[])


def _worker(command: str, data_dir: Path, house: Path, version: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(WORKER), command, str(data_dir), str(house), version]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)


def _await_line(proc: subprocess.Popen[str], prefix: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith((prefix, "FAILED")):
            assert line.startswith(prefix), line
            return
    raise AssertionError(f"worker ended without {prefix} (exit {proc.wait()})")


@pytest.mark.slow
def test_the_daemons_sweep_removes_an_unused_toolchain_never_a_leased_one(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    """The daemon sweeps at start and then hourly (``--toolchain-max-idle``,
    ``--toolchain-disk-budget``). At start no job of its own can hold a toolchain, so
    the lease here is another process's (a store shared by two processes); a lease
    held by the daemon's own running job is covered by the store's tests."""
    old, kept = "2099.1.0", "2099.2.0"
    house = wheelhouse(tmp_path, old, kept)
    data = tmp_path / "rx"
    for version in (old, kept):
        with _worker("provision", data, house, version) as proc:
            _await_line(proc, "READY")
    long_ago = time.time() - 3 * 24 * 3600
    for version in (old, kept):
        os.utime(data / "toolchains" / f"esphome-{version}" / ".meshd-last-used", (long_ago,) * 2)
    with _worker("lease", data, house, kept) as lease:
        try:
            _await_line(lease, "LEASED")
            with browser() as zc:
                rx = node(meshd, "rx", "--no-offload", "--toolchain-max-idle", "1d", env=ON_B)
                until(
                    "the start-up sweep",
                    lambda: f"removed the unused toolchain esphome {old}" in rx.log(),
                )
                assert not ready(rx, old) and not (toolchains(rx) / f"esphome-{old}").exists()
                assert ready(rx, kept) and len(builds(rx)) == 1
                # The advert follows the sweep: only the kept one is named.
                wait_advert(zc, rx, prov="1", tc=kept)
        finally:
            assert lease.stdin is not None
            lease.stdin.close()  # the worker leaves its lease when its stdin closes
            lease.wait(timeout=WAIT)
