"""Real firmware, real OTA: a host-platform ESPHome device compiled and flashed by meshd."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from meshd.jobs.model import JobType
from meshd.toolchain.runners import make_runners
from meshd.toolchain.storage import FlashMethod, flash_plan, load_storage
from meshd.toolchain.tools import Toolchain
from tests.support.host_device import (
    BOOT_LINE,
    LOOPBACK_HEX,
    REEXEC_LINE,
    HostDevice,
    HostFirmware,
    listening_addresses,
    write_host_project,
)
from tests.support.jobs import make_job, run_job

pytestmark = pytest.mark.slow


def test_session_build_is_recorded_by_esphome(host_firmware: HostFirmware) -> None:
    record = load_storage(host_firmware.config)
    assert record.name == host_firmware.name
    assert record.family == "host" and record.target_platform == "HOST"
    assert record.esphome_version == "2026.6.5"
    assert record.firmware_bin_path == host_firmware.program
    plan = flash_plan(record, FlashMethod.OTA, host_firmware.config)
    assert [f.role for f in plan.images] == ["app"]
    assert plan.images[0].path == host_firmware.program
    assert plan.missing() == []


def test_device_listens_on_loopback_only(host_device: HostDevice) -> None:
    addresses = listening_addresses(host_device.port)
    assert addresses and addresses <= LOOPBACK_HEX


async def test_compile_then_ota_reexecs_the_device(
    host_project: HostFirmware,
    host_device: HostDevice,
    offline_toolchain: Toolchain,
    loopback_toolchain: Toolchain,
) -> None:
    """A warm compile with a new boot marker, uploaded over real OTA, boots on the device."""
    host_project.write_config(marker="T")  # unique per test: the build tree is shared
    compile_rec = make_job(JobType.COMPILE, host_project.config)
    failed = await run_job(make_runners(offline_toolchain)[JobType.COMPILE], compile_rec)
    assert failed is None, failed
    assert any(line.startswith("Linking ") for line in compile_rec.lines)
    assert compile_rec.progress[0] == 0.05 and compile_rec.progress[-1] == 1.0
    assert compile_rec.progress == sorted(compile_rec.progress)

    boots = host_device.count(BOOT_LINE)
    upload_rec = make_job(JobType.UPLOAD, host_project.config, device="127.0.0.1")
    failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], upload_rec)
    assert failed is None, failed
    assert any("OTA successful" in line for line in upload_rec.lines)
    assert upload_rec.progress[-1] == 1.0

    await asyncio.to_thread(host_device.wait_for, REEXEC_LINE)
    await asyncio.to_thread(host_device.wait_for, BOOT_LINE, occurrences=boots + 1)
    await asyncio.to_thread(host_device.wait_for, "meshd build marker T")
    assert host_device.exe.read_bytes() == host_project.program.read_bytes()


async def test_wrong_password_fails_with_the_device_error(
    host_project: HostFirmware, host_device: HostDevice, loopback_toolchain: Toolchain
) -> None:
    host_project.write_config(password="definitely-wrong")
    rec = make_job(JobType.UPLOAD, host_project.config, device="127.0.0.1")
    failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], rec)
    assert failed is not None
    assert "Authentication invalid. Is the password correct?" in str(failed)
    await asyncio.to_thread(host_device.wait_for, "Password mismatch")
    assert host_device.count(REEXEC_LINE) == 0


async def test_non_firmware_payload_is_rejected(
    host_firmware: HostFirmware,
    host_device: HostDevice,
    loopback_toolchain: Toolchain,
    tmp_path: Path,
) -> None:
    """The device validates what it receives: a text file is not an executable."""
    config = write_host_project(
        tmp_path,
        name=host_firmware.name,
        port=host_firmware.ota_port,
        password=host_firmware.password,
        image=b"#!/bin/sh\necho not firmware\n" * 100,
    )
    rec = make_job(JobType.UPLOAD, config, device="127.0.0.1")
    failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], rec)
    assert failed is not None
    assert "Finishing update failed" in str(failed)
    await asyncio.to_thread(host_device.wait_for, "Uploaded payload is not a valid ELF")
    assert host_device.exe.read_bytes() == host_firmware.snapshot.read_bytes()


async def test_flash_plan_files_are_enough_for_esphome_upload(
    host_firmware: HostFirmware,
    host_device: HostDevice,
    loopback_toolchain: Toolchain,
    tmp_path: Path,
) -> None:
    """Copy only the required files flash_plan lists to a fresh config dir; upload works."""
    record = load_storage(host_firmware.config)
    plan = flash_plan(record, FlashMethod.OTA, host_firmware.config)
    target = tmp_path / "materialised"
    data = target / ".esphome"
    build = data / "build" / record.name
    (data / "storage").mkdir(parents=True)
    shutil.copy2(host_firmware.config, target / host_firmware.config.name)
    for item in plan.files:
        if not item.required:
            continue
        if item.role == "app":
            dest = build / item.path.relative_to(record.build_path or Path("/"))
        else:
            dest = data / "storage" / item.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item.path, dest)
    # The record names absolute paths; point them at the new place, as materialising must.
    storage = data / "storage" / record.path.name
    storage.write_text(storage.read_text().replace(str(record.build_path), str(build)))
    boots = host_device.count(BOOT_LINE)
    rec = make_job(JobType.UPLOAD, target / host_firmware.config.name, device="127.0.0.1")
    failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], rec)
    assert failed is None, failed
    await asyncio.to_thread(host_device.wait_for, BOOT_LINE, occurrences=boots + 1)
