"""ESP32 as far as it goes here: real config/generate, real records, esptool against a mock chip.

An ESP32 compile needs toolchains PlatformIO downloads at build time, so none runs.
``esphome config`` and ``esphome compile --only-generate`` do run (offline, in a
network namespace) and write the real StorageJSON; the images are synthetic ones
made with esptool's own image classes, and the serial port is
``esp32-mock-bootloader`` on a PTY.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshd.jobs.model import JobType
from meshd.toolchain.chip import detect_chip, normalise_chip
from meshd.toolchain.commands import EsphomeFailed, invoke_esphome, validate_config
from meshd.toolchain.runners import make_runners
from meshd.toolchain.storage import FlashMethod, flash_plan, load_storage
from meshd.toolchain.tools import Toolchain
from tests.support.fake_serial import MockBootloader, mock_bootloader_command, silent_pty
from tests.support.jobs import make_job, run_job

ESP32_YAML = """\
esphome:
  name: meshd-esp32
esp32:
  variant: esp32s3
  framework:
    type: esp-idf
logger:
wifi:
  ssid: "meshd-test-ssid"
  password: "meshd-test-psk"
ota:
  - platform: esphome
    password: "meshd-test"
"""
ESPTOOL = str(Path(sys.executable).parent / "esptool")

needs_mock = pytest.mark.skipif(
    mock_bootloader_command() is None, reason="esp32-mock-bootloader not installed"
)


@dataclass(frozen=True)
class Esp32Project:
    config: Path
    app: Path
    bootloader: Path
    partitions: Path


def _synthetic_app(path: Path) -> None:
    """A valid ESP32-S3 app image, built by esptool's own image writer."""
    from esptool.bin_image import ELFSection, ESP32S3FirmwareImage

    image = ESP32S3FirmwareImage()
    image.entrypoint = 0x40375000
    image.segments = [
        ELFSection(b".dram0.data", 0x3FC88000, os.urandom(1024), 0),
        ELFSection(b".iram0.text", 0x40374000, os.urandom(4096), 0),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(str(path))


@pytest.fixture(scope="module")
def esp32_project(
    tmp_path_factory: pytest.TempPathFactory, offline_toolchain: Toolchain
) -> Esp32Project:
    """``esphome compile --only-generate`` of an ESP32-S3 config, plus synthetic images."""
    directory = tmp_path_factory.mktemp("esp32")
    config = directory / "esp32dev.yaml"
    config.write_text(ESP32_YAML)
    result = subprocess.run(
        [*offline_toolchain.esphome, "compile", "--only-generate", str(config)],
        env=offline_toolchain.environ(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    record = load_storage(config)
    assert record.build_path is not None and record.firmware_bin_path is not None
    pioenv = record.firmware_bin_path.parent
    app = record.firmware_bin_path
    _synthetic_app(app)
    bootloader = pioenv / "bootloader.bin"
    _synthetic_app(bootloader)
    partitions = pioenv / "partitions.bin"
    partitions.write_bytes(b"\xaa\x50" + b"\xff" * 3070)
    # What PlatformIO's `-t idedata` would have cached; esphome trusts it while it is
    # newer than platformio.ini (esphome/platformio/toolchain.py).
    idedata = config.parent / ".esphome" / "idedata" / f"{record.name}.json"
    idedata.parent.mkdir(parents=True, exist_ok=True)
    idedata.write_text(
        json.dumps(
            {
                "prog_path": str(app.with_suffix(".elf")),
                "extra": {
                    "flash_images": [
                        {"path": str(bootloader), "offset": "0x0"},
                        {"path": str(partitions), "offset": "0x8000"},
                    ]
                },
            }
        )
    )
    return Esp32Project(config, app, bootloader, partitions)


async def test_config_helper_returns_validated_yaml(
    esp32_project: Esp32Project, offline_toolchain: Toolchain
) -> None:
    lines: list[str] = []
    text = await validate_config(
        offline_toolchain, esp32_project.config, log=lines.append, on_start=None
    )
    assert "variant: ESP32S3" in text
    assert "port: 3232" in text
    assert "INFO" not in text
    assert any("Configuration is valid!" in line for line in lines)


async def test_config_helper_raises_with_the_validation_error(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text(ESP32_YAML.replace("variant: esp32s3", "variant: esp99"))
    with pytest.raises(EsphomeFailed) as info:
        await validate_config(offline_toolchain, config, log=lambda _line: None, on_start=None)
    assert "esp99" in str(info.value).lower() and info.value.returncode != 0


def test_storage_record_as_esphome_wrote_it(esp32_project: Esp32Project) -> None:
    record = load_storage(esp32_project.config)
    assert record.name == "meshd-esp32"
    assert record.target_platform == "ESP32S3" and record.family == "esp32"
    assert record.framework == "esp-idf" and record.toolchain == "platformio"
    assert record.esphome_version == "2026.6.5"
    assert record.firmware_bin_path == esp32_project.app
    assert record.firmware_bin_path.name == "firmware.bin"


def test_flash_plans(esp32_project: Esp32Project) -> None:
    record = load_storage(esp32_project.config)
    ota = flash_plan(record, FlashMethod.OTA, esp32_project.config)
    assert [(f.role, f.path) for f in ota.images] == [("app", esp32_project.app)]
    serial = flash_plan(record, FlashMethod.SERIAL, esp32_project.config)
    layout = [(f.role, f.offset) for f in serial.images if f.required]
    assert layout == [("bootloader", 0x0), ("partitions", 0x8000), ("app", 0x10000)]
    assert {f.role for f in serial.upload_support} >= {"storage", "idedata", "platformio_ini"}
    assert serial.missing() == []


def test_esptool_image_info_and_merge_bin(esp32_project: Esp32Project, tmp_path: Path) -> None:
    info = subprocess.run(
        [ESPTOOL, "--chip", "esp32s3", "image-info", str(esp32_project.app)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Checksum:" in info.stdout and "(valid)" in info.stdout
    merged = tmp_path / "firmware.factory.bin"
    images = [
        *("0x0", str(esp32_project.bootloader)),
        *("0x8000", str(esp32_project.partitions)),
        *("0x10000", str(esp32_project.app)),
    ]
    subprocess.run(
        [ESPTOOL, "--chip", "esp32s3", "merge-bin", "-o", str(merged), *images],
        capture_output=True,
        check=True,
    )
    blob = merged.read_bytes()
    app = esp32_project.app.read_bytes()
    assert blob[0x10000 : 0x10000 + len(app)] == app
    assert blob[0x8000:0x8002] == b"\xaa\x50"


@needs_mock
async def test_detect_chip_over_tcp_socket(loopback_toolchain: Toolchain) -> None:
    with MockBootloader("esp32c6", pty=False) as mock:
        assert mock.port.startswith("socket://127.0.0.1:")
        found = await detect_chip(loopback_toolchain, mock.port, lambda _line: None, on_start=None)
    assert normalise_chip(found) == "ESP32C6"


@needs_mock
async def test_serial_upload_verifies_chip_and_flashes(
    esp32_project: Esp32Project, loopback_toolchain: Toolchain
) -> None:
    with MockBootloader("esp32s3") as mock:
        rec = make_job(JobType.UPLOAD, esp32_project.config, device=mock.port)
        failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], rec)
    assert failed is None, failed
    assert any("verify-chip: ESP32-S3" in line for line in rec.lines)
    assert len(rec.processes) == 2, "esptool's and esphome's groups are both recorded"
    for offset in ("0x00000000", "0x00008000", "0x00010000"):
        assert any(line.startswith("Wrote ") and f"at {offset}" in line for line in rec.lines)
    assert any("Hash of data verified" in line for line in rec.lines)
    # Three images, each announced with one bar: a third per image written.
    assert rec.progress == pytest.approx([1 / 3, 2 / 3, 1.0])


@needs_mock
async def test_serial_upload_refuses_the_wrong_chip(
    esp32_project: Esp32Project, loopback_toolchain: Toolchain
) -> None:
    with MockBootloader("esp32c3") as mock:
        rec = make_job(JobType.UPLOAD, esp32_project.config, device=mock.port)
        failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], rec)
    assert failed is not None
    assert str(failed) == "chip mismatch (expected ESP32S3, found ESP32-C3)"
    assert not any("Writing at" in line for line in rec.lines)


async def test_cancel_during_chip_detection(
    esp32_project: Esp32Project, loopback_toolchain: Toolchain
) -> None:
    with silent_pty() as port:
        rec = make_job(JobType.UPLOAD, esp32_project.config, device=port)
        task = asyncio.create_task(make_runners(loopback_toolchain)[JobType.UPLOAD].run(rec.ctx))
        for _ in range(200):
            if any("Connecting" in line for line in rec.lines):
                break
            await asyncio.sleep(0.05)
        assert any("Connecting" in line for line in rec.lines), rec.lines
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not any("esphome" in line and line.startswith("$ ") for line in rec.lines)


async def test_clean_removes_the_build_tree(tmp_path: Path, offline_toolchain: Toolchain) -> None:
    config = tmp_path / "cleanme.yaml"
    config.write_text(ESP32_YAML)
    await invoke_esphome(
        offline_toolchain,
        ["compile", "--only-generate", str(config)],
        log=lambda _l: None,
        on_start=None,
    )
    build = load_storage(config).build_path
    assert build is not None and build.is_dir()
    rec = make_job(JobType.CLEAN, config)
    assert await run_job(make_runners(offline_toolchain)[JobType.CLEAN], rec) is None
    assert not (build / "src").exists()
    assert any("Done!" in line for line in rec.lines)


async def test_reset_build_env_wipes_builds_and_the_platformio_core(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    """clean-all deletes PlatformIO's core dir, so this runs against a throwaway one."""
    core = tmp_path / "throwaway-core"
    (core / "packages" / "tool-x").mkdir(parents=True)
    toolchain = Toolchain(
        esphome=offline_toolchain.esphome,
        env={**offline_toolchain.env, "PLATFORMIO_CORE_DIR": str(core)},
    )
    project = tmp_path / "configs"
    project.mkdir()
    config = project / "resetme.yaml"
    config.write_text(ESP32_YAML)
    await invoke_esphome(
        toolchain, ["compile", "--only-generate", str(config)], log=lambda _l: None, on_start=None
    )
    rec = make_job(JobType.RESET_BUILD_ENV, project)
    assert await run_job(make_runners(toolchain)[JobType.RESET_BUILD_ENV], rec) is None
    assert not (project / ".esphome" / "build").exists()
    assert (project / ".esphome" / "storage" / "resetme.yaml.json").is_file()
    assert not core.exists()
    assert shutil.which("esphome", path=toolchain.environ()["PATH"]) is not None
