"""The compile cache with the real esphome host platform (offline), side by side.

    pytest tests/bench/bench_ccache.py -m bench -s

On one node, in one run (so machine noise hits all alike), cold compiles of distinct
configurations, each in its own directory (a fresh build tree, as after an ESPHome
release):

1. ``off``: fleet-a without the cache (the baseline; with ``BENCH_CCACHE_FULL=1`` also
   repeated last, ``off-again``, and a third fleet device ``fleet-c``);
2. ``miss``: fleet-a with an empty cache: every object a miss (the miss overhead);
3. ``fleet-b``, ``fleet-c``: devices that differ in name and secrets, from the cache;
4. ``extra``: a configuration with an extra component (uptime sensor), from the cache.

Prints a table and writes tests/bench/results/ccache.json: wall times, ratios to the
baseline, ccache's per-build hits and misses. Nothing is asserted about speed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.toolchain.ccache import CacheStats, CompileCache, find_ccache
from tests.support.host_device import free_port, host_yaml
from tests.support.netns import isolated

pytestmark = pytest.mark.bench

VENV_BIN = Path(sys.executable).parent
RESULTS = Path(__file__).with_name("results") / "ccache.json"
EXTRA = "\nsensor:\n  - platform: uptime\n    name: uptime\n"


def _compile(
    env: dict[str, str], root: Path, name: str, cache: CompileCache | None, extra: str = ""
) -> dict[str, Any]:
    directory = root / name / "configs"
    directory.mkdir(parents=True)
    config = directory / f"{name}.yaml"
    config.write_text(
        host_yaml(name=name, port=free_port(), password=f"pw-{name}", marker=name) + extra
    )
    log = root / f"{name}.stats"
    run_env = dict(env)
    if cache is not None:
        run_env.update(cache.environ(base_dir=directory, stats_log=log, inherited=env))
    started = time.monotonic()
    run = subprocess.run(
        isolated(str(VENV_BIN / "esphome"), "compile", str(config)),
        env=run_env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    seconds = time.monotonic() - started
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    stats = CacheStats.from_stats_log(log)
    return {"seconds": round(seconds, 2), "hits": stats.hits, "misses": stats.misses}


@pytest.mark.timeout(3600)
def test_bench_compile_cache(esphome_env: dict[str, str], tmp_path: Path) -> None:
    cache = CompileCache(tmp_path / "cache", ccache=find_ccache())
    rows: dict[str, dict[str, Any]] = {}
    rows["off"] = _compile(esphome_env, tmp_path / "off", "fleet-a", None)
    rows["miss"] = _compile(esphome_env, tmp_path / "miss", "fleet-a", cache)
    rows["fleet-b"] = _compile(esphome_env, tmp_path / "b", "fleet-b", cache)
    if os.environ.get("BENCH_CCACHE_FULL"):
        rows["fleet-c"] = _compile(esphome_env, tmp_path / "c", "fleet-c", cache)
    rows["extra"] = _compile(esphome_env, tmp_path / "x", "fleet-x", cache, EXTRA)
    if os.environ.get("BENCH_CCACHE_FULL"):
        rows["off-again"] = _compile(esphome_env, tmp_path / "off2", "fleet-a", None)
    baseline = statistics.mean([rows[k]["seconds"] for k in ("off", "off-again") if k in rows])
    first = rows["miss"]["seconds"]
    for row in rows.values():
        row["vs_off"] = round(row["seconds"] / baseline, 3)
        row["vs_first"] = round(row["seconds"] / first, 3)
        lookups = row["hits"] + row["misses"]
        row["hit_rate"] = round(row["hits"] / lookups, 3) if lookups else None
    summary = {
        "baseline_off_seconds": round(baseline, 2),
        "miss_overhead": round(first / baseline - 1, 3),
        "later_over_first": {
            k: rows[k]["vs_first"] for k in ("fleet-b", "fleet-c", "extra") if k in rows
        },
        "cache": cache.stats().to_dict(),
        "rows": rows,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"{'build':<10} {'seconds':>8} {'vs off':>7} {'vs 1st':>7} {'hits':>5} {'miss':>5}")
    for name, row in rows.items():
        print(
            f"{name:<10} {row['seconds']:>8.1f} {row['vs_off']:>7.2f} {row['vs_first']:>7.2f} "
            f"{row['hits']:>5} {row['misses']:>5}"
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
