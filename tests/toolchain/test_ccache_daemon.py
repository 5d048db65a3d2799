"""The compile cache through a real daemon: ``meshd serve`` runs a stand-in esphome
whose compile calls the real ccache and gcc on one source file (tests/toolchain/
cc_esphome.py), so the runner's environment, the per-job stats log, the job's
recorded hits/misses, the job log's summary line and ``--no-compile-cache`` are
exercised end to end without PlatformIO.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Meshd, MeshdFactory, host_config

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

CC_ESPHOME = f"{sys.executable} {Path(__file__).with_name('cc_esphome.py')}"


@pytest.fixture
def meshd(tmp_path: Path) -> Iterator[MeshdFactory]:
    factory = MeshdFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


def _compile(daemon: Meshd, config: Path) -> dict[str, object]:
    job_id = daemon.cli_json("compile", str(config), "--local", "--detach")["compile"]
    job = daemon.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", daemon.cli("logs", job_id).stdout
    return job


def test_second_configuration_hits_the_cache(meshd: MeshdFactory, tmp_path: Path) -> None:
    daemon = meshd(esphome=CC_ESPHOME).start()
    first = _compile(daemon, host_config(tmp_path / "site-a", "kitchen"))
    second = _compile(daemon, host_config(tmp_path / "elsewhere" / "site-b", "garage"))
    assert (first["args"]["cache_hits"], first["args"]["cache_misses"]) == (0, 1)  # type: ignore[index]
    assert (second["args"]["cache_hits"], second["args"]["cache_misses"]) == (1, 0)  # type: ignore[index]
    log = daemon.cli("logs", str(second["id"])).stdout
    assert "compile cache: 1 hits, 0 misses (100% hit rate)" in log
    shown = daemon.cli("show", str(second["id"])).stdout
    assert "1 hits, 0 misses (100% hit rate)" in shown
    assert (daemon.data_dir / "ccache" / "local").is_dir()
    assert not list((daemon.data_dir / "ccache" / "local" / "jobs").iterdir()), "stats logs left"


def test_no_compile_cache_turns_it_off(meshd: MeshdFactory, tmp_path: Path) -> None:
    daemon = meshd(esphome=CC_ESPHOME, args=("--no-compile-cache",)).start()
    for name in ("one", "two"):
        job = _compile(daemon, host_config(tmp_path / name, name))
        assert "cache_hits" not in job["args"]  # type: ignore[operator]
        assert "compile cache:" not in daemon.cli("logs", str(job["id"])).stdout
    assert not (daemon.data_dir / "ccache").exists()
