"""Scenario 5: the compile cache, first vs later cold compiles, same node and across receivers.

Two parts, both the figures of the compile-cache benchmarks, run here so they land in
the same table and JSON as the rest:

* **Across receivers (both modes)**: ``bench_mesh_cache.run``: a real link session on
  loopback, the offloader's ``SharedCacheStore`` behind a receiver's ``CacheGateway``,
  the real ccache and gcc compiling tiny distinct C files, alternating per file: a
  local miss, a miss that also asks the offloader and sends it the entry (what the
  first receiver of a fleet pays), and a hit from the offloader into an empty local
  cache (what a second receiver gets for a build the first one made).
* **Same node (full run only)**: ``bench_ccache._compile``: the real esphome host
  platform (offline PlatformIO core, each run in its own network namespace), cold
  compiles in fresh build directories: the cache off, an empty cache (every object a
  miss), then another device of the fleet (other name and secrets) from the cache.

Everything is compared within this run; ccache's own statistics give the hit rate.
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from tests.bench.harness import Bench, Figure, Result
from tests.bench.scenarios import Scenario

KEYS = (
    "cold_then_cached_same_node",
    "miss_overhead",
    "hit_rate",
    "cold_then_cached_other_receiver",
    "mesh_miss_vs_local",
    "mesh_lookup",
)


async def run(bench: Bench, result: Result) -> None:
    await _across_receivers(bench, result)
    if bench.quick:
        why = "--quick does not run the real esphome (three cold compiles take minutes)"
        _same_node_skipped(result, why)
    else:
        await _same_node(bench, result)
    # Issue order in the table: same node first.
    result.figures = {key: result.figures[key] for key in KEYS}


async def _across_receivers(bench: Bench, result: Result) -> None:
    if shutil.which("gcc") is None or shutil.which("ccache") is None:
        why = "needs gcc and ccache"
        for key in ("cold_then_cached_other_receiver", "mesh_miss_vs_local", "mesh_lookup"):
            result.add(key, Figure(key, None, note=why))
        return
    from tests.bench import bench_mesh_cache

    files, lookups = (3, 20) if bench.quick else (20, 200)
    mesh: dict[str, Any] = await bench_mesh_cache.run(files, lookups)
    ms = mesh["compile_ms_median"]
    result.details["across_receivers"] = mesh
    result.add(
        "cold_then_cached_other_receiver",
        Figure(
            f"tiny C compile on a second receiver, entry from the offloader (median of {files})",
            ms["mesh_hit"] / 1000,
            reference=ms["local"] / 1000,
            reference_label="the same compile, a local miss",
            target="<= 0.4 x",
            met=ms["mesh_hit"] <= 0.4 * ms["local"],
        ),
    )
    result.add(
        "mesh_miss_vs_local",
        Figure(
            "a miss that also asks the offloader and sends it the entry",
            ms["mesh_miss"] / 1000,
            reference=ms["local"] / 1000,
            reference_label="a local miss",
        ),
    )
    result.add(
        "mesh_lookup",
        Figure(
            f"one lookup miss through the gateway (median of {lookups})",
            mesh["lookup_ms_median"] / 1000,
            note=f"p90 {mesh['lookup_ms_p90']} ms",
        ),
    )


def _same_node_skipped(result: Result, why: str) -> None:
    result.skipped["real cold compiles"] = why
    result.add(
        "cold_then_cached_same_node",
        Figure("another fleet device's cold compile, from the cache", None, note=why),
    )
    result.add("miss_overhead", Figure("empty cache (all misses) vs cache off", None, note=why))
    result.add("hit_rate", Figure("ccache hit rate of that compile", None, unit="", note=why))


async def _same_node(bench: Bench, result: Result) -> None:
    from meshd.toolchain.ccache import CompileCache, find_ccache
    from tests.bench import bench_ccache
    from tests.support.netns import netns_available
    from tests.support.pio_offline import offline_env, provision_offline_core

    esphome = bench_ccache.VENV_BIN / "esphome"
    ccache = find_ccache()
    if not esphome.exists() or ccache is None or not await asyncio.to_thread(netns_available):
        _same_node_skipped(result, "needs the venv's esphome, ccache and unshare -n")
        return
    core = await asyncio.to_thread(provision_offline_core, bench.path("cache-pio-core"))
    env = offline_env(core)
    env["PATH"] = f"{bench_ccache.VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.pop("ESPHOME_DATA_DIR", None)
    root = bench.path("cache-real")
    cache = CompileCache(root / "cache", ccache=ccache)
    rows: dict[str, dict[str, Any]] = {}
    for label, name, with_cache in (
        ("off", "fleet-a", None),
        ("miss", "fleet-a", cache),
        ("fleet-b", "fleet-b", cache),
    ):
        directory = root / label
        directory.mkdir()
        rows[label] = await asyncio.to_thread(
            bench_ccache._compile, env, directory, name, with_cache
        )
    off, miss, later = (rows[k]["seconds"] for k in ("off", "miss", "fleet-b"))
    lookups = rows["fleet-b"]["hits"] + rows["fleet-b"]["misses"]
    result.details["same_node"] = rows
    result.add(
        "cold_then_cached_same_node",
        Figure(
            "another fleet device's cold compile (other name, secrets), from the cache",
            later,
            reference=miss,
            reference_label="the fleet's first cold compile (empty cache)",
            target="<= 0.4 x",
            met=later <= 0.4 * miss,
        ),
    )
    result.add(
        "miss_overhead",
        Figure(
            "empty cache (every object a miss) vs cache off",
            miss,
            reference=off,
            reference_label="same cold compile, cache off",
            target="<= 1.05 x",
            met=miss <= 1.05 * off,
        ),
    )
    result.add(
        "hit_rate",
        Figure(
            f"ccache hit rate of that compile ({rows['fleet-b']['hits']} of {lookups})",
            rows["fleet-b"]["hits"] / lookups if lookups else None,
            unit="",
        ),
    )


SCENARIO = Scenario(
    5,
    "compile-cache",
    "Compile cache: first vs later cold compiles, same node and across receivers",
    KEYS,
    run,
)
