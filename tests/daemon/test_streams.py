"""Live streams: the events websocket and ``meshd logs --follow``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.daemon.conftest import Meshd, host_config

WAIT = 120.0  # a safety net against hangs


async def test_events_websocket_carries_job_and_lane_events(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "cfg", compile_seconds=0.5)
    headers = {"Authorization": f"Bearer {daemon.token}"}
    seen: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.ws_connect(f"{daemon.url}/api/v1/events") as ws,
    ):
        async with session.post(
            f"{daemon.url}/api/v1/jobs",
            json={"type": "install", "configuration": str(config), "device": "127.0.0.1"},
        ) as response:
            assert response.status == 201
            compile_job, upload_job = (await response.json())["jobs"]
        async with asyncio.timeout(WAIT):
            async for message in ws:
                event = json.loads(message.data)
                seen.append(event)
                job = event.get("job") or {}
                if event["type"] == "job_completed" and job["id"] == upload_job["id"]:
                    break
    types = [(e["type"], (e.get("job") or {}).get("id")) for e in seen]
    for kind in ("job_queued", "job_started", "job_output", "job_progress", "job_completed"):
        assert (kind, compile_job["id"]) in types, kind
    assert ("job_completed", upload_job["id"]) in types
    started = types.index(("job_started", compile_job["id"]))
    assert types.index(("job_completed", compile_job["id"])) > started
    lanes = [e for e in seen if e["type"] == "lane_status"]
    assert {e["lane"] for e in lanes} == {"compile", "upload"}
    assert any(not e["idle"] for e in lanes) and lanes[-1]["idle"]
    lines = [e["line"] for e in seen if e["type"] == "job_output"]
    assert any("Compiling app... Build path:" in line for line in lines)


async def test_events_websocket_needs_the_token(daemon: Meshd) -> None:
    async with aiohttp.ClientSession() as session:
        try:
            await session.ws_connect(f"{daemon.url}/api/v1/events")
            raise AssertionError("unauthenticated websocket accepted")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401


def test_logs_follow_streams_until_the_job_ends(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "cfg", compile_seconds=3)
    ids = daemon.cli_json("compile", str(config), "--detach")
    daemon.wait_status(ids["compile"], "running")
    env = dict(daemon.env, MESHD_DATA_DIR=str(daemon.data_dir))
    follower = subprocess.Popen(
        [sys.executable, "-m", "meshd", "logs", ids["compile"], "--follow"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = follower.communicate(timeout=WAIT)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    # Everything from the start (queued, the command) to the end (completed), in order.
    assert lines[0].startswith("queued compile")
    assert any(line.startswith("$ ") and "compile" in line for line in lines)
    assert "Linking .pioenvs/dev1/program" in lines
    assert lines[-1] == "completed"
    assert daemon.job(ids["compile"])["status"] == "completed"
    # Without --follow the whole log is printed too, and the job's outcome doesn't matter.
    again = daemon.cli("logs", ids["compile"])
    assert again.returncode == 0 and again.stdout.splitlines() == lines


def test_logs_follow_of_failed_job_exits_1(daemon: Meshd, tmp_path: Path) -> None:
    config = host_config(tmp_path / "cfg", compile_fail=1)
    ids = daemon.cli_json("compile", str(config), "--detach")
    result = daemon.cli("logs", ids["compile"], "--follow")
    assert result.returncode == 1
    assert "stand-in compile failure" in result.stdout
    # The job's final note (its error, which runs over several lines) ends the log.
    assert "\nfailed: esphome compile failed (exit status 1)\n" in result.stdout
