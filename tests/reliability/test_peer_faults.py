"""Peer faults with real ``meshd serve`` processes: what a mesh meets on a bad day.

Receivers die (SIGKILL) mid-compile and mid-artifact-transfer, freeze (SIGSTOP: silent
with the connection open), drop off the network (a namespace link down, then healed),
sit behind a slow link (``tc tbf`` on a veth), lose their offloader mid-build, or run
with a clock hours off. Each case ends with the job completed elsewhere or failed with a
clear reason within a bounded time (the waits are safety nets, not speed claims),
nothing hung, and nothing flashed twice: on loopback the device is an OTA emulator
whose own records are checked; inside namespaces the stand-in's upload journal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import HEARTBEAT, identity, link, node, remote_jobs, until, wait_peer
from tests.daemon.conftest import Meshd, MeshdFactory, host_config, pid_alive
from tests.support.mesh_netns import MeshNet, mesh_net, netns_permitted
from tests.support.ota_emulator import OtaDevices

ENDED = ("completed", "failed", "cancelled")
BOUND = 90.0  # every fault must end within this: a hang fails the test
_BUILD_RE = re.compile(r"standin build \w+ sha256 ([0-9a-f]{64})")


def _uploads(config: Path) -> list[dict[str, Any]]:
    journal = config.parent / ".esphome" / "standin-uploads.jsonl"
    return [json.loads(x) for x in journal.read_text().splitlines()] if journal.exists() else []


def _last_build(daemon: Meshd, compile_id: str) -> str:
    builds = _BUILD_RE.findall(daemon.cli("logs", compile_id).stdout)
    assert builds, daemon.cli("logs", compile_id).stdout
    return builds[-1]


def _offloader(meshd: MeshdFactory, *args: str, **kwargs: Any) -> Meshd:
    return node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local", *args, **kwargs)


def _receiver(meshd: MeshdFactory, name: str, *args: str, **kwargs: Any) -> Meshd:
    return node(meshd, name, "--no-offload", "--no-mdns", *args, **kwargs)


def _incoming(daemon: Meshd) -> bool:
    """Is a blob landing in the daemon's content store right now?"""
    return any((daemon.data_dir / "mesh" / "cas").glob("*/??/.incoming-*"))


@pytest.fixture
def device() -> Iterator[OtaDevices]:
    with OtaDevices(1) as devices:
        yield devices


def _flashed(devices: OtaDevices) -> list[str]:
    return [hashlib.sha256(i.data).hexdigest() for i in devices.images(0) if i.accepted]


@pytest.mark.slow
def test_receiver_killed_mid_compile(
    meshd: MeshdFactory, tmp_path: Path, device: OtaDevices
) -> None:
    first, second = _receiver(meshd, "first"), _receiver(meshd, "second")
    pi = _offloader(meshd)
    _, first_fp = link(pi, first)
    wait_peer(pi, first_fp, connected=True, idle=True)
    _, second_fp = link(pi, second)
    wait_peer(pi, second_fp, connected=True, idle=True)
    port = device.port(0)
    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=30, ota_port=port)
    ids = pi.cli_json("install", str(config), "--device", "127.0.0.1", "--detach")
    until(
        "compile running on first",
        lambda: any(j["status"] == "running" for j in remote_jobs(first)),
    )
    host_config(tmp_path / "cfg", "kitchen", compile_seconds=0.5, ota_port=port)
    first.kill()

    upload = pi.wait_status(ids["upload"], *ENDED, timeout=BOUND)
    assert upload["status"] == "completed"
    compiled = pi.job(ids["compile"])
    assert compiled["runner"] == second_fp
    assert compiled["args"]["excluded_receivers"] == [first_fp]
    assert _flashed(device) == [_last_build(pi, ids["compile"])], "once, with second's build"


@pytest.mark.slow
def test_receiver_killed_mid_artifact_transfer(meshd: MeshdFactory, tmp_path: Path) -> None:
    first, second = _receiver(meshd, "first"), _receiver(meshd, "second")
    pi = _offloader(meshd)
    _, first_fp = link(pi, first)
    wait_peer(pi, first_fp, connected=True, idle=True)
    _, second_fp = link(pi, second)
    wait_peer(pi, second_fp, connected=True, idle=True)
    config = host_config(tmp_path / "cfg", "big", compile_seconds=0.2, firmware_bytes=96 << 20)
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    until("artifacts on the way", lambda: _incoming(pi), timeout=BOUND)
    first.kill()

    upload = pi.wait_status(ids["upload"], *ENDED, timeout=BOUND)
    assert upload["status"] == "completed", pi.cli("logs", ids["compile"]).stdout
    compiled = pi.job(ids["compile"])
    assert compiled["runner"] == second_fp
    assert "lost receiver while pulling artifacts" in pi.cli("logs", ids["compile"]).stdout
    flashed = _uploads(config)
    assert [u["sha256"] for u in flashed] == [_last_build(pi, ids["compile"])]


@pytest.mark.slow
def test_sigstopped_receiver_is_given_up_and_cancels_when_it_wakes(
    meshd: MeshdFactory, tmp_path: Path, device: OtaDevices
) -> None:
    frozen, other = _receiver(meshd, "frozen"), _receiver(meshd, "other")
    pi = _offloader(meshd)
    _, frozen_fp = link(pi, frozen)
    wait_peer(pi, frozen_fp, connected=True, idle=True)
    _, other_fp = link(pi, other)
    wait_peer(pi, other_fp, connected=True, idle=True)
    port = device.port(0)
    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=8, ota_port=port)
    ids = pi.cli_json("install", str(config), "--device", "127.0.0.1", "--detach")
    until("compile running", lambda: any(j["status"] == "running" for j in remote_jobs(frozen)))
    host_config(tmp_path / "cfg", "kitchen", compile_seconds=0.5, ota_port=port)
    assert frozen.proc is not None
    os.kill(frozen.proc.pid, signal.SIGSTOP)  # silent, its connection still open
    try:
        upload = pi.wait_status(ids["upload"], *ENDED, timeout=BOUND)
        assert upload["status"] == "completed"
        assert pi.job(ids["compile"])["runner"] == other_fp
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    # Awake again, it learns its offloader's session is gone and drops the compile.
    until(
        "the frozen receiver cancels the orphaned compile",
        lambda: [j["status"] for j in remote_jobs(frozen)] == ["cancelled"],
        timeout=BOUND,
    )
    assert _flashed(device) == [_last_build(pi, ids["compile"])]


def test_offloader_killed_mid_build_the_receiver_cancels_and_cleans_up(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "desk-journal.jsonl"
    # The stand-in's journal is a file of this test's: a sandboxed build neither sees
    # STANDIN_JOURNAL (the sandbox clears the environment) nor may write there.
    desk = _receiver(meshd, "desk", "--unsafe-no-sandbox", env={"STANDIN_JOURNAL": str(journal)})
    pi = _offloader(meshd)
    _, desk_fp = link(pi, desk)
    wait_peer(pi, desk_fp, connected=True, idle=True)
    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=60)
    pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    until(
        "remote compile running", lambda: any(j["status"] == "running" for j in remote_jobs(desk))
    )
    # The job is running a moment before the stand-in has written its journal line.
    until(
        "the compiler's journal line",
        lambda: journal.exists() and '"compile"' in journal.read_text(),
    )
    compiler = next(json.loads(x) for x in journal.read_text().splitlines() if '"compile"' in x)
    pi.kill()

    until(
        "receiver cancels the compile of a vanished offloader",
        lambda: [j["status"] for j in remote_jobs(desk)] == ["cancelled"],
        timeout=BOUND,
    )
    until("its esphome is gone", lambda: not pid_alive(compiler["pid"]), timeout=BOUND)
    status = desk.cli_json("status")
    assert status["lanes"]["compile"]["idle"], "the receiver's lane is free again"


needs_faketime = pytest.mark.skipif(
    shutil.which("faketime") is None, reason="libfaketime (apt: faketime) is not installed"
)


@needs_faketime
@pytest.mark.slow
def test_a_receiver_whose_clock_is_hours_off_does_not_jump_the_queue(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    """Its lane_status claims it has been idle for hours; the offloader uses its own clock."""
    honest = _receiver(meshd, "honest")
    skewed = meshd(
        "skewed",
        args=(
            "--name",
            "skewed",
            "--heartbeat",
            HEARTBEAT,
            "--no-offload",
            "--no-mdns",
            # faketime's LD_PRELOAD does not reach a build the sandbox starts afresh
            "--unsafe-no-sandbox",
        ),
        wrap=("faketime", "-m", "--exclude-monotonic", "-f", "-5h"),
    ).start()
    pi = _offloader(meshd)
    _, honest_fp = link(pi, honest)
    wait_peer(pi, honest_fp, connected=True, idle=True)
    _, skewed_fp = link(pi, skewed)  # idle for less time, as far as pi can tell
    seen = wait_peer(pi, skewed_fp, connected=True, idle=True)
    honest_seen = wait_peer(pi, honest_fp, connected=True, idle=True)
    assert seen["claimed_idle_since"] < honest_seen["claimed_idle_since"] - 4 * 3600
    assert seen["idle_since"] > honest_seen["idle_since"]

    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=0.2)
    ids = pi.cli_json("compile", str(config), "--detach")
    job = pi.wait_status(ids["compile"], *ENDED, timeout=BOUND)
    assert job["status"] == "completed" and job["runner"] == honest_fp
    # And a build on the skewed receiver still works (time only orders the queue).
    second = host_config(tmp_path / "cfg", "hall", compile_seconds=3)
    third = host_config(tmp_path / "cfg", "porch", compile_seconds=3)
    a = pi.cli_json("compile", str(second), "--detach")["compile"]
    b = pi.cli_json("compile", str(third), "--detach")["compile"]
    runners = {pi.wait_status(j, *ENDED, timeout=BOUND)["runner"] for j in (a, b)}
    assert runners == {honest_fp, skewed_fp}


# -- inside network namespaces ----------------------------------------------------------

needs_netns = pytest.mark.skipif(netns_permitted() is not None, reason=str(netns_permitted()))


def _ns_node(meshd: MeshdFactory, net: MeshNet, i: int, name: str, *args: str) -> Meshd:
    address = net.address(i)
    daemon = meshd(
        name,
        args=(
            "--name",
            name,
            "--heartbeat",
            HEARTBEAT,
            "--no-mdns",
            "--peer-listen",
            f"{address}:0",
            *args,
        ),
        wrap=tuple(net.exec_prefix(i)),
        cli_wrap=tuple(net.exec_prefix(i)),
    )
    return daemon.start()


def _ns_link(pi: Meshd, receiver: Meshd, address: str) -> str:
    rx, ox = identity(receiver), identity(pi)
    trusted = pi.cli(
        "trust", rx["fingerprint"], "--no-send-work", "--address", f"{address}:{rx['peer_port']}"
    )
    assert trusted.returncode == 0, trusted.stderr
    assert receiver.cli("trust", ox["fingerprint"], "--no-build-for-me").returncode == 0
    fingerprint: str = rx["fingerprint"]
    return fingerprint


@needs_netns
@pytest.mark.slow
def test_partition_mid_transfer_then_heal(meshd: MeshdFactory, tmp_path: Path) -> None:
    with mesh_net(3) as net:
        pi = _ns_node(meshd, net, 0, "pi", "--no-receiver", "--no-include-local")
        cut = _ns_node(meshd, net, 1, "cut", "--no-offload")
        other = _ns_node(meshd, net, 2, "other", "--no-offload")
        cut_fp = _ns_link(pi, cut, net.address(1))
        wait_peer(pi, cut_fp, connected=True, idle=True)
        other_fp = _ns_link(pi, other, net.address(2))
        wait_peer(pi, other_fp, connected=True, idle=True)
        config = host_config(tmp_path / "cfg", "big", compile_seconds=0.2, firmware_bytes=96 << 20)
        ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
        until("artifacts on the way", lambda: _incoming(pi), timeout=BOUND)
        net.partition(1)
        try:
            upload = pi.wait_status(ids["upload"], *ENDED, timeout=BOUND)
            assert upload["status"] == "completed", pi.cli("logs", ids["compile"]).stdout
            assert pi.job(ids["compile"])["runner"] == other_fp
            wait_peer(pi, cut_fp, connected=False)
        finally:
            net.heal(1)
        wait_peer(pi, cut_fp, connected=True)  # healed: back, and usable again
        assert [u["sha256"] for u in _uploads(config)] == [_last_build(pi, ids["compile"])]
        for daemon in (pi, cut, other):
            daemon.kill()
    assert net.leftovers() == [], "every namespace is deleted"


@needs_netns
@pytest.mark.slow
def test_slow_link_delivers_without_a_false_disconnect(meshd: MeshdFactory, tmp_path: Path) -> None:
    with mesh_net(2) as net:
        pi = _ns_node(meshd, net, 0, "pi", "--no-receiver", "--no-include-local")
        desk = _ns_node(meshd, net, 1, "desk", "--no-offload")
        desk_fp = _ns_link(pi, desk, net.address(1))
        wait_peer(pi, desk_fp, connected=True, idle=True)
        # 16 Mbit/s with a shallow queue, like a congested Wi-Fi hop: 6 MiB takes ~3 s.
        subprocess.run(
            ["ip", "netns", "exec", net.bridge, "tc", "qdisc", "add", "dev", "p0", "root",
             "tbf", "rate", "16mbit", "burst", "32kb", "latency", "50ms"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        config = host_config(tmp_path / "cfg", "big", compile_seconds=0.2, firmware_bytes=6 << 20)
        ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
        upload = pi.wait_status(ids["upload"], *ENDED, timeout=BOUND)
        log = pi.cli("logs", ids["compile"]).stdout
        assert upload["status"] == "completed", log
        assert "re-routing" not in log, "a slow link is not a lost receiver"
        assert pi.job(ids["compile"])["runner"] == desk_fp
        assert [u["sha256"] for u in _uploads(config)] == [_last_build(pi, ids["compile"])]
        for daemon in (pi, desk):
            daemon.kill()
    assert net.leftovers() == [], "every namespace is deleted"
