"""Scenario 4: what offloading adds to a compile, phase by phase.

Part 1 (always): an offloader and a receiver daemon (mDNS off, linked by trust), the
stand-in esphome with a zero-second compile, so what is timed is meshd's own work
plus tool start-ups. Compile jobs alternate local (``local: true``) and remote on the
same two configurations, each edited before every round (so every remote round sends
the changed YAML, as a real edit would), after one warm-up round that is not counted.
The remote job's phases come from the offloader's own timing line
(``PHASES_PREFIX`` in meshd/mesh/dispatch/offloader.py).

Part 2 (not in ``--quick``): the same with the real esphome and PlatformIO building
ESPHome's host platform offline (tests/support/pio_offline.py, every esphome run in a
fresh network namespace): after one cold compile on each side, warm rebuilds after a
one-line change, local vs remote.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshd.mesh.dispatch.offloader import PHASES_PREFIX
from tests.bench.harness import (
    Bench,
    BenchError,
    EventFollower,
    Figure,
    Node,
    Result,
    ensure_all_completed,
    link,
    median,
    write_config,
)
from tests.bench.scenarios import Scenario
from tests.support.host_device import free_port, host_yaml
from tests.support.netns import NETNS_PREFIX, netns_available
from tests.support.pio_offline import offline_env, provision_offline_core

PHASES = (
    "bundle",
    "have/need",
    "push",
    "accept",
    "queued on receiver",
    "remote compile",
    "artifact manifest",
    "pull",
    "materialise",
)
# Everything the offloader and receiver do around the bundle and the build itself.
MESHD_PHASES = tuple(p for p in PHASES if p not in ("bundle", "remote compile"))
KEYS = (
    "remote_vs_local",
    "overhead_excluding_bundle",
    "meshd_phases",
    *(f"phase.{p}" for p in PHASES),
    "real.remote_vs_local",
    "real.overhead_excluding_bundle",
    "real.meshd_phases",
)
ESPHOME = Path(sys.executable).parent / "esphome"
# A cold host compile takes 30-120 s on 2 shared cores; this is a hang guard only.
COLD_TIMEOUT = 1200.0
_PHASE_RE = re.compile(r"([a-z/ ]+?) (\d+\.\d+)")


def parse_phases(log: str) -> dict[str, float]:
    """The offloader's phase line → {phase: seconds}."""
    for line in log.splitlines():
        if line.startswith(PHASES_PREFIX):
            body = line[len(PHASES_PREFIX) :]
            return {m.group(1).strip(): float(m.group(2)) for m in _PHASE_RE.finditer(body)}
    raise BenchError(f"no phase line in the remote job's log:\n{log[-2000:]}")


async def _compile(
    node: Node, events: EventFollower, config: Path, *, local: bool, timeout: float = 300.0
) -> dict[str, Any]:
    job = await node.compile(config, local=local)
    done = await events.until_terminal([job["id"]], timeout=timeout)
    ensure_all_completed(done, node)
    finished = done[job["id"]]
    if (finished["runner"] == "local") is not local:
        raise BenchError(f"{job['id']} ran on {finished['runner']}, wanted local={local}")
    return finished


Edit = Callable[[Path, int], None]


def comment_edit(texts: dict[Path, str]) -> Edit:
    """An edit that changes the YAML's bytes but not what it builds."""

    def edit(config: Path, round_no: int) -> None:
        config.write_text(f"# bench round {round_no}\n{texts[config]}", encoding="utf-8")

    return edit


async def alternate(
    node: Node,
    local_cfg: Path,
    remote_cfg: Path,
    rounds: int,
    *,
    edit: Edit | None = None,
    timeout: float = 300.0,
) -> tuple[list[float], list[float], list[dict[str, float]], list[dict[str, float]]]:
    """Rounds of (local, remote) compiles in alternating order after one warm-up round.

    Each configuration is edited before each of its compiles. Returns the job
    durations (started → finished) of each side, the remote phases, and each side's
    time from submission to start (placement on the offloader).
    """
    if edit is None:
        edit = comment_edit({p: p.read_text(encoding="utf-8") for p in (local_cfg, remote_cfg)})
    local_s: list[float] = []
    remote_s: list[float] = []
    phases: list[dict[str, float]] = []
    waits: list[dict[str, float]] = []
    async with node.events() as events:
        for round_no in range(rounds + 1):
            order = [True, False] if round_no % 2 else [False, True]
            wait: dict[str, float] = {}
            for local in order:
                config = local_cfg if local else remote_cfg
                edit(config, round_no)
                job = await _compile(node, events, config, local=local, timeout=timeout)
                if round_no == 0:
                    continue  # warm-up: first contact, cold work directory
                duration = job["finished_at"] - job["started_at"]
                wait["local" if local else "remote"] = job["started_at"] - job["created_at"]
                if local:
                    local_s.append(duration)
                else:
                    remote_s.append(duration)
                    phases.append(parse_phases(await node.log(job["id"])))
            if wait:
                waits.append(wait)
    return local_s, remote_s, phases, waits


def _phase_medians(phases: list[dict[str, float]]) -> dict[str, float]:
    return {p: median(s.get(p, 0.0) for s in phases) for p in PHASES}


async def run(bench: Bench, result: Result) -> None:
    rounds = 1 if bench.quick else 6
    off, rx = await bench.start_nodes(
        [("offloader", ["--no-mdns", "--no-receiver"]), ("receiver", ["--no-mdns", "--no-offload"])]
    )
    await link(off, rx)
    directory = bench.path("overhead")
    local_cfg = write_config(directory / "local", "ovh-local", compile_seconds=0)
    remote_cfg = write_config(directory / "remote", "ovh-remote", compile_seconds=0)
    local_s, remote_s, phases, waits = await alternate(off, local_cfg, remote_cfg, rounds)
    medians = _phase_medians(phases)
    local_m, remote_m = median(local_s), median(remote_s)
    excluding = remote_m - local_m - medians["bundle"]
    result.add(
        "remote_vs_local",
        Figure(
            "compile job offloaded vs local (stand-in, 0 s compile)",
            remote_m,
            reference=local_m,
            reference_label="same job, local",
        ),
    )
    result.add(
        "overhead_excluding_bundle",
        Figure(
            "offloading overhead excluding esphome bundle (remote - local - bundle)",
            excluding,
            target="< 0.150 s",
            met=excluding < 0.150,
        ),
    )
    result.add("meshd_phases", _meshd_phases(medians))
    for phase in PHASES:
        result.add(f"phase.{phase}", Figure(f"  phase: {phase}", medians[phase] * 1000, unit="ms"))
    result.details.update(
        {
            "rounds": rounds,
            "local_s": [round(v, 4) for v in local_s],
            "remote_s": [round(v, 4) for v in remote_s],
            "phases_median_ms": {k: round(v * 1000, 1) for k, v in medians.items()},
            "phases_sum_median_ms": round(sum(medians.values()) * 1000, 1),
            "submit_to_start_ms_median": {
                side: round(median(w[side] for w in waits) * 1000, 1)
                for side in ("local", "remote")
            },
        }
    )
    await bench.cleanup()
    if bench.quick:
        why = "--quick does not run the real esphome (a cold compile on each side takes minutes)"
        _real_skipped(result, why)
    else:
        await _real(bench, result)


def _meshd_phases(medians: dict[str, float], prefix: str = "") -> Figure:
    own = sum(medians[p] for p in MESHD_PHASES)
    return Figure(
        f"{prefix}meshd's own phases (all but the bundle and the build)",
        own,
        target="< 0.150 s",
        met=own < 0.150,
        note="have/need, push, accept, queued, manifest, pull, materialise",
    )


def _real_skipped(result: Result, why: str) -> None:
    result.skipped["real warm rebuild"] = why
    result.add(
        "real.remote_vs_local",
        Figure("real host warm rebuild offloaded vs local", None, note=why),
    )
    result.add(
        "real.overhead_excluding_bundle",
        Figure("real: overhead excluding esphome bundle", None, target="< 0.150 s", note=why),
    )
    result.add(
        "real.meshd_phases",
        Figure("real: meshd's own phases", None, target="< 0.150 s", note=why),
    )


def _wrapper(directory: Path) -> Path:
    """The esphome command for both daemons: every run in a fresh network namespace."""
    isolated = " ".join(shlex.quote(part) for part in (*NETNS_PREFIX, str(ESPHOME)))
    script = directory / "esphome-isolated"
    script.write_text(f'#!/bin/sh\nexec {isolated} "$@"\n', encoding="utf-8")
    script.chmod(0o755)
    return script


async def _real(bench: Bench, result: Result) -> None:
    missing = [tool for tool in ("g++", "gcc") if shutil.which(tool) is None]
    if missing or not ESPHOME.exists() or not await asyncio.to_thread(netns_available):
        _real_skipped(result, f"needs g++, the venv's esphome and unshare -n (missing: {missing})")
        return
    core = await asyncio.to_thread(provision_offline_core, bench.path("pio-core"))
    env = offline_env(core, base={})
    env["PATH"] = f"{ESPHOME.parent}:/usr/local/bin:/usr/bin:/bin"
    # Inside the benchmark's own network namespace (the default) esphome is isolated
    # already; a nested ``unshare -n`` is refused under the daemon's restrictions.
    isolated = bool(os.environ.get("MESHD_BENCH_NETNS"))
    wrapper = ESPHOME if isolated else _wrapper(bench.path("real"))
    off, rx = await bench.start_nodes(
        [
            ("real-offloader", ["--no-mdns", "--no-receiver"]),
            ("real-receiver", ["--no-mdns", "--no-offload"]),
        ],
        esphome=str(wrapper),
        env=env,
    )
    await link(off, rx)
    port = free_port()
    local_cfg = bench.path("real", "local") / "host.yaml"
    remote_cfg = bench.path("real", "remote") / "host.yaml"

    def marker_edit(config: Path, round_no: int) -> None:
        # A one-line change to what the firmware logs: main.cpp recompiles and relinks.
        text = host_yaml(name="bench-host", port=port, password="bench", marker=f"R{round_no}")
        config.write_text(text, encoding="utf-8")

    rounds = 5
    # alternate() counts its first round as the warm-up: here that is the cold compile.
    local_s, remote_s, phases, _waits = await alternate(
        off, local_cfg, remote_cfg, rounds, edit=marker_edit, timeout=COLD_TIMEOUT
    )
    medians = _phase_medians(phases)
    local_m, remote_m = median(local_s), median(remote_s)
    excluding = remote_m - local_m - medians["bundle"]
    result.add(
        "real.remote_vs_local",
        Figure(
            "real host warm rebuild offloaded vs local",
            remote_m,
            reference=local_m,
            reference_label="same rebuild, local",
        ),
    )
    result.add(
        "real.overhead_excluding_bundle",
        Figure(
            "real: overhead excluding esphome bundle",
            excluding,
            target="< 0.150 s",
            met=excluding < 0.150,
            note=f"esphome bundle alone: {medians['bundle']:.2f} s",
        ),
    )
    result.add("real.meshd_phases", _meshd_phases(medians, "real: "))
    result.details["real"] = {
        "rounds": rounds,
        "local_s": [round(v, 3) for v in local_s],
        "remote_s": [round(v, 3) for v in remote_s],
        "phases_median_ms": {k: round(v * 1000, 1) for k, v in medians.items()},
    }


SCENARIO = Scenario(
    4, "remote-overhead", "Remote overhead: a compile offloaded vs local", KEYS, run
)
