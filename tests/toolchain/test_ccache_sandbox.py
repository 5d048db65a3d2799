"""Per-offloader compile caches inside the real bubblewrap sandbox.

A receiver gives each offloader its own cache (``<data>/ccache/peers/<off16>``),
mounted writable only into that offloader's sandbox (``SandboxArea.cache_dirs``). From
inside a build for offloader B, with the real ccache and gcc: B's cache works (the
second compile is a hit), and A's cache, a sibling directory under the same data
dir, can be neither read nor written, nor can the node's own local cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.toolchain.ccache import CacheStats, CompileCaches, find_ccache
from meshd.toolchain.sandbox import SandboxArea, SandboxUnavailable, detect, run_in_sandbox

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

A = "aa" * 32
B = "bb" * 32

# Runs inside the sandbox: compile twice through ccache, then attack the other caches.
_PROBE = r"""
import json, os, subprocess, sys
spec = json.loads(sys.argv[1])
out = {}
for n in (1, 2):
    src = os.path.join(spec["work"], "src", "core.c")
    os.makedirs(os.path.dirname(src), exist_ok=True)
    open(src, "w").write("int core(int x) { return x * 7; }\n")
    r = subprocess.run([os.environ["MESHD_CCACHE"], "gcc", "-c", src, "-o", src + ".o"],
                       capture_output=True, text=True)
    out[f"compile{n}"] = r.returncode
    out[f"stderr{n}"] = r.stderr
for name, path in spec["targets"].items():
    try:
        open(path, "rb").read()
        out[name + "_read"] = "READ"
    except OSError as exc:
        out[name + "_read"] = type(exc).__name__
    try:
        with open(os.path.join(os.path.dirname(path), "planted.o"), "wb") as f:
            f.write(b"evil")
        out[name + "_write"] = "WROTE"
    except OSError as exc:
        out[name + "_write"] = type(exc).__name__
    out[name + "_listed"] = os.path.exists(os.path.dirname(path))
print("PROBE " + json.dumps(out))
"""


def _seed(caches: CompileCaches, fingerprint: str | None, root: Path) -> Path:
    """Compile once into a cache outside any sandbox; return one of its object files."""
    cache = caches.for_job(fingerprint)
    src = root / "seed.c"
    root.mkdir(parents=True, exist_ok=True)
    src.write_text("int seeded(void) { return 1; }\n")
    env = {**os.environ, **cache.environ(base_dir=root)}
    subprocess.run(
        [cache.ccache, "gcc", "-c", str(src), "-o", str(root / "seed.o")], env=env, check=True
    )
    entries = [
        p for p in cache.directory.rglob("*") if len(p.relative_to(cache.directory).parts) == 3
    ]
    assert entries, "ccache stored nothing"
    return entries[0]


def test_a_build_for_b_cannot_touch_as_cache(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    caches = CompileCaches(data / "ccache", ccache=find_ccache())
    a_entry = _seed(caches, A, tmp_path / "seed-a")
    local_entry = _seed(caches, None, tmp_path / "seed-local")
    try:
        sandbox = detect([data])
    except SandboxUnavailable as exc:
        pytest.fail(f"bubblewrap is part of the test environment (scripts/test): {exc}")
    b_cache = caches.for_offloader(B)
    workdir = data / "mesh" / "builds" / B[:16] / "garage"
    area = SandboxArea.for_offloader(
        workdir, data / "mesh" / "sandbox" / B[:16], cache_dir=b_cache.directory
    )
    area.prepare()
    env = {
        "PATH": "/usr/bin:/bin",
        **b_cache.environ(base_dir=workdir, stats_log=b_cache.directory / "job.log"),
    }
    spec = {
        "work": str(workdir),
        "targets": {"a_cache": str(a_entry), "local_cache": str(local_entry)},
    }
    lines: list[str] = []
    script = workdir / "probe.py"
    script.write_text(_PROBE)
    result = asyncio.run(
        run_in_sandbox(
            sandbox,
            area,
            [sys.executable, str(script), json.dumps(spec)],
            env=env,
            on_line=lines.append,
        )
    )
    output = "\n".join(lines)
    assert result.returncode == 0, output
    report = json.loads(next(x for x in lines if x.startswith("PROBE ")).removeprefix("PROBE "))
    assert report["compile1"] == 0 and report["compile2"] == 0, output
    # B's own cache works inside its sandbox: the second compile is a hit.
    stats = CacheStats.from_stats_log(b_cache.directory / "job.log")
    assert (stats.hits, stats.misses) == (1, 1), output
    # A's cache and the node's own: not there at all, and no write lands.
    for name in ("a_cache", "local_cache"):
        assert report[name + "_read"] == "FileNotFoundError", report
        assert report[name + "_write"] != "WROTE", report
        assert report[name + "_listed"] is False, report
    assert not list((data / "ccache").rglob("planted.o"))
    assert a_entry.is_file() and local_entry.is_file()
