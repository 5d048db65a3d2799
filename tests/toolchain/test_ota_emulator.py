"""The OTA emulator against the real ``esphome upload`` (espota2), via meshd's upload runner."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from meshd.jobs.model import JobType
from meshd.toolchain.runners import make_runners
from meshd.toolchain.tools import Toolchain
from tests.support.host_device import free_port, write_host_project
from tests.support.jobs import make_job, run_job
from tests.support.ota_emulator import OtaEmulator, reject_non_elf

PASSWORD = "emulated-secret"


async def _upload(toolchain: Toolchain, config: Path) -> tuple[object, list[str], list[float]]:
    rec = make_job(JobType.UPLOAD, config, device="127.0.0.1")
    failed = await run_job(make_runners(toolchain)[JobType.UPLOAD], rec)
    return failed, rec.lines, rec.progress


async def test_upload_reaches_the_emulator_intact(
    tmp_path: Path, loopback_toolchain: Toolchain
) -> None:
    image = os.urandom(40_000)
    async with OtaEmulator(password=PASSWORD) as device:
        config = write_host_project(
            tmp_path, name="emu", port=device.port, password=PASSWORD, image=image
        )
        failed, lines, progress = await _upload(loopback_toolchain, config)
        assert failed is None, failed
        (received,) = await device.wait_for_uploads(1)
    assert received.accepted and received.data == image
    assert received.md5 == hashlib.md5(image).hexdigest()
    assert not received.compressed
    assert any("OTA successful" in line for line in lines)
    assert progress and progress[-1] == 1.0


async def test_compression_when_the_device_offers_it(
    tmp_path: Path, loopback_toolchain: Toolchain
) -> None:
    image = b"esphome " * 8000
    async with OtaEmulator(password=PASSWORD, compression=True) as device:
        config = write_host_project(
            tmp_path, name="emu8266", port=device.port, password=PASSWORD, image=image
        )
        failed, lines, _ = await _upload(loopback_toolchain, config)
        assert failed is None, failed
        (received,) = await device.wait_for_uploads(1)
    assert received.compressed and received.data == image and received.size < len(image)
    assert any("Compressed to" in line for line in lines)


async def test_wrong_password_is_the_job_error(
    tmp_path: Path, loopback_toolchain: Toolchain
) -> None:
    async with OtaEmulator(password=PASSWORD) as device:
        config = write_host_project(
            tmp_path, name="emu", port=device.port, password="not-it", image=b"x" * 1000
        )
        failed, lines, _ = await _upload(loopback_toolchain, config)
        assert device.auth_failures == 1 and not device.uploads
    assert failed is not None
    assert "Authentication invalid. Is the password correct?" in str(failed)
    assert any("Authentication invalid" in line for line in lines)


async def test_validator_rejects_non_firmware(
    tmp_path: Path, loopback_toolchain: Toolchain
) -> None:
    async with OtaEmulator(password=PASSWORD, validator=reject_non_elf) as device:
        config = write_host_project(
            tmp_path, name="emu", port=device.port, password=PASSWORD, image=b"not an elf" * 50
        )
        failed, _, _ = await _upload(loopback_toolchain, config)
        (received,) = await device.wait_for_uploads(1)
    assert not received.accepted
    assert failed is not None and "Finishing update failed" in str(failed)


@pytest.mark.slow
async def test_slow_link_rate_is_honoured(tmp_path: Path, loopback_toolchain: Toolchain) -> None:
    """A 48 KiB image at 16 KiB/s (a slow radio link) takes about 3 s, not milliseconds."""
    image = os.urandom(48 * 1024)
    async with OtaEmulator(password=PASSWORD, rate=16 * 1024) as device:
        config = write_host_project(
            tmp_path, name="thread", port=device.port, password=PASSWORD, image=image
        )
        started = time.monotonic()
        failed, lines, progress = await _upload(loopback_toolchain, config)
        elapsed = time.monotonic() - started
        assert failed is None, failed
        (received,) = await device.wait_for_uploads(1)
    assert received.data == image
    assert received.duration >= 2.5
    assert elapsed >= 2.5
    assert progress[-1] == 1.0
    took = next(line for line in lines if "Upload took" in line)
    assert float(took.split("Upload took ")[1].split()[0]) >= 2.5


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_esp32_style_device_on_3232(tmp_path: Path, loopback_toolchain: Toolchain) -> None:
    if not _port_free(3232):
        pytest.skip("port 3232 is in use on 127.0.0.1")
    async with OtaEmulator(password=PASSWORD, port=3232) as device:
        assert device.port == 3232
        config = write_host_project(
            tmp_path, name="esp32ish", port=3232, password=PASSWORD, image=b"\xe9" + b"\0" * 9000
        )
        failed, _, _ = await _upload(loopback_toolchain, config)
        assert failed is None, failed
        (received,) = await device.wait_for_uploads(1)
    assert received.size == 9001


async def test_emulator_answers_bad_magic() -> None:
    import asyncio

    async with OtaEmulator() as device:
        reader, writer = await asyncio.open_connection("127.0.0.1", device.port)
        writer.write(b"HELLO")
        await writer.drain()
        assert await reader.read(1) == b"\x80"
        writer.close()
        await writer.wait_closed()
    assert free_port() > 0


@pytest.mark.slow
async def test_ota_progress_streams_during_upload(
    tmp_path: Path, loopback_toolchain: Toolchain
) -> None:
    async with OtaEmulator(password=PASSWORD, rate=64 * 1024) as device:
        config = write_host_project(
            tmp_path, name="streamed", port=device.port, password=PASSWORD, image=os.urandom(96_000)
        )
        failed, _, progress = await _upload(loopback_toolchain, config)
        assert failed is None, failed
    assert any(0.0 < value < 1.0 for value in progress), progress
