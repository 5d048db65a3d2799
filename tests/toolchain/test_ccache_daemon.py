"""The compile cache through a real daemon: ``meshd serve`` runs a stand-in esphome
whose compile calls the real ccache and gcc on one source file (tests/toolchain/
cc_esphome.py), so the runner's environment, the per-job stats log, the job's
recorded hits/misses, the job log's summary line and ``--no-compile-cache`` are
exercised end to end without PlatformIO.
"""

from __future__ import annotations

import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Meshd, MeshdFactory, host_config
from tests.support.waits import poll_until

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


def test_stats_status_metrics_and_clear(meshd: MeshdFactory, tmp_path: Path) -> None:
    daemon = meshd(esphome=CC_ESPHOME, args=("--compile-cache-size", "64M")).start()
    _compile(daemon, host_config(tmp_path / "one", "one"))
    _compile(daemon, host_config(tmp_path / "two", "two"))
    report = daemon.cli_json("cache", "stats")
    assert report["enabled"] is True and report["max_size"] == 64 * 1024**2
    assert (report["hits"], report["misses"]) == (1, 1)
    assert report["hit_rate"] == 0.5 and report["size_bytes"] > 0 and report["files"] > 0
    assert [c["name"] for c in report["caches"]] == ["local"]
    assert report["shared_size_bytes"] > 0, "local builds offer their objects to the mesh"
    human = daemon.cli("cache", "stats").stdout
    assert "1 hits, 1 misses (50% hit rate)" in human

    def reported() -> dict[str, object] | None:
        node = daemon.cli_json("status")["node"]
        cache = node.get("compile_cache") or {}
        return node if cache.get("hits") == 1 else None

    node = poll_until(reported, timeout=60, what="compile_cache in /status")
    assert node["compile_cache"]["size_bytes"] > 0
    assert "50% hit rate" in daemon.cli("status").stdout
    metrics = _metrics(daemon)
    assert "meshd_compile_cache_hits_total 1.0" in metrics
    assert "meshd_compile_cache_misses_total 1.0" in metrics
    size = next(
        line for line in metrics.splitlines() if line.startswith("meshd_compile_cache_size_bytes ")
    )
    assert float(size.split()[1]) > 0

    cleared = daemon.cli_json("cache", "clear")
    assert (cleared["hits"], cleared["misses"], cleared["files"]) == (0, 0, 0)
    assert cleared["shared_size_bytes"] == 0
    again = _compile(daemon, host_config(tmp_path / "three", "three"))
    assert (again["args"]["cache_hits"], again["args"]["cache_misses"]) == (0, 1)  # type: ignore[index]


def test_stats_when_off(meshd: MeshdFactory) -> None:
    daemon = meshd(esphome=CC_ESPHOME, args=("--no-compile-cache",)).start()
    assert daemon.cli_json("cache", "stats") == {"enabled": False}
    assert "off" in daemon.cli("cache", "stats").stdout
    assert daemon.cli_json("cache", "clear") == {"enabled": False}


def _metrics(daemon: Meshd) -> str:
    request = urllib.request.Request(
        f"{daemon.url}/metrics", headers={"Authorization": f"Bearer {daemon.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(response.read().decode())
