"""Scenario 7: what a daemon costs when idle and after use, and what the CLI costs.

* idle: a daemon with discovery on (zeroconf pinned to 127.0.0.1), default heartbeat,
  three trusted, connected receivers; its CPU time and RSS over a window (60 s, 10 s
  in ``--quick``), side by side with a bare daemon (mDNS off, no peers) in the same
  window;
* after use: that bare daemon's RSS after 1,000 completed compile jobs, against its
  own RSS before them. Its esphome is a three-line shell script (``FAST_ESPHOME``)
  that exits at once, so the jobs cost only meshd's own work (SQLite, logs, events),
  and the jobs per second are the engine's fixed cost per job;
* events: one job printing N compiler-like lines, timed with no follower and with 10
  websocket followers (in this process, counting messages without parsing them), and
  the rate each follower receives;
* CLI: ``meshd status`` (against the daemon with peers) and ``meshd jobs`` (against
  the one with 1,000 jobs), whole commands in fresh processes, median of 20,
  alternating with ``python -c pass``. When ``status`` misses its target, the
  details say where the time goes (``python -X importtime``, the biggest imports).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench.harness import (
    Bench,
    BenchError,
    Figure,
    Node,
    Result,
    cpu_seconds,
    ensure_all_completed,
    link,
    median,
    rss_bytes,
    run_tool,
)
from tests.bench.scenarios import Scenario
from tests.daemon.conftest import base_env

KEYS = (
    "idle.cpu",
    "idle.rss",
    "jobs.rss_after",
    "jobs.per_job",
    "events.per_follower",
    "events.fan_out_cost",
    "cli.status",
    "cli.jobs",
)
MB = 1024 * 1024
# Answers `version`; any other command prints `# lines=N` lines (80-character, like
# PlatformIO's "Compiling ..." lines) from the configuration's comment, then exits 0.
FAST_ESPHOME = """\
#!/bin/sh
case " $* " in *" version "*) echo "Version: 2026.6.5"; exit 0;; esac
for last; do :; done
lines=$(sed -n 's/^# lines=//p' "$last" 2>/dev/null)
line="Compiling .pioenvs/bench/src/esphome/components/sensor/unit%06g.cpp.o"
[ -n "$lines" ] && seq -f "$line" 1 "$lines"
exit 0
"""


async def run(bench: Bench, result: Result) -> None:
    fast = bench.path("tools") / "fast-esphome"
    fast.write_text(FAST_ESPHOME, encoding="utf-8")
    fast.chmod(0o755)
    hub, *peers = await bench.start_nodes(
        [("hub", []), *((f"peer{i}", ["--no-offload"]) for i in range(1, 4))]
    )
    [bare] = await bench.start_nodes([("bare", ["--no-mdns"])], esphome=str(fast))
    for peer in peers:
        await link(hub, peer)
    await _idle(bench, result, hub, bare, peers)
    await _jobs(bench, result, bare, fast)
    await _events(bench, result, bare)
    await _cli(bench, result, hub, bare)


async def _idle(bench: Bench, result: Result, hub: Node, bare: Node, peers: list[Node]) -> None:
    window = 3.0 if bench.quick else 60.0
    await asyncio.sleep(
        0.5 if bench.quick else 5.0
    )  # let start-up work (first adverts, introductions) settle
    watched = [hub, bare, *peers]
    cpu_before = {n.name: cpu_seconds(n.pid) for n in watched}
    rss_max = {n.name: 0 for n in watched}
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < window:
        for node in watched:
            rss_max[node.name] = max(rss_max[node.name], rss_bytes(node.pid))
        await asyncio.sleep(min(1.0, window - elapsed))
    elapsed = time.perf_counter() - started
    cpu = {n.name: (cpu_seconds(n.pid) - cpu_before[n.name]) / elapsed for n in watched}
    connected = [p["name"] for p in await hub.peers() if p["connected"]]
    result.add(
        "idle.cpu",
        Figure(
            f"idle CPU, discovery on + {len(connected)} connected peers ({window:.0f} s)",
            cpu["hub"] * 100,
            unit="%",
            reference=cpu["bare"] * 100,
            reference_label="bare daemon (no mDNS, no peers)",
            target="< 1 %",
            met=cpu["hub"] < 0.01,
        ),
    )
    result.add(
        "idle.rss",
        Figure(
            "idle RSS, discovery on + 3 peers (max in window)",
            rss_max["hub"] / MB,
            unit="MB",
            reference=rss_max["bare"] / MB,
            reference_label="bare daemon",
            target="< 80 MB",
            met=rss_max["hub"] < 80 * MB,
        ),
    )
    result.details["idle"] = {
        "window_s": round(elapsed, 1),
        "cpu_percent": {k: round(v * 100, 3) for k, v in cpu.items()},
        "rss_max_mb": {k: round(v / MB, 1) for k, v in rss_max.items()},
        "connected_peers": connected,
    }


async def _submit_all(node: Node, configs: Sequence[Path]) -> list[str]:
    ids = []
    for config in configs:
        ids.append((await node.compile(config))["id"])
    return ids


async def _jobs(bench: Bench, result: Result, bare: Node, fast: Path) -> None:
    count = 30 if bench.quick else 1000
    directory = bench.path("jobs")
    configs = []
    for index in range(count):
        config = directory / f"job{index:04d}.yaml"
        config.write_text(f"esphome:\n  name: job{index}\nhost:\n", encoding="utf-8")
        configs.append(config)
    tool = median(
        [await run_tool([str(fast), "--dashboard", "compile", str(configs[0])]) for _ in range(5)]
    )
    rss_before = rss_bytes(bare.pid)
    async with bare.events() as events:
        started = time.perf_counter()
        ids = await _submit_all(bare, configs)
        done = await events.until_terminal(ids, timeout=1800)
        elapsed = time.perf_counter() - started
    ensure_all_completed(done, bare)
    await asyncio.sleep(1.0)
    rss_after = rss_bytes(bare.pid)
    result.add(
        "jobs.rss_after",
        Figure(
            f"RSS after {count} completed jobs",
            rss_after / MB,
            unit="MB",
            reference=rss_before / MB,
            reference_label="same daemon before them",
            target="< 80 MB",
            met=rss_after < 80 * MB,
        ),
    )
    result.add(
        "jobs.per_job",
        Figure(
            f"wall time per job, {count} submitted back to back (API, engine, tool)",
            elapsed / count * 1000,
            unit="ms",
            reference=tool * 1000,
            reference_label="the tool alone",
        ),
    )
    result.details["jobs"] = {
        "count": count,
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(count / elapsed, 1),
        "rss_before_mb": round(rss_before / MB, 1),
        "rss_after_mb": round(rss_after / MB, 1),
    }


async def _one_job(bare: Node, config: Path, followers: int) -> tuple[float, list[dict[str, Any]]]:
    """Run one chatty job with ``followers`` websocket clients; its duration and their views."""
    contexts = [bare.events(parse=index == 0) for index in range(followers + 1)]
    opened = [await c.__aenter__() for c in contexts]
    try:
        watcher, *clients = opened
        job = await bare.compile(config)
        done = await watcher.until_terminal([job["id"]])
        ensure_all_completed(done, bare)
        await asyncio.sleep(0.5)  # let followers drain what is still in flight
        finished = done[job["id"]]
        views = [{"events": c.count, "seconds": (c.last or 0) - (c.first or 0)} for c in clients]
        return finished["finished_at"] - finished["started_at"], views
    finally:
        for context in contexts:
            await context.__aexit__(None, None, None)


async def _events(bench: Bench, result: Result, bare: Node) -> None:
    lines = 500 if bench.quick else 20000
    config = bench.path("events") / "chatty.yaml"
    config.write_text(f"# lines={lines}\nesphome:\n  name: chatty\nhost:\n", encoding="utf-8")
    alone, _ = await _one_job(bare, config, 0)
    followed, views = await _one_job(bare, config, 10)
    complete = [v for v in views if v["events"] >= lines and v["seconds"] > 0]
    rates = [v["events"] / v["seconds"] for v in complete]
    result.add(
        "events.per_follower",
        Figure(
            f"events per second to each of 10 websocket followers ({lines} lines)",
            median(rates) if rates else None,
            unit="ev/s",
            reference=lines / alone,
            reference_label="lines/s of the job with no follower",
            note="" if len(complete) == 10 else f"only {len(complete)} of 10 got every line",
        ),
    )
    result.add(
        "events.fan_out_cost",
        Figure(
            "job with 10 followers vs with none",
            followed,
            reference=alone,
            reference_label="same job, no follower",
        ),
    )
    result.details["events"] = {
        "lines": lines,
        "job_alone_s": round(alone, 3),
        "job_with_10_followers_s": round(followed, 3),
        "followers": views,
    }


def cli_latency(
    commands: dict[str, tuple[list[str], dict[str, str]]], runs: int
) -> dict[str, list[float]]:
    """Wall time of whole commands in fresh processes, alternating, ``runs`` each.

    The shared function for CLI start-up figures (the CLI's own benchmark,
    tests/bench/bench_cli.py on its branch, times the same way).
    """
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for argv, env in commands.values():  # warm the page cache once
        subprocess.run(argv, env=env, capture_output=True, check=False, stdin=subprocess.DEVNULL)
    for _ in range(runs):
        for name, (argv, env) in commands.items():
            started = time.perf_counter()
            done = subprocess.run(
                argv, env=env, capture_output=True, check=False, stdin=subprocess.DEVNULL
            )
            samples[name].append(time.perf_counter() - started)
            if done.returncode != 0:
                raise BenchError(f"{argv} exited {done.returncode}: {done.stderr[-1500:]!r}")
    return samples


def import_profile(argv: list[str], env: dict[str, str], top: int = 8) -> list[dict[str, Any]]:
    """The biggest imports of a command (``python -X importtime``), cumulative ms."""
    done = subprocess.run(
        [argv[0], "-X", "importtime", *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    rows = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(3)) <= 3:  # top-level and first-level imports
            rows.append({"module": match.group(4), "cumulative_ms": int(match.group(2)) / 1000})
    rows.sort(key=lambda r: -r["cumulative_ms"])
    return rows[:top]


async def _cli(bench: Bench, result: Result, hub: Node, bare: Node) -> None:
    runs = 2 if bench.quick else 20
    env = {**base_env(), "COLUMNS": "200"}
    meshd = [sys.executable, "-m", "meshd"]
    commands = {
        "python -c pass": ([sys.executable, "-c", "pass"], env),
        "meshd status": ([*meshd, "status"], {**env, "MESHD_DATA_DIR": str(hub.daemon.data_dir)}),
        "meshd jobs": ([*meshd, "jobs"], {**env, "MESHD_DATA_DIR": str(bare.daemon.data_dir)}),
    }
    samples = await asyncio.to_thread(cli_latency, commands, runs)
    floor = median(samples["python -c pass"])
    status, jobs = median(samples["meshd status"]), median(samples["meshd jobs"])
    result.add(
        "cli.status",
        Figure(
            f"meshd status (median of {runs}; daemon with 3 peers)",
            status,
            reference=floor,
            reference_label="python -c pass",
            target="< 0.3 s",
            met=status < 0.3,
        ),
    )
    result.add(
        "cli.jobs",
        Figure(
            f"meshd jobs (median of {runs}; daemon with {result.details['jobs']['count']} jobs)",
            jobs,
            reference=floor,
            reference_label="python -c pass",
        ),
    )
    result.details["cli"] = {k: [round(v, 3) for v in vals] for k, vals in samples.items()}
    if status >= 0.3:
        argv, status_env = commands["meshd status"]
        profile = await asyncio.to_thread(import_profile, argv, status_env)
        result.details["cli_status_imports"] = profile


SCENARIO = Scenario(7, "footprint-cli", "Footprint and CLI", KEYS, run)
