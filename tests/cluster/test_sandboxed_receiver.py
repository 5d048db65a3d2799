"""A peer's configuration attacks the receiver that builds it, on real daemons.

The receiver's esphome is ``tests/support/hostile_esphome.py``: it does what an
external component of the offloader's configuration could do during the build (read
the receiver's identity key, API token and another offloader's secrets, plant files
beside them) and then builds as the stand-in does. With the build sandbox every
attempt fails and the build still completes and is flashed; the log the attacker gets
back says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.cluster.conftest import link, node, wait_peer
from tests.cluster.test_mesh import uploads
from tests.daemon.conftest import MeshdFactory
from tests.support.daemon import REPO, host_config

HOSTILE = f"{sys.executable} {REPO / 'tests' / 'support' / 'hostile_esphome.py'}"


def test_a_hostile_configuration_gets_nothing_of_the_receiver(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    receiver = meshd(
        "rx",
        esphome=HOSTILE,
        args=("--name", "rx", "--heartbeat", "0.5", "--no-offload", "--no-mdns"),
    ).start()
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local")
    # Another offloader's tree on the receiver, with its secrets.
    other = receiver.data_dir / "mesh" / "builds" / "0123456789abcdef" / "garage"
    other.mkdir(parents=True)
    (other / "secrets.yaml").write_text("wifi_password: OTHER-OFFLOADERS-WIFI\n")
    _, rx_fp = link(pi, receiver)
    wait_peer(pi, rx_fp, connected=True, idle=True)
    assert "bubblewrap" in str(receiver.cli_json("status")["node"]["sandbox"])

    targets = [
        receiver.data_dir / "identity.pem",
        receiver.data_dir / "api.json",
        receiver.data_dir / "meshd.db",
        other / "secrets.yaml",
    ]
    config = host_config(tmp_path / "cfg", "kitchen")
    config.write_text(
        config.read_text() + "".join(f"# steal: {t}\n" for t in targets), encoding="utf-8"
    )
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    upload = pi.wait_status(ids["upload"], "completed", "failed", "cancelled", timeout=120)
    log = pi.cli("logs", ids["compile"]).stdout
    assert upload["status"] == "completed", log + receiver.log()
    assert pi.job(ids["compile"])["runner"] == rx_fp
    assert len(uploads(config)) == 1
    for target in targets:
        assert f"DENIED {target}" in log, log
        # A write may "succeed" into the sandbox's private /tmp (the test's data dir
        # lives under /tmp); what counts is that nothing lands on the receiver.
        assert not target.with_name("planted-by-peer").exists()
    assert "STOLEN" not in log
    assert "OTHER-OFFLOADERS-WIFI" not in log
    assert "PRIVATE KEY" not in log


def test_without_bubblewrap_the_receiver_declines_and_says_why(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    # PATH without bwrap: the daemon finds no sandbox; local builds are unaffected.
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("prlimit", "timeout", "true"):
        (bare / tool).symlink_to(f"/usr/bin/{tool}")
    receiver = meshd(
        "rx",
        env={"PATH": str(bare)},
        args=("--name", "rx", "--heartbeat", "0.5", "--no-offload", "--no-mdns"),
    ).start()
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns")
    _, rx_fp = link(pi, receiver)
    wait_peer(pi, rx_fp, connected=True)
    status = receiver.cli_json("status")["node"]
    assert str(status["sandbox"]).startswith("unavailable"), status
    assert any("builds for peers refused" in w for w in status["warnings"]), status

    config = host_config(tmp_path / "cfg", "kitchen")
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    upload = pi.wait_status(ids["upload"], "completed", "failed", timeout=120)
    assert upload["status"] == "completed"
    assert pi.job(ids["compile"])["runner"] != rx_fp  # built on the offloader itself
    assert "cannot sandbox builds" in receiver.log()

    local = host_config(tmp_path / "own", "desk")
    own = receiver.cli_json("compile", str(local), "--detach")["compile"]
    assert receiver.wait_status(own, "completed", "failed", timeout=60)["status"] == "completed"
