"""Every runner reports the process group it starts, so a crashed daemon's orphans die.

The engine records what ``JobContext.on_process`` receives and kills it on the next
start (tests/daemon/test_orphans.py proves that end to end); here each job type runs
the stand-in esphome and must report exactly the group it ran in.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from meshd.jobs.model import JobType
from meshd.toolchain.commands import create_bundle
from meshd.toolchain.runners import make_runners
from meshd.toolchain.tools import Toolchain
from tests.support.daemon import STANDIN, host_config
from tests.support.jobs import make_job, run_job

STANDIN_TOOLCHAIN = Toolchain(esphome=(sys.executable, str(STANDIN)))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return host_config(tmp_path / "cfg", "groups")


@pytest.mark.parametrize(
    "job_type",
    [JobType.COMPILE, JobType.UPLOAD, JobType.CLEAN, JobType.RESET_BUILD_ENV, JobType.RENAME],
)
async def test_each_runner_reports_its_process_group(
    config: Path, tmp_path: Path, job_type: JobType, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "compile.pid"
    monkeypatch.setenv("STANDIN_PID_FILE", str(pid_file))
    runners = make_runners(STANDIN_TOOLCHAIN)
    if job_type is JobType.UPLOAD:  # something to flash
        assert await run_job(runners[JobType.COMPILE], make_job(JobType.COMPILE, config)) is None
        pid_file.unlink()
    rec = make_job(job_type, config, device="127.0.0.1", new_name="renamed")
    assert await run_job(runners[job_type], rec) is None, rec.text
    assert len(rec.processes) == 1, rec.processes
    if pid_file.exists():  # compile and rename: the stand-in wrote its own pid
        assert rec.processes == [int(pid_file.read_text())]


async def test_bundle_reports_its_process_group(config: Path, tmp_path: Path) -> None:
    groups: list[int] = []
    out = await create_bundle(
        STANDIN_TOOLCHAIN, config, log=lambda _line: None, on_start=groups.append
    )
    assert out.is_file() and len(groups) == 1
