"""The mesh on loopback, measured: a receiver becoming usable, lane changes crossing
the link, and what offloading adds to a compile compared with building locally.

Run as a script (``.venv/bin/python -m tests.bench.bench_mesh [--runs N]``) or through
pytest (``pytest tests/bench/bench_mesh.py -m bench``). In-process nodes (real engines,
real link sessions on 127.0.0.1, no mDNS, the stand-in esphome with a zero-second
compile, so what is timed is meshd's own work plus process start-ups). Measured:

* ``usable``: from starting a receiver node (and the two ``meshd trust`` calls)
  until the offloader's registry shows it trusted, connected and idle;
* ``lane``: from submitting a compile on the receiver until the offloader's registry
  shows it busy (a lane_status push over the link);
* ``local`` vs ``remote``: an install's compile job duration when built locally and
  when offloaded (bundle, blob transfer, remote compile, artifact pull), side by side
  in the same run, and their ratio.

Writes tests/bench/results/mesh.json and prints a table. Nothing asserts a duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.jobs.model import JobStatus, JobType
from meshd.jobs.options import JobOptions
from tests.mesh.nodes import host_yaml, start_node, stop_node, trust
from tests.support.waits import until_async

RESULTS = Path(__file__).parent / "results" / "mesh.json"


async def _until(predicate: Any, timeout: float = 60.0) -> float:
    """Wait for ``predicate`` (polled each millisecond); return when it first held."""
    await until_async(predicate, timeout=timeout, interval=0.001)
    return time.perf_counter()


def _peer(node: Any, fingerprint: str) -> dict[str, Any] | None:
    return next((p for p in node.mesh.peers() if p["fingerprint"] == fingerprint), None)


async def one_run(root: Path, run: int) -> dict[str, float]:
    pi = await start_node(root, f"pi{run}", receiver=False)
    started = time.perf_counter()
    desk = await start_node(root, f"desk{run}", offload=False)
    try:
        trust(pi, desk)
        fp = desk.fingerprint
        usable_at = await _until(
            lambda: (p := _peer(pi, fp)) is not None and p["connected"] and p["idle"]
        )
        configs = root / f"cfg{run}"
        configs.mkdir()
        busy_cfg = configs / "busy.yaml"
        busy_cfg.write_text(host_yaml("busy", compile_seconds=0.5))
        submitted = time.perf_counter()
        busy = desk.engine.submit(JobType.COMPILE, str(busy_cfg))
        lane_at = await _until(lambda: not (_peer(pi, fp) or {}).get("idle", True))
        await desk.wait_status(busy.id, JobStatus.COMPLETED)
        await _until(lambda: bool((_peer(pi, fp) or {}).get("idle")))

        durations = {}
        for label, local in (("local", True), ("remote", False)):
            cfg = configs / f"{label}.yaml"
            cfg.write_text(host_yaml(label, compile_seconds=0))
            job = pi.engine.submit(JobType.COMPILE, str(cfg), options=JobOptions(force_local=local))
            done = await pi.wait_status(job.id, JobStatus.COMPLETED, JobStatus.FAILED)
            assert done.status is JobStatus.COMPLETED, done.error
            assert (done.runner == "local") is local
            durations[label] = (done.finished_at or 0) - (done.started_at or 0)
        return {
            "usable_ms": (usable_at - started) * 1000,
            "lane_ms": (lane_at - submitted) * 1000,
            "local_s": durations["local"],
            "remote_s": durations["remote"],
        }
    finally:
        await stop_node(pi)
        await stop_node(desk)


async def measure(runs: int) -> dict[str, Any]:
    samples = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(runs):
            samples.append(await one_run(Path(tmp), run))

    def median(key: str) -> float:
        return statistics.median(s[key] for s in samples)

    return {
        "what": "mesh on loopback (in-process nodes, stand-in esphome)",
        "runs": runs,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, shared and noisy",
        "median": {
            "receiver start → usable at offloader (ms)": median("usable_ms"),
            "lane change → offloader registry (ms)": median("lane_ms"),
            "compile job, local (s)": median("local_s"),
            "compile job, offloaded (s)": median("remote_s"),
            "offloaded / local (ratio of medians)": median("remote_s") / median("local_s"),
        },
        "samples": samples,
    }


def report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['what']}, {result['runs']} runs")
    table.add_column("median of")
    table.add_column("value", justify="right")
    for key, value in result["median"].items():
        table.add_row(key, f"{value:.3f}")
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))


@pytest.mark.bench
@pytest.mark.timeout(600)
async def test_bench_mesh() -> None:
    report(await measure(3))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7)
    report(asyncio.run(measure(parser.parse_args().runs)))
