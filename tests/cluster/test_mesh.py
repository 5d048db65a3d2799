"""The mesh between real ``meshd serve`` processes: discovery, idleness, dispatch,
failure handling. Stand-in esphome (fixed compile times); the real-firmware path is in
test_real_firmware.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import (
    identity,
    link,
    node,
    peer,
    remote_jobs,
    until,
    wait_peer,
)
from tests.daemon.conftest import MeshdFactory, host_config
from tests.support.mesh_netns import loopback_multicast_works

needs_multicast = pytest.mark.skipif(
    not loopback_multicast_works(),
    reason="multicast on loopback does not work here; run the suite via scripts/test",
)


def uploads(config: Path) -> list[dict[str, str]]:
    log = config.parent / ".esphome" / "standin-uploads.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


@needs_multicast
def test_discovery_idleness_goodbye_and_heartbeat(meshd: MeshdFactory, tmp_path: Path) -> None:
    pi = node(meshd, "pi", "--no-receiver")
    desk = node(meshd, "desk", "--no-offload")  # started after the offloader
    desk_fp = identity(desk)["fingerprint"]

    # Found by mDNS alone: listed with its advertised facts, but not trusted or linked.
    found = wait_peer(pi, desk_fp, name="desk")
    assert found["esphome_version"] == "2026.6.5" and found["accepts_builds"]
    assert "mdns" in found["sources"] and found["idle"] is True
    assert found["trusted"] is False and found["connected"] is False
    assert found["addresses"] == [f"127.0.0.1:{identity(desk)['peer_port']}"]

    link(pi, desk, address=False)  # the address comes from mDNS
    before = wait_peer(pi, desk_fp, trusted=True, connected=True, idle=True)

    # A compile on the receiver flips its idle flag on the offloader, and back.
    config = host_config(tmp_path / "cfg", "busy", compile_seconds=3)
    job_id = desk.cli_json("compile", str(config), "--detach")["compile"]
    wait_peer(pi, desk_fp, idle=False)
    desk.wait_status(job_id, "completed")
    after = wait_peer(pi, desk_fp, idle=True)
    assert after["idle_since"] > before["idle_since"]

    # A frozen receiver is silent: the heartbeat bound marks it disconnected.
    assert desk.proc is not None
    os.kill(desk.proc.pid, signal.SIGSTOP)
    try:
        silent = until("heartbeat timeout", lambda: peer(pi, desk_fp, connected=False), 30)
        assert silent["last_error"], "the reason for the disconnect is shown"
    finally:
        os.kill(desk.proc.pid, signal.SIGCONT)
    wait_peer(pi, desk_fp, connected=True)

    # A receiver that stops says goodbye. Being trusted, it stays listed: not connected,
    # no longer from mDNS, with when it was last heard from.
    assert desk.terminate() == 0
    gone = until(
        "goodbye",
        lambda: peer(pi, desk_fp, connected=False, trusted=True, idle=False, sources=["trust"]),
        30,
    )
    assert gone["last_seen"] is not None and gone["name"] == "desk"


def test_pairing_updates_both_peer_lists_at_once(meshd: MeshdFactory) -> None:
    """Right after `pair join`, each side lists the other as trusted (issue 14)."""
    desk = node(meshd, "desk", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns")
    window = desk.cli_json("pair", "open", "--ttl", "60")
    joined = pi.cli_json("pair", "join", f"127.0.0.1:{identity(desk)['peer_port']}", window["code"])
    pi_fp = identity(pi)["fingerprint"]
    # No waiting: the pairing itself updated the receiver's registry.
    listed = peer(desk, pi_fp)
    assert listed is not None and listed["trusted"] is True, desk.cli_json("peers")
    assert listed["name"] == "pi"
    assert peer(pi, joined["fingerprint"], trusted=True) is not None
    # The receiver stops: the offloader keeps it, trusted and not connected.
    wait_peer(pi, joined["fingerprint"], connected=True)
    assert desk.terminate() == 0
    stopped = wait_peer(pi, joined["fingerprint"], connected=False, trusted=True)
    assert stopped["last_error"] is not None or stopped["last_seen"] is not None


@needs_multicast
def test_untrusted_receiver_is_listed_but_never_used(meshd: MeshdFactory, tmp_path: Path) -> None:
    pi = node(meshd, "pi", "--no-receiver")
    stranger = node(meshd, "stranger", "--no-offload")
    stranger_fp = identity(stranger)["fingerprint"]
    wait_peer(pi, stranger_fp, trusted=False, connected=False)
    config = host_config(tmp_path / "cfg", "lonely")
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.1", "--detach")
    job = pi.wait_status(ids["compile"], "completed", "failed", "cancelled")
    assert job["status"] == "completed" and job["runner"] == "local"
    assert "no eligible receiver" in job["reason"] and "not trusted" in job["reason"]
    assert remote_jobs(stranger) == []
    assert peer(pi, stranger_fp, connected=False) is not None


def test_static_peer_with_mdns_disabled(meshd: MeshdFactory, tmp_path: Path) -> None:
    desk = node(meshd, "desk", "--no-offload", "--no-mdns")
    port = identity(desk)["peer_port"]
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--peer", f"127.0.0.1:{port}")
    link(pi, desk, address=False)  # only the static --peer says where desk is
    desk_fp = identity(desk)["fingerprint"]
    linked = wait_peer(pi, desk_fp, connected=True, trusted=True)
    assert "static" in linked["sources"] and "mdns" not in linked["sources"]

    config = host_config(tmp_path / "cfg", "kitchen")
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.7", "--detach")
    upload = pi.wait_status(ids["upload"], "completed", "failed", "cancelled")
    assert upload["status"] == "completed"
    compiled = pi.job(ids["compile"])
    assert compiled["runner"] == desk_fp
    # The receiver ran it as its own job, tagged with the offloader; the Pi flashed it.
    (remote,) = remote_jobs(desk)
    assert remote["status"] == "completed" and remote["args"]["remote_job"] == ids["compile"]
    flashed = uploads(config)
    assert [f["device"] for f in flashed] == ["192.0.2.7"]
    built = Path(remote["configuration"]).parent / ".esphome/build/kitchen/.pioenvs/kitchen"
    assert (built / "program").exists()
    assert flashed[0]["sha256"] == hashlib.sha256((built / "program").read_bytes()).hexdigest()


@pytest.mark.slow
def test_six_installs_fan_out_to_three_receivers(meshd: MeshdFactory, tmp_path: Path) -> None:
    receivers = [node(meshd, f"rx{i}", "--no-offload", "--no-mdns") for i in range(3)]
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns")
    fingerprints = []
    for receiver in receivers:  # rx0 became idle first, so it has been idle the longest
        _, fp = link(pi, receiver)
        fingerprints.append(fp)
        wait_peer(pi, fp, connected=True, idle=True)

    chains = []
    for i in range(6):
        config = host_config(tmp_path / "cfg", f"dev{i}", compile_seconds=4)
        chains.append(
            pi.cli_json("install", str(config), "--device", f"192.0.2.{i + 1}", "--detach")
        )

    most_in_flight = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lane = pi.cli_json("status")["lanes"]["compile"]
        most_in_flight = max(most_in_flight, len(lane["remote"]))
        if all(
            pi.job(c["upload"])["status"] in ("completed", "failed", "cancelled") for c in chains
        ):
            break
        time.sleep(0.2)
    assert most_in_flight >= 3, f"at most {most_in_flight} remote compiles ran at once"
    compiles = [pi.job(c["compile"]) for c in chains]
    assert all(pi.job(c["upload"])["status"] == "completed" for c in chains)
    assert compiles[0]["runner"] == fingerprints[0], "the first job goes to the oldest idle"
    used = {c["runner"] for c in compiles}
    assert set(fingerprints) <= used, f"every receiver gets work: {used}"


def test_killed_receiver_mid_compile_completes_elsewhere(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    first = node(meshd, "first", "--no-offload", "--no-mdns")
    second = node(meshd, "second", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local")
    _, first_fp = link(pi, first)
    wait_peer(pi, first_fp, connected=True, idle=True)
    _, second_fp = link(pi, second)
    wait_peer(pi, second_fp, connected=True, idle=True)

    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=30)
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    until(
        "compile running on first",
        lambda: any(j["status"] == "running" for j in remote_jobs(first)),
    )
    host_config(tmp_path / "cfg", "kitchen", compile_seconds=1)  # quicker on the re-route
    first.kill()

    upload = pi.wait_status(ids["upload"], "completed", "failed", "cancelled", timeout=90)
    assert upload["status"] == "completed"
    compiled = pi.job(ids["compile"])
    assert compiled["runner"] == second_fp
    log = pi.cli("logs", ids["compile"]).stdout
    assert "re-routing (attempt 1)" in log
    assert len(uploads(config)) == 1


def test_cancel_during_remote_compile(meshd: MeshdFactory, tmp_path: Path) -> None:
    desk = node(meshd, "desk", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local")
    _, desk_fp = link(pi, desk)
    wait_peer(pi, desk_fp, connected=True, idle=True)
    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=60)
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    until(
        "remote compile running", lambda: any(j["status"] == "running" for j in remote_jobs(desk))
    )

    assert pi.cli("cancel", ids["compile"]).returncode == 0
    assert pi.job(ids["upload"])["status"] == "cancelled"
    until(
        "receiver job cancelled", lambda: [j["status"] for j in remote_jobs(desk)] == ["cancelled"]
    )
    time.sleep(1)
    assert uploads(config) == []


def test_receiver_on_another_release_is_skipped(meshd: MeshdFactory, tmp_path: Path) -> None:
    old = node(
        meshd, "old", "--no-offload", "--no-mdns", env={"STANDIN_ESPHOME_VERSION": "2026.5.2"}
    )
    new = node(
        meshd, "new", "--no-offload", "--no-mdns", env={"STANDIN_ESPHOME_VERSION": "2026.6.1"}
    )
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--version-policy", "release")
    _, old_fp = link(pi, old)
    wait_peer(pi, old_fp, connected=True, idle=True, esphome_version="2026.5.2")
    _, new_fp = link(pi, new)  # idle for less time than `old`, but compatible
    wait_peer(pi, new_fp, connected=True, idle=True)
    config = host_config(tmp_path / "cfg", "kitchen")
    ids = pi.cli_json("compile", str(config), "--detach")
    job = pi.wait_status(ids["compile"], "completed", "failed", "cancelled")
    assert job["status"] == "completed" and job["runner"] == new_fp
    assert remote_jobs(old) == []


def test_trust_commands_and_pairing(meshd: MeshdFactory) -> None:
    desk = node(meshd, "desk", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns")
    window = desk.cli_json("pair", "open", "--ttl", "60")
    port = identity(desk)["peer_port"]
    wrong = pi.cli("pair", "join", f"127.0.0.1:{port}", "A" * 32)
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    joined = pi.cli_json("pair", "join", f"127.0.0.1:{port}", window["code"])
    desk_fp = identity(desk)["fingerprint"]
    assert joined["fingerprint"] == desk_fp and joined["may_build_for_me"]
    pi_fp = identity(pi)["fingerprint"]
    trusted = desk.cli_json("trusted")["trusted"]
    assert [t["fingerprint"] for t in trusted] == [pi_fp] and trusted[0]["may_send_work"]
    wait_peer(pi, desk_fp, connected=True, trusted=True)
    # A used code is refused.
    again = pi.cli("pair", "join", f"127.0.0.1:{port}", window["code"])
    assert again.returncode == 2
    # Untrusting closes the session.
    assert pi.cli("untrust", desk_fp).returncode == 0
    until("session closed", lambda: peer(pi, desk_fp, connected=True) is None, 30)
    bad = pi.cli("trust", "not-a-fingerprint")
    assert bad.returncode == 2 and "64 hex" in bad.stderr


def test_restarts_mid_remote_compile_lose_nothing(meshd: MeshdFactory, tmp_path: Path) -> None:
    desk = node(meshd, "desk", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local")
    _, desk_fp = link(pi, desk)
    wait_peer(pi, desk_fp, connected=True, idle=True)
    config = host_config(tmp_path / "cfg", "kitchen", compile_seconds=30)
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    until(
        "remote compile running", lambda: any(j["status"] == "running" for j in remote_jobs(desk))
    )

    # The offloader restarts: its compile goes back to the queue and is sent again.
    assert pi.terminate() == 0
    assert desk.cli_json("jobs", "--all")["jobs"][0]["status"] == "cancelled" or until(
        "receiver drops the orphaned compile",
        lambda: [j["status"] for j in remote_jobs(desk)] == ["cancelled"],
    )
    host_config(tmp_path / "cfg", "kitchen", compile_seconds=1)
    pi.start()
    upload = pi.wait_status(ids["upload"], "completed", "failed", "cancelled", timeout=90)
    assert upload["status"] == "completed"
    restarted = pi.job(ids["compile"])
    assert restarted["runner"] == desk_fp, pi.cli("logs", ids["compile"]).stdout + pi.log()
    assert [j["status"] for j in remote_jobs(desk)] == ["cancelled", "completed"]

    # The receiver restarts mid-compile: the jobs it held are cancelled there, and the
    # offloader builds elsewhere (here: locally, the only place left).
    host_config(tmp_path / "cfg", "kitchen", compile_seconds=30)
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    until("second remote compile", lambda: len(remote_jobs(desk)) == 3)
    desk.kill()
    host_config(tmp_path / "cfg", "kitchen", compile_seconds=1)
    upload = pi.wait_status(ids["upload"], "completed", "failed", "cancelled", timeout=90)
    assert upload["status"] == "completed"
    assert pi.job(ids["compile"])["runner"] == "local"
    desk.start()
    until("orphan cancelled at start", lambda: remote_jobs(desk)[-1]["status"] == "cancelled")
