"""CompileRunner puts the right cache under each compile: the node's own for its jobs,
the offloader's for a compile a receiver runs for a peer (real ccache and gcc through
the stand-in esphome of tests/toolchain/cc_esphome.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from meshd.jobs.model import JobType
from meshd.toolchain.ccache import CompileCaches, find_ccache
from meshd.toolchain.runners import CompileRunner
from meshd.toolchain.tools import Toolchain
from tests.support.daemon import host_config
from tests.support.jobs import make_job, run_job

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

CC_ESPHOME = (sys.executable, str(Path(__file__).with_name("cc_esphome.py")))
A = "aa" * 32
B = "bb" * 32


async def test_each_offloader_compiles_into_its_own_cache(tmp_path: Path) -> None:
    caches = CompileCaches(tmp_path / "ccache", ccache=find_ccache())
    runner = CompileRunner(Toolchain(esphome=CC_ESPHOME), caches)
    results = {}
    for label, offloader in (("a1", A), ("b1", B), ("a2", A), ("local", None)):
        job = make_job(JobType.COMPILE, host_config(tmp_path / label, label), offloader=offloader)
        assert await run_job(runner, job) is None, job.text
        results[label] = (job.job.options.cache_hits, job.job.options.cache_misses)
        assert any(line.startswith("[meshd] compile cache: ") for line in job.lines)
    # A's second build hits A's cache; B and the node itself never see A's objects.
    assert results == {"a1": (0, 1), "b1": (0, 1), "a2": (1, 0), "local": (0, 1)}
    assert caches.for_offloader(A).stats().hits == 1
    assert caches.for_offloader(B).stats().hits == 0
    assert caches.local.stats().misses == 1
    assert len(caches.all()) == 3
    total = caches.stats()
    assert (total.hits, total.misses) == (1, 3)
    caches.clear()
    assert caches.stats().files == 0


def test_a_malformed_offloader_gets_no_cache_dir(tmp_path: Path) -> None:
    caches = CompileCaches(tmp_path / "ccache")
    for bad in ("../../etc", "ab", "zz" * 32, "", "aa/../" * 4):
        with pytest.raises(ValueError):
            caches.for_offloader(bad)
    assert caches.for_offloader("AB" * 32).directory.name == "ab" * 8


async def test_a_failed_compile_still_records_its_cache_use(tmp_path: Path) -> None:
    caches = CompileCaches(tmp_path / "ccache", ccache=find_ccache())
    runner = CompileRunner(Toolchain(esphome=CC_ESPHOME), caches)
    job = make_job(JobType.COMPILE, host_config(tmp_path / "f", "f", compile_fail=1))
    assert await run_job(runner, job) is not None
    assert (job.job.options.cache_hits, job.job.options.cache_misses) == (0, 1)
