"""A full disk with real daemons: a small tmpfs in the daemon's own mount namespace.

What must hold (issue 14): the job that could not write fails with "no space left on
<path>", its upload is cancelled, the lane and the API keep working (JSON errors), the
blame stays on this node (a write error while pulling artifacts is the offloader's own
failure, not a lost receiver: no re-route, no exclusion), and once space returns new
jobs run.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import HEARTBEAT, identity, link, wait_peer
from tests.daemon.conftest import Meshd, MeshdFactory, host_config
from tests.support.tmpfs import TmpfsMeshd, tmpfs_available

pytestmark = pytest.mark.skipif(tmpfs_available() is not None, reason=str(tmpfs_available()))

MIB = 1024 * 1024
FAST = ("--heartbeat", HEARTBEAT, "--no-mdns")
TERMINAL = ("completed", "failed", "cancelled")


def _api(daemon: Meshd, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"{daemon.url}/api/v1{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _install(daemon: Meshd, config: Path) -> tuple[int, Any]:
    return _api(
        daemon, "POST", "/jobs", {"type": "install", "configuration": str(config), "device": "x"}
    )


def test_a_full_data_dir_fails_the_job_keeps_the_api_and_recovers(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    daemon = TmpfsMeshd(data, mount=data, size=4 * MIB, args=("--no-mdns", "--no-offload"))
    meshd.started.append(daemon)
    daemon.start()
    quick = host_config(tmp_path / "cfg", "quick", compile_seconds=0.2)
    chatty = host_config(tmp_path / "cfg", "chatty", compile_seconds=2, chatter_bytes=600_000)

    status, body = _install(daemon, chatty)
    assert status == 201, body
    compile_id, upload_id = (job["id"] for job in body["jobs"])
    daemon.wait_status(compile_id, "running")
    daemon.fill(leave=64 * 1024)  # the compile's warnings need ~600 kB

    failed = daemon.wait_status(compile_id, *TERMINAL)
    assert failed["status"] == "failed"
    assert failed["error"].startswith(f"no space left on {data}"), failed["error"]
    upload = daemon.job(upload_id)
    assert upload["status"] == "cancelled" and compile_id in upload["error"]

    # The API still answers, in JSON: reads work; a job that cannot be recorded is
    # refused (507) or, if the database still had room, accepted and failed like above.
    status, listing = _api(daemon, "GET", "/jobs")
    assert status == 200 and {j["id"] for j in listing["jobs"]} >= {compile_id, upload_id}
    daemon.fill(leave=0)
    status, body = _install(daemon, quick)
    if status == 201:
        refused = daemon.wait_status(body["jobs"][0]["id"], *TERMINAL)
        assert refused["status"] == "failed" and "no space left on" in refused["error"]
    else:
        assert (status, body["error"]["code"]) == (507, "no_space"), body
        assert "no space left on" in body["error"]["message"]

    # Space comes back: the next install runs, and the failure was written down.
    daemon.free()
    status, body = _install(daemon, quick)
    assert status == 201, body
    done = daemon.wait_status(body["jobs"][1]["id"], *TERMINAL)
    assert done["status"] == "completed", daemon.cli("logs", body["jobs"][1]["id"]).stdout
    assert daemon.terminate() == 0, daemon.log()
    assert "Traceback" not in daemon.log()


@pytest.mark.slow
def test_no_space_for_artifacts_is_the_offloaders_failure_not_the_receivers(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    receiver = meshd("desk", args=("--name", "desk", *FAST, "--no-offload")).start()
    data = tmp_path / "pi"
    pi_args = ("--name", "pi", *FAST, "--no-receiver", "--no-include-local")
    pi = TmpfsMeshd(data, mount=data, size=12 * MIB, args=pi_args)
    meshd.started.append(pi)
    pi.start()
    _, desk_fp = link(pi, receiver)
    wait_peer(pi, desk_fp, connected=True, idle=True)
    big = host_config(tmp_path / "cfg", "big", compile_seconds=1, firmware_bytes=4 * MIB)
    pi.fill(leave=MIB)  # room for the bundle, not for a 4 MiB image

    status, body = _install(pi, big)
    assert status == 201, body
    compile_id, upload_id = (job["id"] for job in body["jobs"])
    failed = pi.wait_status(compile_id, *TERMINAL)
    assert failed["status"] == "failed", pi.cli("logs", compile_id).stdout
    assert failed["error"].startswith(f"no space left on {data}"), failed["error"]
    assert failed["args"].get("excluded_receivers", []) == [], "the receiver is not blamed"
    assert "re-routing" not in pi.cli("logs", compile_id).stdout
    assert pi.job(upload_id)["status"] == "cancelled"
    wait_peer(pi, desk_fp, connected=True)

    pi.free()
    status, body = _install(pi, big)
    assert status == 201, body
    done = pi.wait_status(body["jobs"][1]["id"], *TERMINAL)
    assert done["status"] == "completed", pi.cli("logs", body["jobs"][0]["id"]).stdout
    assert pi.job(body["jobs"][0]["id"])["runner"] == identity(receiver)["fingerprint"]
