"""A real ``meshd serve`` against hostile API input and a connection flood.

Input: strict types (a string ``"false"`` grants nothing), a non-ASCII token, deep,
huge and non-standard JSON, bad query values, and job configurations that are not
ESPHome configurations or lie in the data dir: each a clear 4xx, never a 500 or a
traceback, and nothing read into a job log. Flood: 1,100 idle connections from three
addresses (one of them the CLI's) against a daemon held to 1,024 file descriptors;
the CLI and jobs keep working, the daemon's descriptors and its log stay bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshd.api.connections import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_SOURCE
from tests.daemon.conftest import Meshd, host_config


def request(
    daemon: Meshd,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    auth: bytes | None = None,
) -> tuple[int, Any]:
    """One HTTP request with raw bytes where a polite client would have encoded them."""
    url = urlsplit(daemon.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        conn.putrequest(method, f"/api/v1{path}")
        conn.putheader("Authorization", auth or f"Bearer {daemon.token}".encode())
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw)
    finally:
        conn.close()


def post(daemon: Meshd, path: str, value: Any) -> tuple[int, Any]:
    return request(daemon, "POST", path, json.dumps(value).encode())


def no_tracebacks(daemon: Meshd) -> None:
    log = daemon.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Error handling request" not in log, log[-4000:]


# -- strict types --------------------------------------------------------------------


def test_string_false_grants_no_role(daemon: Meshd) -> None:
    fingerprint = "ab" * 32
    for field in ("may_send_work", "may_build_for_me"):
        for value in ("false", "true", 0, 1, None, []):
            if value is None:
                continue
            status, body = post(daemon, "/trust", {"fingerprint": fingerprint, field: value})
            assert status == 400, (field, value, body)
            assert body["error"]["field"] == field
    status, _ = request(daemon, "GET", "/trust")
    assert status == 200
    # Nothing was stored by the refused requests.
    assert request(daemon, "GET", "/trust")[1]["trusted"] == []
    status, body = post(
        daemon,
        "/trust",
        {"fingerprint": fingerprint, "may_send_work": False, "may_build_for_me": True},
    )
    assert status == 201, body
    assert body["trusted"]["may_send_work"] is False
    assert body["trusted"]["may_build_for_me"] is True
    status, body = post(daemon, "/trust", {"fingerprint": "cd" * 32, "name": {"x": 1}})
    assert status == 400 and body["error"]["field"] == "name"
    no_tracebacks(daemon)


def test_job_and_pairing_fields_are_strict(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "configs")
    status, body = post(
        daemon, "/jobs", {"type": "compile", "configuration": str(config), "local": "false"}
    )
    assert status == 400 and body["error"]["field"] == "local"
    for device in ("--help", "-d", "a b", "x\u202e", "a" * 300, 5):
        status, body = post(
            daemon,
            "/jobs",
            {"type": "upload", "configuration": str(config), "device": device},
        )
        assert status == 400 and body["error"]["field"] == "device", (device, body)
    for ttl in (True, "300", None, float("inf")):
        if ttl is None:
            continue
        raw = json.dumps({"ttl": ttl}).replace("Infinity", "1e999").encode()
        status, body = request(daemon, "POST", "/pair/open", raw)
        assert status == 400, (ttl, body)
    for query in ("limit=%C2%B2", "limit=99999999999", "limit=-1", "limit=1e3"):
        status, body = request(daemon, "GET", f"/jobs?{query}")
        assert status == 400 and body["error"]["code"] == "invalid_query", query
    status, body = request(daemon, "GET", "/jobs/0123456789ab/log?follow=maybe")
    assert status in (400, 404)
    no_tracebacks(daemon)


def test_non_ascii_token_is_401_not_500(daemon: Meshd) -> None:
    for auth in ("Bearer tökén-ünïcode".encode(), b"Bearer \xff\xfe\x80", "Bearer 令牌".encode()):
        status, body = request(daemon, "GET", "/status", auth=auth)
        assert status == 401, (auth, body)
        assert body["error"]["code"] == "unauthorized"
    no_tracebacks(daemon)


def test_deep_huge_and_odd_json_is_refused(daemon: Meshd) -> None:
    deep_list = b"[" * 30000 + b"]" * 30000
    status, body = request(daemon, "POST", "/jobs", deep_list)
    assert status == 400 and body["error"]["code"] == "invalid_json"
    nested: Any = {"type": "compile"}
    for _ in range(40):
        nested = {"a": nested}
    status, body = post(daemon, "/trust", nested)
    assert status == 400 and "deeper" in body["error"]["message"]
    status, body = request(daemon, "POST", "/jobs", b'{"type": "compile", "x": NaN}')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = request(daemon, "POST", "/jobs", b'{"type": "\xff"}')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    huge = json.dumps({"type": "compile", "configuration": "x" * 200_000}).encode()
    status, body = request(daemon, "POST", "/jobs", huge)
    assert status == 413
    # The daemon is fine afterwards.
    assert request(daemon, "GET", "/status")[0] == 200
    no_tracebacks(daemon)


# -- which files a job may name ------------------------------------------------------


def test_jobs_cannot_name_arbitrary_files(daemon: Meshd, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    good = host_config(configs, "good")
    (configs / "passwd.yaml").symlink_to("/etc/passwd")
    (configs / "identity.yaml").symlink_to(daemon.data_dir / "identity.pem")
    (configs / "netplan.yaml").write_text("network:\n  version: 2\n  wifis: {}\n")
    (configs / "secrets.yaml").write_text("wifi_password: SECRET-WIFI\n")
    (daemon.data_dir / "inside.yaml").write_text("esphome:\n  name: inside\n")
    cases = {
        "/etc/shadow": (400, "not_a_configuration"),
        "/etc/passwd": (400, "not_a_configuration"),
        str(configs / "passwd.yaml"): (400, "not_a_configuration"),
        str(configs / "identity.yaml"): (403, "config_forbidden"),
        str(daemon.data_dir / "api.json"): (403, "config_forbidden"),
        str(daemon.data_dir / "inside.yaml"): (403, "config_forbidden"),
        str(configs / "netplan.yaml"): (400, "not_a_configuration"),
        str(configs / "secrets.yaml"): (400, "not_a_configuration"),
        f"/proc/{daemon.proc.pid if daemon.proc else 1}/environ": (400, "not_a_configuration"),
    }
    for path, (want_status, want_code) in cases.items():
        status, body = post(daemon, "/jobs", {"type": "compile", "configuration": path})
        assert (status, body["error"]["code"]) == (want_status, want_code), (path, body)
        text = json.dumps(body)
        assert "SECRET" not in text and "root:" not in text and daemon.token not in text
    status, body = post(
        daemon, "/jobs", {"type": "reset_build_env", "configuration": str(daemon.data_dir)}
    )
    assert status == 403 and body["error"]["code"] == "config_forbidden"
    # No job was made for any of them; an honest configuration still is.
    assert request(daemon, "GET", "/jobs")[1]["jobs"] == []
    status, body = post(daemon, "/jobs", {"type": "compile", "configuration": str(good)})
    assert status == 201, body
    no_tracebacks(daemon)


# -- the flood -----------------------------------------------------------------------


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _open_idle(port: int, source: str, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(5)
        sock.bind((source, 0))
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sockets.append(sock)
    return sockets


def test_1100_idle_connections_leave_the_cli_and_jobs_working(
    daemon: Meshd, tmp_path: Path
) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    # A service's usual soft limit: without the caps, 1,100 sockets would exhaust it.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (1024, 1024))
    port = int(urlsplit(daemon.url).port or 0)
    baseline = _fd_count(pid)
    log_before = daemon.log_path.read_text(errors="replace").count("control API:")
    flood: list[socket.socket] = []
    try:
        flood += _open_idle(port, "127.0.0.2", 500)
        flood += _open_idle(port, "127.0.0.3", 300)
        flood += _open_idle(port, "127.0.0.1", 300)  # the CLI's own address
        assert len(flood) >= 1000  # the kernel accepted them; meshd decides what to keep
        # The daemon holds at most its caps of them, far below its descriptor limit
        # (asyncio accepts up to a listen backlog of 128 before the gate closes the
        # excess, so the count settles to the caps within moments).
        deadline = time.monotonic() + 10
        while (held := _fd_count(pid) - baseline) > 3 * MAX_CONNECTIONS_PER_SOURCE + 8:
            assert held <= MAX_CONNECTIONS + 128 + 8, held
            assert time.monotonic() < deadline, held
            time.sleep(0.05)
        # The CLI (from 127.0.0.1, whose cap the flood filled with idle sockets) works,
        # and so does a job, which needs descriptors for its log and its child.
        status = daemon.cli("status", "--json")
        assert status.returncode == 0, status.stderr
        config = host_config(tmp_path / "configs")
        code, body = post(daemon, "/jobs", {"type": "compile", "configuration": str(config)})
        assert code == 201, body
        job_id = body["jobs"][0]["id"]
        assert daemon.wait_status(job_id, "completed", "failed")["status"] == "completed"
    finally:
        for sock in flood:
            sock.close()
    # A few rate-limited warnings, not one line per connection.
    log = daemon.log_path.read_text(errors="replace")
    assert log.count("control API:") - log_before <= 12, log[-3000:]
    assert "Too many open files" not in log
    no_tracebacks(daemon)
