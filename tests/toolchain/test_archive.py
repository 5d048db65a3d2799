"""Kept builds: what a compile leaves is kept per configuration, and flashes later as it was.

The stand-in esphome writes the files real esphome writes, where it writes them, so
the archive reads the same StorageJSON; one slow test flashes a kept build of the
real host-platform firmware over real OTA.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from meshd.jobs.engine import Engine
from meshd.jobs.model import JobStatus, JobType
from meshd.jobs.options import JobOptions
from meshd.toolchain.archive import MANIFEST, ArchiveError, BuildArchive, config_key
from meshd.toolchain.runners import make_runners
from meshd.toolchain.tools import Toolchain
from tests.support.host_device import REEXEC_LINE, HostDevice, HostFirmware
from tests.support.jobs import make_job, run_job

REPO = Path(__file__).resolve().parents[2]
STANDIN = (sys.executable, str(REPO / "tests" / "support" / "standin_esphome.py"))


def _config(
    directory: Path, name: str = "kitchen", platform: str = "esp32", mark: str = "1"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(f"esphome:\n  name: {name}\n{platform}:\n  board: x\n# build {mark}\n")
    return path


@pytest.fixture
def uploads(tmp_path: Path) -> Path:
    return tmp_path / "uploads.jsonl"


@pytest.fixture
def standin(uploads: Path) -> Toolchain:
    return Toolchain(esphome=STANDIN, env={"STANDIN_UPLOAD_LOG": str(uploads)})


async def _compile(toolchain: Toolchain, config: Path) -> None:
    failed = await run_job(
        make_runners(toolchain)[JobType.COMPILE], make_job(JobType.COMPILE, config)
    )
    assert failed is None, failed


def _firmware(config: Path) -> Path:
    storage = json.loads(
        (config.parent / ".esphome" / "storage" / f"{config.name}.json").read_text()
    )
    return Path(storage["firmware_bin_path"])


def _flashed(uploads: Path) -> list[dict[str, Any]]:
    if not uploads.exists():
        return []
    return [json.loads(line) for line in uploads.read_text().splitlines()]


async def test_a_kept_build_holds_the_flash_plan_with_digests(
    tmp_path: Path, standin: Toolchain
) -> None:
    config = _config(tmp_path / "cfg")
    await _compile(standin, config)
    archive = BuildArchive(tmp_path / "artifacts")
    build = archive.keep_build(config, "0123456789ab")

    assert build.directory == tmp_path / "artifacts" / config_key(config) / "0123456789ab"
    assert (build.name, build.platform, build.methods) == ("kitchen", "ESP32", ("ota",))
    assert build.esphome_version == "2026.6.5"
    roles = {f.role: f for f in build.files}
    assert set(roles) == {"app", "storage", "validated_config", "build_info"}
    assert roles["app"].path == "build/kitchen/.pioenvs/kitchen/firmware.bin"
    app = build.directory / "files" / roles["app"].path
    assert roles["app"].sha256 == hashlib.sha256(_firmware(config).read_bytes()).hexdigest()
    assert app.read_bytes() == _firmware(config).read_bytes()
    assert stat.S_IMODE(app.stat().st_mode) == 0o600  # the validated config holds secrets
    manifest = json.loads((build.directory / MANIFEST).read_text())
    assert manifest["job_id"] == "0123456789ab" and manifest["configuration"] == str(config)
    assert archive.builds(config) == [build]
    archive.verify(build)


async def test_esp8266_builds_can_also_be_flashed_over_serial(
    tmp_path: Path, standin: Toolchain
) -> None:
    config = _config(tmp_path / "cfg", "plug", "esp8266")
    await _compile(standin, config)
    build = BuildArchive(tmp_path / "artifacts").keep_build(config, "00000000aaaa")
    assert build.methods == ("ota", "serial")


async def test_only_the_last_n_are_kept_newest_first(tmp_path: Path, standin: Toolchain) -> None:
    config = _config(tmp_path / "cfg")
    archive = BuildArchive(tmp_path / "artifacts", keep=3)
    ids = [f"{n:012x}" for n in range(1, 5)]
    for index, build_id in enumerate(ids):
        _config(tmp_path / "cfg", mark=str(index))
        await _compile(standin, config)
        archive.keep_build(config, build_id, created_at=1000.0 + index)
    assert [b.build_id for b in archive.builds(config)] == ids[:0:-1]
    assert not (archive.root / config_key(config) / ids[0]).exists()
    # Same file name in another directory: its own key, its own builds.
    other = _config(tmp_path / "elsewhere")
    assert config_key(other) != config_key(config)
    assert archive.builds(other) == []


async def test_flashing_a_kept_build_sends_that_firmware_and_leaves_the_tree_alone(
    tmp_path: Path, standin: Toolchain, uploads: Path
) -> None:
    config = _config(tmp_path / "cfg", mark="old")
    archive = BuildArchive(tmp_path / "artifacts")
    await _compile(standin, config)
    old = archive.keep_build(config, "00000000000a", created_at=1.0)
    old_firmware = _firmware(config).read_bytes()
    _config(tmp_path / "cfg", mark="new")
    await _compile(standin, config)
    new_firmware = _firmware(config).read_bytes()
    assert new_firmware != old_firmware

    upload = make_runners(standin, archive=archive)[JobType.UPLOAD]
    rec = make_job(JobType.UPLOAD, config, device="10.0.0.9", build=old.build_id)
    failed = await run_job(upload, rec)
    assert failed is None, failed
    [flashed] = _flashed(uploads)
    assert flashed["sha256"] == hashlib.sha256(old_firmware).hexdigest()
    assert flashed["device"] == "10.0.0.9"
    assert "flashing kept build 00000000000a" in rec.text
    # The live build tree still holds the new firmware; the scratch copy is gone.
    assert _firmware(config).read_bytes() == new_firmware
    assert not any((archive.root / ".staging").iterdir())

    # Without ``build`` the last compile is flashed, as before.
    failed = await run_job(upload, make_job(JobType.UPLOAD, config, device="10.0.0.9"))
    assert failed is None, failed
    assert _flashed(uploads)[-1]["sha256"] == hashlib.sha256(new_firmware).hexdigest()


async def test_a_damaged_or_unknown_kept_build_is_refused_and_nothing_flashes(
    tmp_path: Path, standin: Toolchain, uploads: Path
) -> None:
    config = _config(tmp_path / "cfg")
    archive = BuildArchive(tmp_path / "artifacts")
    await _compile(standin, config)
    build = archive.keep_build(config, "00000000000b")
    app = next(f for f in build.files if f.role == "app")
    (build.directory / "files" / app.path).write_bytes(b"bit rot")
    upload = make_runners(standin, archive=archive)[JobType.UPLOAD]

    failed = await run_job(
        upload, make_job(JobType.UPLOAD, config, device="d", build=build.build_id)
    )
    assert failed is not None and "is damaged" in str(failed)
    failed = await run_job(
        upload, make_job(JobType.UPLOAD, config, device="d", build="ffffffffffff")
    )
    assert failed is not None and "no kept build 'ffffffffffff'" in str(failed)
    no_archive = make_runners(standin)[JobType.UPLOAD]
    failed = await run_job(no_archive, make_job(JobType.UPLOAD, config, device="d", build="ab" * 6))
    assert failed is not None and "keeps no builds" in str(failed)
    assert _flashed(uploads) == []


def test_a_build_outside_the_data_dir_is_not_kept(tmp_path: Path) -> None:
    config = _config(tmp_path / "cfg")
    firmware = tmp_path / "custom-build" / "firmware.bin"
    firmware.parent.mkdir()
    firmware.write_bytes(b"fw")
    storage = config.parent / ".esphome" / "storage" / f"{config.name}.json"
    storage.parent.mkdir(parents=True)
    storage.write_text(
        json.dumps(
            {
                "name": "kitchen",
                "esp_platform": "ESP32",
                "core_platform": "esp32",
                "build_path": str(firmware.parent),
                "firmware_bin_path": str(firmware),
            }
        )
    )
    archive = BuildArchive(tmp_path / "artifacts")
    with pytest.raises(ArchiveError, match="outside ESPHome's data directory"):
        archive.keep_build(config, "00000000000c")
    assert archive.builds(config) == []
    assert not (archive.root / config_key(config)).exists()  # nothing half-kept


async def test_leftovers_of_a_crash_are_cleaned_and_kept_builds_stay(
    tmp_path: Path, standin: Toolchain
) -> None:
    config = _config(tmp_path / "cfg")
    await _compile(standin, config)
    archive = BuildArchive(tmp_path / "artifacts")
    build = archive.keep_build(config, "00000000000e")
    staged = archive.stage(config, build.build_id, "0000000000f1")
    partial = build.directory.parent / ".partial-00000000000f-abcd"
    partial.mkdir()
    archive.clean_leftovers()
    assert not staged.exists() and not partial.exists()
    assert archive.builds(config) == [build]
    archive.verify(build)


def test_no_build_record_is_a_clear_error(tmp_path: Path) -> None:
    config = _config(tmp_path / "cfg")
    with pytest.raises(ArchiveError, match="compile it first"):
        BuildArchive(tmp_path / "artifacts").keep_build(config, "00000000000d")


async def test_the_engine_keeps_every_completed_compile_but_a_receivers_copy(
    tmp_path: Path, standin: Toolchain
) -> None:
    archive = BuildArchive(tmp_path / "artifacts")
    engine = Engine(tmp_path / "data", make_runners(standin, archive=archive))
    engine.after_compile = archive.after_compile
    await engine.start()
    try:
        config = _config(tmp_path / "cfg")
        job = engine.submit(JobType.COMPILE, str(config))
        copy = engine.submit(
            JobType.COMPILE,
            str(_config(tmp_path / "theirs")),
            options=JobOptions(force_local=True, offloader="ab" * 32),
        )
        async with asyncio.timeout(60):
            while not (engine.get(job.id).status.terminal and engine.get(copy.id).status.terminal):
                await asyncio.sleep(0.02)
        assert engine.get(job.id).status is JobStatus.COMPLETED
        assert [b.build_id for b in archive.builds(config)] == [job.id]
        assert any("kept build" in line for line in engine.logs.read_lines(job.id))
        assert engine.get(copy.id).status is JobStatus.COMPLETED
        assert archive.builds(tmp_path / "theirs" / "kitchen.yaml") == []
    finally:
        await engine.stop()


async def test_a_failing_keep_does_not_fail_the_compile(tmp_path: Path, standin: Toolchain) -> None:
    blocker = tmp_path / "artifacts"
    blocker.write_text("a file where the archive directory should be")
    archive = BuildArchive(blocker)
    engine = Engine(tmp_path / "data", make_runners(standin))
    engine.after_compile = archive.after_compile
    await engine.start()
    try:
        job = engine.submit(JobType.COMPILE, str(_config(tmp_path / "cfg")))
        async with asyncio.timeout(60):
            while not engine.get(job.id).status.terminal:
                await asyncio.sleep(0.02)
        assert engine.get(job.id).status is JobStatus.COMPLETED
        log = "\n".join(engine.logs.read_lines(job.id))
        assert "warning: could not keep this build" in log
    finally:
        await engine.stop()


@pytest.mark.slow
async def test_real_firmware_kept_then_flashed_over_ota_boots_that_build(
    tmp_path: Path,
    host_project: HostFirmware,
    host_device: HostDevice,
    offline_toolchain: Toolchain,
    loopback_toolchain: Toolchain,
) -> None:
    """Real esphome: the kept build of marker K1 is flashed after K2 was compiled."""
    archive = BuildArchive(tmp_path / "artifacts")
    host_project.write_config(marker="K1")
    await _compile(offline_toolchain, host_project.config)
    kept = await asyncio.to_thread(archive.keep_build, host_project.config, "0000000000c1")
    host_project.write_config(marker="K2")
    await _compile(offline_toolchain, host_project.config)
    live = host_project.program.read_bytes()

    upload = make_runners(loopback_toolchain, archive=archive)[JobType.UPLOAD]
    rec = make_job(JobType.UPLOAD, host_project.config, device="127.0.0.1", build=kept.build_id)
    failed = await run_job(upload, rec)
    assert failed is None, failed
    assert any("OTA successful" in line for line in rec.lines)
    await asyncio.to_thread(host_device.wait_for, REEXEC_LINE)
    await asyncio.to_thread(host_device.wait_for, "meshd build marker K1")
    app = next(f for f in kept.files if f.role == "app")
    assert hashlib.sha256(host_device.exe.read_bytes()).hexdigest() == app.sha256
    assert host_project.program.read_bytes() == live  # the K2 build tree is untouched
