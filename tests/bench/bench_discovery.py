"""Discovery latency on loopback: advert start → listed, and lane change → reflected.

Run as a script (``.venv/bin/python -m tests.bench.bench_discovery [--runs N]``) or
through pytest (``pytest tests/bench/bench_discovery.py -m bench``). Two Discovery nodes
pinned to 127.0.0.1 in this process; a fresh pair per run. Measured:

* ``appear``: from calling ``start()`` on the advertiser (which probes ~0.75 s for name
  conflicts before announcing, as RFC 6762 requires) until the browser's registry
  lists it;
* ``lane``: from ``update_lane`` until the browser's registry shows the new state. Each
  change comes >= MIN_UPDATE_INTERVAL after the previous one, so this is the
  uncoalesced delay; a change inside that window waits for the window's end.

Writes tests/bench/results/discovery.json and prints a table. Nothing here asserts a
duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.mesh.peering.discovery import MIN_UPDATE_INTERVAL, AdvertInfo, Discovery
from meshd.mesh.peering.registry import Registry
from tests.support.fingerprints import random_fingerprint
from tests.support.waits import until_notified

RESULTS = Path(__file__).parent / "results" / "discovery.json"


async def _until(registry: Registry, predicate: Any, timeout: float = 30.0) -> float:
    """Wait for ``predicate``; return the monotonic time it first held."""
    await until_notified(registry.add_listener, predicate, timeout=timeout)
    return time.monotonic()


async def one_run(lane_changes: int) -> tuple[float, list[float]]:
    registry = Registry()
    browser = Discovery(registry, interfaces=["127.0.0.1"])
    fingerprint = random_fingerprint()
    info = AdvertInfo(fingerprint, "bench", 7420, 1, "2026.6.5", idle=True, idle_since=1.0)
    advertiser = Discovery(Registry(), interfaces=["127.0.0.1"], advertise=info, browse=False)
    await browser.start()
    try:
        started = time.monotonic()
        await advertiser.start()
        seen = await _until(registry, lambda: fingerprint in registry)
        appear = seen - started
        lanes = []
        for i in range(lane_changes):
            await asyncio.sleep(MIN_UPDATE_INTERVAL + 0.1)
            idle = i % 2 == 1
            since = 1000.0 + i if idle else None
            changed = time.monotonic()
            advertiser.update_lane(idle, since)

            def shows(idle: bool = idle) -> bool:
                # Only the lane state: the registry keeps its own idle_since (when it
                # saw the receiver go idle), not the one advertised.
                peer = registry.get(fingerprint)
                return peer is not None and peer.idle == idle

            lanes.append(await _until(registry, shows) - changed)
        return appear, lanes
    finally:
        await advertiser.stop()
        await browser.stop()


def _summary(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "median_ms": round(statistics.median(samples) * 1000, 1),
        "min_ms": round(min(samples) * 1000, 1),
        "max_ms": round(max(samples) * 1000, 1),
    }


async def bench(runs: int = 5, lane_changes: int = 4) -> dict[str, Any]:
    appear: list[float] = []
    lane: list[float] = []
    for _ in range(runs):
        a, lanes = await one_run(lane_changes)
        appear.append(a)
        lane.extend(lanes)
    return {
        "what": "loopback discovery latency (two Discovery nodes pinned to 127.0.0.1)",
        "python": platform.python_version(),
        "runs": runs,
        "appear": _summary(appear),
        "lane_change": _summary(lane),
        "min_update_interval_s": MIN_UPDATE_INTERVAL,
    }


def report(result: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=result["what"])
    for column in ("measure", "n", "median ms", "min ms", "max ms"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    for key, label in (("appear", "advert start → listed"), ("lane_change", "lane → registry")):
        row = result[key]
        table.add_row(label, *(str(row[k]) for k in ("n", "median_ms", "min_ms", "max_ms")))
    Console().print(table)
    print(f"written to {RESULTS}")


@pytest.mark.bench
@pytest.mark.timeout(300)
async def test_bench_discovery() -> None:
    report(await bench(runs=3, lane_changes=3))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--lane-changes", type=int, default=4)
    args = parser.parse_args()
    report(asyncio.run(bench(args.runs, args.lane_changes)))
