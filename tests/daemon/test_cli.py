"""The CLI against a real daemon: --json shapes, clear errors and their exit codes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.daemon.conftest import Meshd, MeshdFactory, host_config

JOB_FIELDS = {
    "id",
    "type",
    "status",
    "configuration",
    "device",
    "depends_on",
    "lane",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "runner",
    "reason",
    "progress",
    "args",
}


def _http(
    daemon: Meshd, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{daemon.url}/api/v1{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {daemon.token if token is None else token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _still_serving(daemon: Meshd) -> None:
    result = daemon.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["node"]["name"] == "test-node"


def test_install_detach_json_then_wait(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "cfg")
    ids = daemon.cli_json("install", str(config), "--device", "127.0.0.1", "--detach")
    assert set(ids) == {"compile", "upload"}
    waited = daemon.cli_json("wait", ids["compile"], ids["upload"])
    assert [job["status"] for job in waited["jobs"]] == ["completed", "completed"]
    compile_job, upload_job = waited["jobs"]
    assert set(compile_job) >= JOB_FIELDS
    assert compile_job["configuration"] == str(config)
    assert upload_job["depends_on"] == compile_job["id"]
    assert upload_job["lane"] == "upload" and compile_job["lane"] == "compile"
    shown = daemon.cli_json("show", ids["upload"])
    assert shown["status"] == "completed" and shown["device"] == "127.0.0.1"
    listed = daemon.cli_json("jobs")
    assert [job["id"] for job in listed["jobs"]] == [ids["compile"], ids["upload"]]
    # The stand-in recorded the flash of the firmware the compile wrote.
    uploads = (config.parent / ".esphome" / "standin-uploads.jsonl").read_text().splitlines()
    assert json.loads(uploads[-1])["device"] == "127.0.0.1"


def test_compile_follow_json_and_relative_path(daemon: Meshd, tmp_path: Path) -> None:
    host_config(tmp_path / "cfg", "rel")
    result = daemon.cli("compile", "rel.yaml", "--local", "--json", cwd=tmp_path / "cfg")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    (job,) = out["jobs"]
    assert out["compile"] == job["id"]
    assert job["status"] == "completed"
    assert job["configuration"] == str(tmp_path / "cfg" / "rel.yaml")
    assert job["args"] == {"force_local": True}


def test_status_and_peers_json(daemon: Meshd) -> None:
    status = daemon.cli_json("status")
    node = status["node"]
    assert set(node) == {
        "name",
        "fingerprint",
        "fingerprint_display",
        "short",
        "esphome_version",
        "esphome",
        "sandbox",
        "warnings",
        "version",
        "data_dir",
        "compile_cache",
        "peer_port",
        "receiver",
        "offload",
        "version_policy",
        "include_local",
        "pairing_open",
    }
    assert node["name"] == "test-node"
    assert re.fullmatch(r"[0-9a-f]{64}", node["fingerprint"])
    assert node["short"] == node["fingerprint"][:16]
    assert node["peer_port"] > 0 and node["receiver"] and node["offload"]
    assert node["data_dir"] == str(daemon.data_dir)
    for lane in ("compile", "upload"):
        assert {"idle", "running", "queued", "idle_since"} <= set(status["lanes"][lane])
    assert status["lanes"]["upload"]["slots"] == 4
    # It advertises and browses mDNS on loopback, yet never lists itself.
    time.sleep(3)
    assert daemon.cli_json("status")["peers"] == []
    assert daemon.cli_json("peers") == {"peers": []}


def test_failed_compile_exits_1_and_cancels_upload(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "cfg", "broken", invalid=1)
    result = daemon.cli("install", str(config), "--device", "127.0.0.1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[levelx] is an invalid option" in result.stdout
    jobs = daemon.cli_json("jobs")["jobs"]
    assert [job["status"] for job in jobs] == ["failed", "cancelled"]
    assert "Failed config" in jobs[0]["error"]


def test_missing_config_is_exit_2(daemon: Meshd, tmp_path: Path) -> None:
    result = daemon.cli("compile", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "nope.yaml" in result.stderr
    status, body = _http(
        daemon, "POST", "/jobs", {"type": "compile", "configuration": str(tmp_path / "nope.yaml")}
    )
    assert status == 400 and body["error"]["code"] == "config_not_found"
    _still_serving(daemon)


def test_malformed_yaml_is_exit_2_with_line_and_column(daemon: Meshd, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("esphome:\n  name: bad\nwifi:\n  ssid: [unclosed\n  password: !secret pw\n")
    result = daemon.cli("install", str(config), "--device", "127.0.0.1")
    assert result.returncode == 2
    assert "invalid YAML at line" in result.stderr, result.stderr
    status, body = _http(daemon, "POST", "/jobs", {"type": "compile", "configuration": str(config)})
    assert status == 400
    error = body["error"]
    assert error["code"] == "invalid_yaml" and error["file"] == str(config)
    assert error["line"] >= 4 and error["column"] >= 1
    assert "flow sequence" in error["detail"]
    assert daemon.cli_json("jobs") == {"jobs": []}
    _still_serving(daemon)


def test_custom_tags_are_not_errors(daemon: Meshd, tmp_path: Path) -> None:
    config = tmp_path / "tags.yaml"
    config.write_text(
        "esphome:\n  name: tags\nhost:\n<<: !include common.yaml\n"
        "api:\n  password: !secret pw\nsensor:\n  - lambda: !lambda return 1;\n"
    )
    result = daemon.cli("compile", str(config), "--detach", "--json")
    assert result.returncode == 0, result.stderr


def test_unknown_job_id_is_exit_2(daemon: Meshd) -> None:
    for args in (
        ("show", "0123456789ab"),
        ("cancel", "0123456789ab"),
        ("logs", "0123456789ab"),
        ("wait", "0123456789ab"),
        ("show", "../etc"),
    ):
        result = daemon.cli(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert "no job with id" in result.stderr
    status, body = _http(daemon, "GET", "/jobs/0123456789ab")
    assert status == 404 and body["error"]["code"] == "unknown_job"
    _still_serving(daemon)


def test_wrong_token_is_refused(daemon: Meshd) -> None:
    result = daemon.cli("jobs", "--api", daemon.url, "--token", "wrong", data_dir=False)
    assert result.returncode == 2
    assert "wrong API token" in result.stderr
    status, body = _http(daemon, "GET", "/jobs", token="wrong")
    assert status == 401 and body["error"]["code"] == "unauthorized"
    request = urllib.request.Request(f"{daemon.url}/api/v1/status")
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("a request without a token was served")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    right = daemon.cli("jobs", "--api", daemon.url, "--token", daemon.token, data_dir=False)
    assert right.returncode == 0, right.stderr
    _still_serving(daemon)


def test_missing_device_and_bad_requests(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "cfg")
    assert daemon.cli("upload", str(config)).returncode == 2  # click: --device required
    status, body = _http(daemon, "POST", "/jobs", {"type": "install", "configuration": str(config)})
    assert status == 400 and body["error"]["code"] == "missing_device"
    status, body = _http(daemon, "POST", "/jobs", {"type": "flash", "configuration": "x"})
    assert status == 400 and body["error"]["code"] == "invalid_type"
    status, body = _http(
        daemon, "POST", "/jobs", {"type": "compile", "configuration": str(config), "bogus": 1}
    )
    assert status == 400 and body["error"]["fields"] == ["bogus"]
    status, body = _http(
        daemon,
        "POST",
        "/jobs",
        {"type": "rename", "configuration": str(config), "new_name": "../x"},
    )
    assert status == 400 and body["error"]["code"] == "invalid_name"
    # Addresses go through the one HOST:PORT parser, with its reasons.
    fingerprint = "ab" * 32
    status, body = _http(daemon, "POST", "/trust", {"fingerprint": fingerprint, "address": "desk"})
    assert status == 400 and body["error"]["code"] == "invalid_address"
    assert "expected HOST:PORT" in body["error"]["message"]
    status, body = _http(daemon, "POST", "/pair/join", {"address": "::1:6056", "code": "x"})
    assert status == 400 and body["error"]["code"] == "invalid_pairing"
    assert "brackets" in body["error"]["message"]
    status, body = _http(
        daemon, "POST", "/trust", {"fingerprint": fingerprint, "address": " [::1]:6056 "}
    )
    assert status == 201 and body["trusted"]["addresses"] == ["[::1]:6056"]
    _still_serving(daemon)


def test_unreachable_daemon_is_exit_3(meshd: MeshdFactory, tmp_path: Path) -> None:
    never_started = meshd("empty")
    never_started.data_dir.mkdir()
    result = never_started.cli("jobs")
    assert result.returncode == 3 and "no running meshd" in result.stderr
    stopped = meshd("stopped").start()
    assert stopped.terminate() == 0
    result = stopped.cli("status")
    assert result.returncode == 3 and "not reachable" in result.stderr


def test_ctrl_c_while_following_detaches_without_cancelling(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "cfg", "long", compile_seconds=600)
    env = dict(daemon.env, MESHD_DATA_DIR=str(daemon.data_dir))
    follower = subprocess.Popen(
        [sys.executable, "-m", "meshd", "install", str(config), "--device", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            running = daemon.cli_json("jobs", "--active")["jobs"]
            if any(job["status"] == "running" for job in running):
                break
            assert time.monotonic() < deadline, "the compile never started"
            time.sleep(0.1)
        follower.send_signal(signal.SIGINT)
        _out, err = follower.communicate(timeout=60)
    finally:
        follower.kill()
    assert follower.returncode == 130, err
    assert "detached" in err and "keep running in meshd" in err and "meshd cancel" in err
    compile_job, upload_job = daemon.cli_json("jobs")["jobs"]
    assert compile_job["status"] == "running" and upload_job["status"] == "queued"
    assert daemon.cli("cancel", compile_job["id"]).returncode == 0
    assert daemon.job(upload_job["id"])["status"] == "cancelled"
