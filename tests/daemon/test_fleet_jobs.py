"""Armed uploads, multi-config installs, kept builds and job pages against real daemons.

Most tests run real ``meshd serve`` processes over HTTP and the CLI. The device
monitor that will call ``Engine.device_seen`` is built on another branch, so the
release after a restart is driven in-process: a real ``Daemon`` (engine, API, mesh
service, stand-in esphome) stopped and started again on the same data directory, with
the announcement made through the same engine call the monitor will make.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshd.config import load_settings
from meshd.daemon import Daemon
from meshd.jobs.model import JobStatus
from tests.daemon.conftest import STANDIN, Meshd, MeshdFactory, host_config

WAIT = 60.0  # a safety net against hangs, not a speed assertion


def _http(daemon: Meshd, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{daemon.url}/api/v1{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {daemon.token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _job(daemon: Meshd, job_id: str) -> dict[str, Any]:
    status, job = _http(daemon, "GET", f"/jobs/{job_id}")
    assert status == 200, job
    return dict(job)


def _until(daemon: Meshd, job_id: str, test: Any, what: str) -> dict[str, Any]:
    """Poll over HTTP (a CLI process per poll is too slow for a short deadline)."""
    deadline = time.monotonic() + WAIT
    while True:
        job = _job(daemon, job_id)
        if test(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} never became {what}: {job}")
        time.sleep(0.1)


def _armed(daemon: Meshd, job_id: str) -> dict[str, Any]:
    return _until(daemon, job_id, lambda j: j["waiting"] == "device", "armed")


def _status(daemon: Meshd, job_id: str, status: str) -> dict[str, Any]:
    return _until(daemon, job_id, lambda j: j["status"] == status, status)


def _arm_install(daemon: Meshd, config: Path, **extra: Any) -> tuple[str, str]:
    status, body = _http(
        daemon,
        "POST",
        "/jobs",
        {"type": "install", "configuration": str(config), "when_online": True, **extra},
    )
    assert status == 201, body
    compile_job, upload_job = body["jobs"]
    assert upload_job["args"]["when_online"] is True and upload_job["device"] is None
    return compile_job["id"], upload_job["id"]


def _uploads(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_armed_upload_survives_a_restart_and_can_be_cancelled(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    uploads = tmp_path / "uploads.jsonl"
    daemon = meshd(env={"STANDIN_UPLOAD_LOG": str(uploads)}).start()
    config = host_config(tmp_path / "cfg", "dev1")
    compile_id, upload_id = _arm_install(daemon, config)
    _status(daemon, compile_id, "completed")
    armed = _armed(daemon, upload_id)
    # The device name came from esphome's build record of the compile.
    assert armed["args"]["device_name"] == "dev1"
    assert armed["status"] == "queued" and armed["reason_code"] == "waiting_for_device"
    assert armed["waiting_until"] - armed["waiting_since"] == pytest.approx(7 * 86400)
    table = daemon.cli("jobs")
    assert table.returncode == 0 and "waiting for device dev1" in table.stdout, table.stdout
    assert daemon.cli_json("status")["lanes"]["upload"]["waiting"] == 1

    assert daemon.terminate() == 0, daemon.log()
    daemon.start()
    again = _job(daemon, upload_id)
    assert (again["status"], again["waiting"]) == ("queued", "device")
    assert again["waiting_until"] == armed["waiting_until"]
    assert daemon.cli_json("status")["lanes"]["upload"]["waiting"] == 1

    cancelled = daemon.cli_json("cancel", upload_id)
    assert cancelled["status"] == "cancelled" and cancelled["waiting"] is None
    assert daemon.cli_json("status")["lanes"]["upload"]["waiting"] == 0
    assert _uploads(uploads) == []


@pytest.mark.slow  # two daemon starts around a deadline that must pass in between
def test_an_armed_upload_expires_by_its_stored_deadline_across_a_restart(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    short = meshd(env={"MESHD_ARMED_UPLOAD_TTL": "3s"}).start()
    config = host_config(tmp_path / "cfg", "sleepy")
    compile_id, upload_id = _arm_install(short, config, device_name="sleepy")
    _status(short, compile_id, "completed")
    deadline = _armed(short, upload_id)["waiting_until"]
    assert short.terminate() == 0, short.log()
    while time.time() <= deadline:  # the deadline passes while no daemon runs
        time.sleep(0.1)
    restarted = meshd().start()  # same data dir, default TTL of a week
    job = _status(restarted, upload_id, "failed")
    assert job["error"] == "device sleepy did not come online within 3 seconds"
    assert job["reason_code"] == "device_not_seen"


def test_many_installs_in_one_request_all_or_nothing(daemon: Meshd, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    awake, asleep = host_config(cfg, "awake"), host_config(cfg, "asleep")
    bad = cfg / "bad.yaml"
    bad.write_text("esphome:\n  name: [unclosed\n")

    # One broken entry: nothing is queued, and the error names the entry.
    status, body = _http(
        daemon,
        "POST",
        "/installs",
        {
            "installs": [
                {"configuration": str(awake), "device": "127.0.0.1"},
                {"configuration": str(bad), "device": "127.0.0.1"},
            ]
        },
    )
    assert status == 400 and body["error"]["code"] == "invalid_yaml"
    assert body["error"]["index"] == 1 and body["error"]["message"].startswith("installs[1]: ")
    status, body = _http(
        daemon,
        "POST",
        "/installs",
        {
            "installs": [{"configuration": str(awake)}, {"configuration": "awake.yaml"}],
            "cwd": str(cfg),
            "when_online": True,
        },
    )
    assert status == 400 and body["error"]["code"] == "duplicate_configuration"
    status, body = _http(daemon, "POST", "/installs", {"installs": [{"configuration": str(awake)}]})
    assert status == 400 and body["error"]["code"] == "missing_device"
    status, body = _http(daemon, "POST", "/installs", {"installs": [], "x": 1})
    assert status == 400 and body["error"]["code"] == "unknown_field"
    assert daemon.cli_json("jobs")["jobs"] == []

    # Per-entry when_online beside a top-level default.
    status, body = _http(
        daemon,
        "POST",
        "/installs",
        {
            "installs": [
                {"configuration": str(awake), "device": "127.0.0.1", "when_online": False},
                {"configuration": "asleep.yaml", "device_name": "asleep"},
            ],
            "when_online": True,
            "cwd": str(cfg),
        },
    )
    assert status == 201, body
    first, second = body["installs"]
    assert first["configuration"] == str(awake) and second["configuration"] == str(asleep)
    assert [job["type"] for job in body["jobs"]] == ["compile", "upload", "compile", "upload"]
    _status(daemon, first["upload"]["id"], "completed")
    _status(daemon, second["compile"]["id"], "completed")
    _armed(daemon, second["upload"]["id"])

    # A re-install of the sleeping device supersedes its armed upload.
    status, body = _http(
        daemon,
        "POST",
        "/installs",
        {"installs": [{"configuration": str(asleep), "when_online": True}]},
    )
    assert status == 201, body
    old = _job(daemon, second["upload"]["id"])
    assert old["status"] == "cancelled"
    assert old["error"] == f"superseded by newer job {body['installs'][0]['compile']['id']}"


def test_jobs_come_in_pages(daemon: Meshd, tmp_path: Path) -> None:
    ids = []
    for index in range(5):
        config = host_config(tmp_path / "cfg", f"p{index}")
        ids.append(daemon.cli_json("compile", str(config), "--detach")["compile"])
    daemon.cli_json("wait", *ids)

    status, page = _http(daemon, "GET", "/jobs?limit=2")
    assert status == 200 and [j["id"] for j in page["jobs"]] == ids[3:]
    cursor = page["next_before"]
    assert cursor == page["jobs"][0]["seq"]
    _, older = _http(daemon, "GET", f"/jobs?limit=2&before={cursor}")
    assert [j["id"] for j in older["jobs"]] == ids[1:3]
    _, oldest = _http(daemon, "GET", f"/jobs?limit=2&before={older['next_before']}")
    assert [j["id"] for j in oldest["jobs"]] == ids[:1] and oldest["next_before"] is None
    # No parameters: the newest page (all five here), oldest first; limit=0 as before.
    for query in ("", "?limit=0", "?status=completed"):
        _, every = _http(daemon, "GET", f"/jobs{query}")
        assert [j["id"] for j in every["jobs"]] == ids and every["next_before"] is None
    for query in ("?limit=5000", "?limit=-1", "?before=0", "?before=x"):
        status, body = _http(daemon, "GET", f"/jobs{query}")
        assert status == 400 and body["error"]["code"] == "invalid_query", query
    assert [j["id"] for j in daemon.cli_json("jobs")["jobs"]] == ids  # the CLI as before


def test_kept_builds_are_listed_and_flashed_later(meshd: MeshdFactory, tmp_path: Path) -> None:
    uploads = tmp_path / "uploads.jsonl"
    daemon = meshd(env={"STANDIN_UPLOAD_LOG": str(uploads)}).start()
    config = host_config(tmp_path / "cfg", "kept")
    first = daemon.cli_json("compile", str(config))["compile"]
    config.write_text(config.read_text() + "# changed\n")
    second = daemon.cli_json("compile", str(config))["compile"]

    status, listing = _http(daemon, "GET", f"/artifacts?configuration={config}")
    assert status == 200 and listing["configuration"] == str(config)
    assert [b["build_id"] for b in listing["builds"]] == [second, first]
    kept = listing["builds"][1]
    assert kept["name"] == "kept" and kept["methods"] == ["ota"]
    app = next(f for f in kept["files"] if f["role"] == "app")

    status, body = _http(
        daemon,
        "POST",
        "/jobs",
        {"type": "upload", "configuration": str(config), "device": "127.0.0.1", "build": first},
    )
    assert status == 201, body
    _status(daemon, body["jobs"][0]["id"], "completed")
    [flashed] = _uploads(uploads)
    assert flashed["sha256"] == app["sha256"]
    live = config.parent / ".esphome" / "build" / "kept" / ".pioenvs" / "kept" / "program"
    assert hashlib.sha256(live.read_bytes()).hexdigest() != app["sha256"]

    for build, code in (("ffffffffffff", "unknown_build"), ("../etc", "invalid_field")):
        status, body = _http(
            daemon,
            "POST",
            "/jobs",
            {"type": "upload", "configuration": str(config), "device": "d", "build": build},
        )
        assert status == 400 and body["error"]["code"] == code, body
    status, body = _http(daemon, "GET", "/artifacts")
    assert status == 400 and body["error"]["field"] == "configuration"


# -- in-process: release by the device monitor's engine call, after a restart ---------


async def _run_daemon(daemon: Daemon) -> tuple[asyncio.Task[int], str, str]:
    api_file = daemon.settings.data_dir / "api.json"
    api_file.unlink(missing_ok=True)
    task = asyncio.create_task(daemon.run())
    async with asyncio.timeout(WAIT):
        while not api_file.exists():
            if task.done():
                raise AssertionError(f"daemon ended early: {task.result()}")
            await asyncio.sleep(0.05)
    data = json.loads(api_file.read_text())
    return task, data["url"], data["token"]


async def _stop(daemon: Daemon, task: asyncio.Task[int]) -> None:
    daemon.request_stop()
    assert await asyncio.wait_for(task, WAIT) == 0


async def test_device_seen_releases_an_armed_upload_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = tmp_path / "uploads.jsonl"
    for name in ("ESPHOME_DATA_DIR", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STANDIN_UPLOAD_LOG", str(uploads))
    settings = load_settings(
        {
            "data_dir": str(tmp_path / "data"),
            "api": "127.0.0.1:0",
            "peer_listen": "127.0.0.1:0",
            "mdns": False,
            "name": "in-process",
            "esphome": f"{sys.executable} {STANDIN}",
        },
        env={},
    )
    config = host_config(tmp_path / "cfg", "wakes")

    first = Daemon(settings)
    task, url, token = await _run_daemon(first)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            body = {"type": "install", "configuration": str(config), "when_online": True}
            async with http.post(f"{url}/api/v1/jobs", json=body) as response:
                assert response.status == 201
                _compile, upload = (await response.json())["jobs"]
        async with asyncio.timeout(WAIT):
            while first.engine.get(upload["id"]).waiting != "device":
                await asyncio.sleep(0.05)
    finally:
        await _stop(first, task)

    second = Daemon(settings)
    task, url, token = await _run_daemon(second)
    try:
        assert [job.id for job in second.engine.armed_uploads()] == [upload["id"]]
        # What the device monitor does when ``wakes`` announces itself.
        released = second.engine.device_seen("wakes", "127.0.0.1")
        assert [job.id for job in released] == [upload["id"]]
        async with asyncio.timeout(WAIT):
            while not second.engine.get(upload["id"]).status.terminal:
                await asyncio.sleep(0.05)
        assert second.engine.get(upload["id"]).status is JobStatus.COMPLETED
        [flashed] = _uploads(uploads)
        assert flashed["device"] == "127.0.0.1" and flashed["config"] == str(config)
    finally:
        await _stop(second, task)
