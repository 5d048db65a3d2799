"""The fleet through a real ``meshd serve`` and the CLI only: devices, update, armed uploads.

Devices are fake firmware adverts (``EsphomeAdvertiser``: the exact TXT real firmware
sends) on 127.0.0.1, where the daemon's device monitor is pinned; the stand-in esphome
compiles, computes ``config-hash`` and "uploads" (it records every upload in a log the
test reads). The daemon is restarted while one upload is armed, and a real advert
releases it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.conftest import Meshd, MeshdFactory
from tests.support.esphome_advert import EsphomeAdvertiser, esp32_txt
from tests.support.standin_esphome import VERSION

WAIT = 90.0  # a safety net against hangs, not a speed assertion

NAMES = ("dev-a", "dev-b", "dev-c", "dev-d", "dev-e")


def _config(directory: Path, name: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(
        f"esphome:\n  name: {name}\nesp32:\n  board: esp32dev\nwifi:\n  ssid: x\n"
        "api:\nota:\n  - platform: esphome\n",
        encoding="utf-8",
    )
    return path


def _hash(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


async def _cli(daemon: Meshd, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**daemon.env, "MESHD_DATA_DIR": str(daemon.data_dir), "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshd",
        *args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def _devices(daemon: Meshd) -> dict[str, dict[str, Any]]:
    result = await _cli(daemon, "devices", "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)["devices"]}


async def _until_states(daemon: Meshd, expected: dict[str, str]) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while True:
        rows = await _devices(daemon)
        states = {name: rows[name]["state"] for name in expected if name in rows}
        if states == expected:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"states {states}, wanted {expected}\n{daemon.log()}")
        await asyncio.sleep(0.2)


async def _until_job(daemon: Meshd, job_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        result = await _cli(daemon, "show", job_id, "--json")
        job: dict[str, Any] = json.loads(result.stdout)
        if job["status"] == status:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id}: {job}\n{daemon.log()}")
        await asyncio.sleep(0.2)


async def _reboot_into_new_builds(
    adverts: EsphomeAdvertiser, log: Path, paths: dict[str, Path], stop: asyncio.Event
) -> None:
    """Play the devices: after each upload the stand-in records, the device says
    goodbye (it reboots) and announces the config hash of its new build."""
    handled = 0
    while not stop.is_set():
        uploads = _uploads(log)
        for name in uploads[handled:]:
            await adverts.goodbye(name)
            txt = esp32_txt(name, version=VERSION, config_hash=_hash(paths[name]))
            await adverts.announce(name, port=6053, txt=txt)
        handled = len(uploads)
        await asyncio.sleep(0.1)


def _uploads(log: Path) -> list[str]:
    if not log.is_file():
        return []
    return [Path(json.loads(line)["config"]).stem for line in log.read_text().splitlines()]


@pytest.mark.slow
async def test_devices_update_outdated_and_an_armed_upload_across_a_restart(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    paths = {name: _config(configs, name) for name in NAMES}
    upload_log = tmp_path / "uploads.jsonl"
    daemon = meshd(
        args=("--config-dir", str(configs), "--verify-timeout", "30"),
        env={"STANDIN_UPLOAD_LOG": str(upload_log)},
    ).start()
    stop = asyncio.Event()
    async with EsphomeAdvertiser() as adverts:
        devices = asyncio.create_task(_reboot_into_new_builds(adverts, upload_log, paths, stop))
        try:
            await _scenario(daemon, adverts, configs, paths, upload_log)
        finally:
            stop.set()
            await devices


async def _scenario(
    daemon: Meshd,
    adverts: EsphomeAdvertiser,
    configs: Path,
    paths: dict[str, Path],
    upload_log: Path,
) -> None:
    current = {name: _hash(path) for name, path in paths.items()}
    await adverts.announce(
        "dev-a",
        port=6053,
        txt=esp32_txt("dev-a", version=VERSION, config_hash=current["dev-a"]),
    )
    await adverts.announce(
        "dev-b", port=6053, txt=esp32_txt("dev-b", version=VERSION, config_hash="0badc0de")
    )
    await adverts.announce(
        "dev-c",
        port=6053,
        txt=esp32_txt("dev-c", version="2025.12.0", config_hash=current["dev-c"]),
    )
    await adverts.announce(
        "dev-d", port=6053, txt=esp32_txt("dev-d", version=VERSION, config_hash="0badc0de")
    )
    await adverts.goodbye("dev-d")
    rows = await _until_states(
        daemon,
        {
            "dev-a": "up-to-date",
            "dev-b": "outdated",
            "dev-c": "outdated",
            "dev-d": "offline",
            "dev-e": "never-built",
        },
    )
    assert rows["dev-a"]["online"] and rows["dev-a"]["address"] == "127.0.0.1"
    assert rows["dev-a"]["current_config_hash"] == current["dev-a"]
    assert not rows["dev-d"]["online"] and rows["dev-d"]["needs_update"] is True
    table = await _cli(daemon, "devices")
    assert table.returncode == 0 and "never-built" in table.stdout

    update = await _cli(daemon, "update", "--outdated", str(configs), "--json")
    assert update.returncode == 0, update.stdout + update.stderr + daemon.log()
    outcomes = {o["name"]: o for o in json.loads(update.stdout)["outcomes"]}
    assert {n: o["outcome"] for n, o in outcomes.items()} == {
        "dev-b": "flashed",
        "dev-c": "flashed",
        "dev-d": "deferred",
    }
    assert sorted(_uploads(upload_log)) == ["dev-b", "dev-c"]
    for name in ("dev-b", "dev-c"):
        flashed = await _until_job(daemon, outcomes[name]["upload"], "completed")
        assert (flashed["reason_code"], flashed["reason"]) == ("verified", "verified")
    # `meshd devices` now says which esphome built what meshd flashed to each of them.
    after = await _devices(daemon)
    for name in ("dev-b", "dev-c"):
        assert after[name]["last_flash"] == {
            "upload_job": outcomes[name]["upload"],
            "esphome_version": VERSION,
            "builder": "local",
            "verified": None,
        }
    assert after["dev-a"]["last_flash"] is None
    shown = await _cli(daemon, "devices")
    assert shown.returncode == 0 and "flashed" in shown.stdout.splitlines()[0]
    armed = outcomes["dev-d"]["upload"]

    # The armed upload survives a restart...
    assert daemon.terminate() == 0
    daemon.start()
    job = await _until_job(daemon, armed, "queued")
    assert job["waiting"] == "device"

    # ...and the device's first advert releases it (it is offline since the goodbye).
    await _until_states(daemon, {"dev-d": "offline"})
    sent_wall = time.time()
    await adverts.announce(
        "dev-d", port=6053, txt=esp32_txt("dev-d", version=VERSION, config_hash="0badc0de")
    )
    done = await _until_job(daemon, armed, "completed")
    assert done["device"] == "127.0.0.1"
    assert done["reason_code"] == "verified", done
    assert sorted(_uploads(upload_log)) == ["dev-b", "dev-c", "dev-d"]
    # Measured, not asserted: advert → upload start (the job's own start time).
    print(f"advert -> upload start: {done['started_at'] - sent_wall:.3f} s")


@pytest.mark.slow
async def test_install_without_device_resolves_it_and_an_old_build_fails(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    path = _config(configs, "dev-a")
    upload_log = tmp_path / "uploads.jsonl"
    daemon = meshd(
        args=("--config-dir", str(configs), "--verify-timeout", "20"),
        env={"STANDIN_UPLOAD_LOG": str(upload_log)},
    ).start()
    old = esp32_txt("dev-a", version=VERSION, config_hash="0badc0de")
    async with EsphomeAdvertiser() as adverts:
        await adverts.announce("dev-a", port=6053, txt=old)
        await _until_states(daemon, {"dev-a": "outdated"})

        async def reboot_into_the_old_build() -> None:
            while not _uploads(upload_log):
                await asyncio.sleep(0.05)
            await adverts.goodbye("dev-a")
            await adverts.announce("dev-a", port=6053, txt=old)

        device = asyncio.create_task(reboot_into_the_old_build())
        result = await _cli(daemon, "install", str(path), "--json")
        await device
    assert result.returncode == 1, result.stdout + result.stderr
    jobs = {job["type"]: job for job in json.loads(result.stdout)["jobs"]}
    upload = jobs["upload"]
    assert upload["status"] == "failed" and upload["reason_code"] == "wrong_build", upload
    log = await _cli(daemon, "logs", upload["id"])
    assert "[meshd] uploading to 127.0.0.1:" in log.stdout, log.stdout
    assert "verify: wrong build running" in log.stdout, log.stdout
    assert _uploads(upload_log) == ["dev-a"]


async def test_compile_all_then_flash_a_kept_build(meshd: MeshdFactory, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("dev-a", "dev-b"):
        _config(configs, name)
    (configs / "secrets.yaml").write_text("x: y\n", encoding="utf-8")
    upload_log = tmp_path / "uploads.jsonl"
    daemon = meshd(env={"STANDIN_UPLOAD_LOG": str(upload_log)}).start()
    built = await _cli(daemon, "compile", "--all", str(configs), "--json")
    assert built.returncode == 0, built.stdout + built.stderr
    jobs = json.loads(built.stdout)["jobs"]
    assert sorted(Path(j["configuration"]).stem for j in jobs) == ["dev-a", "dev-b"]
    assert all(j["status"] == "completed" for j in jobs)
    kept = await _cli(daemon, "artifacts", str(configs / "dev-a.yaml"), "--json")
    builds = json.loads(kept.stdout)["builds"]
    compile_a = next(j["id"] for j in jobs if j["configuration"].endswith("dev-a.yaml"))
    assert [b["build_id"] for b in builds] == [compile_a]
    flash = await _cli(
        daemon, "upload", str(configs / "dev-a.yaml"), "--device", "127.0.0.1", "--build", compile_a
    )
    assert flash.returncode == 0, flash.stdout + flash.stderr
    assert _uploads(upload_log) == ["dev-a"]
