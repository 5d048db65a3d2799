"""How close meshd is to the limit: ``python -m tests.bench [--quick] [--only N ...]``.

Starts real ``meshd serve`` processes on loopback (API and peer link on 127.0.0.1,
zeroconf pinned to 127.0.0.1) with the stand-in esphome and throttled OTA emulators,
runs the scenarios of issue 17 (docs/PERFORMANCE.md explains each), prints one table
per scenario and writes everything, with the machine it ran on and how loaded it
was, to ``tests/bench/results/bench.json`` (gitignored).

Every figure is a ratio of two things measured side by side in the same run; the
absolute values are printed beside it. Nothing is asserted: targets are reported as
met or not. ``--quick`` runs every scenario with tiny sizes, all at once (the default
test suite runs it, tests/bench/test_bench_quick.py, so the benchmark cannot rot); its
numbers mean nothing.

Unless ``--no-netns`` is given (or it already runs in one), the command re-executes
itself in a private network namespace with only loopback, like ``scripts/test``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from tests.bench.harness import RESULTS, Bench, LoadSampler, Result, machine
from tests.bench.scenarios import Scenario, all_scenarios, select

IN_NETNS = "MESHD_BENCH_NETNS"
ISOLATE_SCRIPT = 'ip link set lo up && ip link set lo multicast on && exec "$@"'


def _reexec_isolated(argv: list[str]) -> int | None:
    """Run this command again inside ``unshare --net``; None if that is not possible."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    unshare = ["unshare", "--net"] if os.geteuid() == 0 else ["unshare", "--net", "--map-root-user"]
    probe = subprocess.run([*unshare, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return None
    env = {**os.environ, IN_NETNS: "1"}
    command = [*unshare, "sh", "-c", ISOLATE_SCRIPT, "sh", sys.executable, "-m", "tests.bench"]
    child = subprocess.Popen([*command, *argv], env=env)

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)  # the run inside stops and kills its daemons

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    return child.wait()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (seconds)")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", help="numbers or names, e.g. 1 8")
    parser.add_argument("--output", type=Path, default=RESULTS / "bench.json", help="JSON file")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--no-netns", action="store_true", help="run in this network namespace")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="JSON",
        help="print an earlier run's tables as Markdown (for docs/PERFORMANCE.md) and exit",
    )
    return parser.parse_args(argv)


async def _run_one(scenario: Scenario, root: Path, quick: bool) -> dict[str, Any]:
    """Run one scenario in its own scratch dir; every daemon it started is killed after."""
    entry: dict[str, Any] = {"title": scenario.title, "keys": list(scenario.keys)}
    if scenario.run is None:
        entry.update(status="pending", pending=scenario.pending, figures={})
        return entry
    started = time.perf_counter()
    result = Result()
    with LoadSampler() as load:
        try:
            async with Bench(root / scenario.ident, quick=quick) as bench:
                await scenario.run(bench, result)
        except Exception as exc:
            entry.update(status="error", error=f"{exc!r}", traceback=traceback.format_exc())
        else:
            entry["status"] = "ok"
    entry["seconds"] = round(time.perf_counter() - started, 1)
    entry["load"] = load.summary()
    entry["figures"] = {key: figure.to_dict() for key, figure in result.figures.items()}
    entry["details"] = result.details
    entry["skipped"] = result.skipped
    return entry


async def _run_all(scenarios: list[Scenario], root: Path, quick: bool) -> dict[str, Any]:
    """One after another; ``--quick`` runs them all at once (its numbers mean nothing,
    and the default test suite runs it, so its wall time matters)."""
    if quick:
        entries = await asyncio.gather(*(_run_one(s, root, quick) for s in scenarios))
        return {s.ident: entry for s, entry in zip(scenarios, entries, strict=True)}
    return {s.ident: await _run_one(s, root, quick) for s in scenarios}


async def _stoppable(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run ``work``; SIGTERM or SIGINT cancel it, so every scenario's daemons are killed
    on the way out (a background run ignores SIGINT, and SIGTERM would skip cleanup)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    info = report["machine"]
    console.print(
        f"[bold]meshd bench[/] {'(quick) ' if report['quick'] else ''}"
        f"{info['git_commit'] and info['git_commit'][:12]} on {info['cores']} cores, "
        f"load {info['load_before']} before, {report['load']['load1_median']} median during, "
        f"python {info['python']}, esphome {info['esphome']}, meshd {info['meshd']}"
    )
    for ident, entry in report["scenarios"].items():
        status = entry["status"]
        title = f"{ident}: {entry['title']}"
        if status == "pending":
            console.print(f"[yellow]{title}: pending[/] ({entry['pending']})")
            continue
        if status == "error":
            console.print(f"[red]{title}: error[/] {entry['error']}")
        table = Table(
            title=f"{title} ({entry.get('seconds')} s, load {entry['load']['load1_median']})"
        )
        for column in ("figure", "measured", "reference", "ratio", "target", "met"):
            table.add_column(column, justify="left" if column in ("figure", "target") else "right")
        for figure in entry["figures"].values():
            met = {True: "yes", False: "[red]no[/]", None: ""}[figure["met"]]
            reference = (
                _fmt(figure["reference"], figure["unit"]) if figure["reference"] is not None else ""
            )
            if figure["reference_label"]:
                reference = f"{reference} ({figure['reference_label']})"
            table.add_row(
                figure["label"],
                _fmt(figure["measured"], figure["unit"]),
                reference,
                _fmt(figure["ratio"]),
                figure["target"],
                met,
            )
        console.print(table)
        for part, why in entry.get("skipped", {}).items():
            console.print(f"  skipped {part}: {why}")


def markdown(report: dict[str, Any]) -> str:
    """The run's tables as Markdown, one per scenario, with the machine line first."""
    info = report["machine"]
    out = [
        f"Run {report['started']}, commit {str(info['git_commit'])[:12]}"
        f"{' (uncommitted changes)' if info.get('git_dirty') else ''}, {info['cores']} cores "
        f"({info['cpu']}), {info['platform']}; Python {info['python']}, esphome "
        f"{info['esphome']}, PlatformIO {info['platformio']}, meshd {info['meshd']}. "
        f"Load average (1 min) {info['load_before'][0]} before, "
        f"{report['load']['load1_min']}-{report['load']['load1_max']} during "
        f"(median {report['load']['load1_median']}), machine CPU busy "
        f"{round(100 * (report['load']['machine_cpu_busy'] or 0))} % over the run "
        f"({report['seconds']} s).",
        "",
    ]
    for ident, entry in report["scenarios"].items():
        out.append(f"#### {ident}: {entry['title']}")
        out.append("")
        if entry["status"] == "pending":
            out += [f"Pending: {entry['pending']}.", ""]
            continue
        load = entry["load"]
        out.append(f"{entry['seconds']} s, load {load['load1_min']}-{load['load1_max']}.")
        out.append("")
        out.append("| figure | measured | reference | ratio | target | met |")
        out.append("|---|---:|---|---:|---|---|")
        for figure in entry["figures"].values():
            reference = ""
            if figure["reference"] is not None:
                reference = (
                    f"{_fmt(figure['reference'], figure['unit'])} ({figure['reference_label']})"
                )
            met = {True: "yes", False: "**no**", None: ""}[figure["met"]]
            label = figure["label"].strip() + (f" ({figure['note']})" if figure["note"] else "")
            out.append(
                f"| {label} | {_fmt(figure['measured'], figure['unit'])} | {reference} "
                f"| {_fmt(figure['ratio'])} | {figure['target']} | {met} |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text(encoding="utf-8"))))
        return 0
    scenarios = select(all_scenarios(), args.only)
    if args.list:
        for s in scenarios:
            print(f"{s.ident:22} {s.title}" + (f"  [pending: {s.pending}]" if s.pending else ""))
        return 0
    if not args.no_netns and not os.environ.get(IN_NETNS):
        code = _reexec_isolated(argv)
        if code is not None:
            return code
        print("unshare is not available: running in this namespace (everything is on loopback)")
    report: dict[str, Any] = {
        "meshd_bench": 1,
        "command": " ".join(["python -m tests.bench", *argv]),
        "quick": args.quick,
        "isolated_netns": bool(os.environ.get(IN_NETNS)),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
    }
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="meshd-bench-"))
    try:
        with LoadSampler() as load:
            report["scenarios"] = asyncio.run(_stoppable(_run_all(scenarios, root, args.quick)))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report["load"] = load.summary()
    report["machine"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print_tables(report)
    print(f"written to {args.output}" + (f" (scratch kept in {root})" if args.keep else ""))
    errors = [i for i, e in report["scenarios"].items() if e["status"] == "error"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
