"""Clear errors, with nothing lost, from the real esphome CLI."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from meshd.jobs.model import JobType
from meshd.toolchain.runners import make_runners
from meshd.toolchain.tools import Toolchain
from tests.support.host_device import free_port, write_host_project
from tests.support.jobs import make_job, run_job
from tests.support.ota_emulator import RESPONSE_ERROR_UPDATE_PREPARE, OtaEmulator
from tests.support.pids import gone

BAD_SCHEMA = """\
esphome:
  name: bad-one
host:
logger:
  levelx: DEBUG
"""


async def test_missing_esphome_command(tmp_path: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(BAD_SCHEMA)
    runners = make_runners(Toolchain(esphome=(str(tmp_path / "no-such-esphome"),)))
    rec = make_job(JobType.COMPILE, config)
    failed = await run_job(runners[JobType.COMPILE], rec)
    assert failed is not None
    assert "esphome command not found" in str(failed)
    assert "no-such-esphome" in str(failed)
    assert "esphome command not found" in rec.text


async def test_esphome_not_executable(tmp_path: Path) -> None:
    fake = tmp_path / "esphome"
    fake.write_text("#!/bin/sh\n")
    os.chmod(fake, stat.S_IRUSR)
    config = tmp_path / "x.yaml"
    config.write_text(BAD_SCHEMA)
    runner = make_runners(Toolchain(esphome=(str(fake),)))[JobType.CLEAN]
    failed = await run_job(runner, make_job(JobType.CLEAN, config))
    assert failed is not None and "esphome command not found" in str(failed)


@pytest.mark.parametrize(
    "job_type", [JobType.COMPILE, JobType.UPLOAD, JobType.CLEAN, JobType.RENAME]
)
async def test_config_that_does_not_exist(
    tmp_path: Path, offline_toolchain: Toolchain, job_type: JobType
) -> None:
    rec = make_job(job_type, tmp_path / "missing.yaml", device="127.0.0.1", new_name="x")
    failed = await run_job(make_runners(offline_toolchain)[job_type], rec)
    assert failed is not None
    assert str(failed) == f"configuration not found: {tmp_path / 'missing.yaml'}"


async def test_reset_build_env_needs_a_directory(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    rec = make_job(JobType.RESET_BUILD_ENV, tmp_path / "nope")
    failed = await run_job(make_runners(offline_toolchain)[JobType.RESET_BUILD_ENV], rec)
    assert failed is not None and "configuration directory not found" in str(failed)


async def test_invalid_schema_reaches_log_and_error(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(BAD_SCHEMA)
    rec = make_job(JobType.COMPILE, config)
    failed = await run_job(make_runners(offline_toolchain)[JobType.COMPILE], rec)
    assert failed is not None
    message = "[levelx] is an invalid option for [logger]. Did you mean [level]?"
    assert message in str(failed)
    assert "exit status 2" in str(failed)
    assert any(message in line for line in rec.lines)
    assert not any("\\033" in line or "\x1b" in line for line in rec.lines)


async def test_yaml_syntax_error_reaches_log_and_error(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    config = tmp_path / "syntax.yaml"
    config.write_text("esphome:\n  name: [oops\n")
    rec = make_job(JobType.COMPILE, config)
    failed = await run_job(make_runners(offline_toolchain)[JobType.COMPILE], rec)
    assert failed is not None
    assert "Invalid YAML syntax" in str(failed)
    assert "while parsing a flow sequence" in str(failed)
    assert "while parsing a flow sequence" in rec.text


async def test_upload_needs_a_device(tmp_path: Path, loopback_toolchain: Toolchain) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(BAD_SCHEMA)
    failed = await run_job(
        make_runners(loopback_toolchain)[JobType.UPLOAD], make_job(JobType.UPLOAD, config)
    )
    assert failed is not None and "upload needs a device" in str(failed)


async def test_rename_needs_a_new_name(tmp_path: Path, loopback_toolchain: Toolchain) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(BAD_SCHEMA)
    failed = await run_job(
        make_runners(loopback_toolchain)[JobType.RENAME], make_job(JobType.RENAME, config)
    )
    assert failed is not None and "new_name" in str(failed)


async def test_rename_rejects_invalid_name(tmp_path: Path, offline_toolchain: Toolchain) -> None:
    config = write_host_project(
        tmp_path, name="renamee", port=free_port(), password="p", image=b"\x7fELF"
    )
    rec = make_job(JobType.RENAME, config, new_name="Bad Name")
    failed = await run_job(make_runners(offline_toolchain)[JobType.RENAME], rec)
    assert failed is not None
    assert "is an invalid character for names" in str(failed)
    assert config.is_file()


async def test_device_that_refuses_connection(
    tmp_path: Path, loopback_toolchain: Toolchain
) -> None:
    port = free_port()  # nothing listens here
    config = write_host_project(tmp_path, name="nobody", port=port, password="p", image=b"x" * 100)
    rec = make_job(JobType.UPLOAD, config, device="127.0.0.1")
    failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], rec)
    assert failed is not None
    assert f"Connecting to 127.0.0.1 port {port} failed" in str(failed)
    assert "Connection refused" in str(failed)


async def test_device_that_refuses_the_update(
    tmp_path: Path, loopback_toolchain: Toolchain
) -> None:
    async with OtaEmulator(password="p", prepare_error=RESPONSE_ERROR_UPDATE_PREPARE) as device:
        config = write_host_project(
            tmp_path, name="full", port=device.port, password="p", image=b"x" * 4096
        )
        rec = make_job(JobType.UPLOAD, config, device="127.0.0.1")
        failed = await run_job(make_runners(loopback_toolchain)[JobType.UPLOAD], rec)
    assert failed is not None
    assert "Couldn't prepare flash memory for update" in str(failed)
    assert "Couldn't prepare flash memory for update" in rec.text


async def test_cancel_kills_the_esphome_process_group(tmp_path: Path) -> None:
    """A stand-in esphome that hangs (with a child) is gone after cancel."""
    pidfile = tmp_path / "pids"
    fake = tmp_path / "esphome"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $$ $! > {pidfile}\necho started\nwait\n")
    fake.chmod(0o755)
    config = tmp_path / "x.yaml"
    config.write_text(BAD_SCHEMA)
    rec = make_job(JobType.COMPILE, config)
    runner = make_runners(Toolchain(esphome=(str(fake),), kill_grace=1.0))[JobType.COMPILE]
    task = asyncio.create_task(runner.run(rec.ctx))
    for _ in range(100):
        if "started" in rec.lines:
            break
        await asyncio.sleep(0.05)
    assert "started" in rec.lines
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for pid in map(int, pidfile.read_text().split()):
        assert await gone(pid), f"process {pid} survived the cancel"
