"""The bundle/config helpers and the toolchain's environment, with the real esphome CLI."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from meshd.jobs.model import JobType
from meshd.toolchain.commands import create_bundle, default_bundle_path, list_bundle_files
from meshd.toolchain.runners import make_runners
from meshd.toolchain.tools import Toolchain
from tests.support.jobs import make_job, run_job

CONFIG = """\
esphome:
  name: bundled
host:
logger:
ota:
  - platform: esphome
    password: !secret ota_password
packages:
  extra: !include extra.yaml
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "secrets.yaml").write_text('ota_password: "s3cret"\n')
    (tmp_path / "extra.yaml").write_text("logger:\n  level: DEBUG\n")
    config = tmp_path / "bundled.yaml"
    config.write_text(CONFIG)
    return config


async def test_list_bundle_files(project: Path, offline_toolchain: Toolchain) -> None:
    files = await list_bundle_files(
        offline_toolchain, project, log=lambda _line: None, on_start=None
    )
    assert {"bundled.yaml", "extra.yaml", "secrets.yaml"} <= set(files)


async def test_create_bundle_packs_config_and_includes(
    project: Path, offline_toolchain: Toolchain, tmp_path: Path
) -> None:
    lines: list[str] = []
    out = await create_bundle(offline_toolchain, project, log=lines.append, on_start=None)
    assert out == default_bundle_path(project) and out.name == "bundled.esphomebundle.tar.gz"
    with tarfile.open(out) as archive:
        names = set(archive.getnames())
    assert {"bundled.yaml", "extra.yaml", "manifest.json"} <= names
    assert any("Bundle created" in line for line in lines)
    elsewhere = await create_bundle(
        offline_toolchain,
        project,
        log=lines.append,
        on_start=None,
        output=tmp_path / "out" / "b.tar.gz",
    )
    assert elsewhere.is_file()


async def test_environment_passes_through_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in esphome sees the daemon's environment plus the toolchain's overrides."""
    fake = tmp_path / "esphome"
    fake.write_text(
        '#!/bin/sh\necho "core=$PLATFORMIO_CORE_DIR data=$ESPHOME_DATA_DIR args=$*"\n'
        'echo "unbuffered=$PYTHONUNBUFFERED"\n'
    )
    fake.chmod(0o755)
    config = tmp_path / "c.yaml"
    config.write_text("esphome:\n  name: c\n")
    monkeypatch.setenv("PLATFORMIO_CORE_DIR", "/from/daemon")
    monkeypatch.setenv("ESPHOME_DATA_DIR", "/data/dir")
    toolchain = Toolchain(esphome=(str(fake),), env={"PLATFORMIO_CORE_DIR": "/override"})
    rec = make_job(JobType.COMPILE, config)
    assert await run_job(make_runners(toolchain)[JobType.COMPILE], rec) is None
    assert f"core=/override data=/data/dir args=--dashboard compile {config}" in rec.lines
    assert "unbuffered=1" in rec.lines
    assert rec.lines[0].startswith("$ ")


def test_from_command_accepts_a_program_or_an_argv_prefix() -> None:
    assert Toolchain.from_command("/opt/esphome").esphome_argv("version") == [
        "/opt/esphome",
        "--dashboard",
        "version",
    ]
    wrapped = Toolchain.from_command(["python", "-m", "esphome"])
    assert wrapped.esphome_argv("compile", "x.yaml")[:4] == [
        "python",
        "-m",
        "esphome",
        "--dashboard",
    ]
    with pytest.raises(ValueError):
        Toolchain(esphome=())
