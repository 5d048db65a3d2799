"""Scenario 1: pipelining on one node. N installs; compiles and uploads overlap.

One real daemon, no peers. Each install is a stand-in compile of C seconds (sleeps,
no CPU) and a real OTA upload (esphome's espota2 client, through the stand-in) to its
own OTA emulator throttled so the transfer takes T seconds. Two regimes: C > U (the
compile slot is the bottleneck) and U > C (the upload slots are: a slow Thread-style
radio, scaled down).

The bound is for one compile slot and the daemon's upload slots S, with the tools'
own times measured in the same run (C and U: each tool run directly, without meshd):
compiles end at best at C, 2C, ... NC; upload i starts at max(iC, the earliest slot
free) and takes U; ``pipeline_bound`` computes that list schedule, which is optimal
for identical uploads. In closed form it is max over k of (kC + ceil((N-k+1)/S) U):
NC + U when C >= U/S, else set by the uploads. Reported beside it: the makespan one
install at a time, N(C+U).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from tests.bench.harness import (
    Bench,
    Figure,
    Result,
    compile_ends,
    ensure_all_completed,
    median,
    pipeline_bound,
    run_tool,
    standin_argv,
    write_config,
)
from tests.bench.scenarios import Scenario

# The image each upload sends; the emulator's rate sets how long the transfer takes.
FIRMWARE_BYTES = 64 * 1024
# (compile seconds, transfer seconds). esphome's OTA client also waits 1 s after the
# device confirms ("do not connect logs until it is fully on"), so U = T + ~1.2 s.
FULL = {"c_gt_u": (2.0, 0.3), "u_gt_c": (0.4, 2.5)}
QUICK = {"c_gt_u": (0.4, 0.05), "u_gt_c": (0.05, 0.6)}
KEYS = tuple(
    f"{regime}.{what}"
    for regime in FULL
    for what in ("makespan", "excess_per_job", "vs_one_at_a_time")
)


async def tool_times(
    bench: Bench, key: str, compile_s: float, port: int, host: str
) -> tuple[float, float]:
    """C and U of the tools alone (median of 2), on a probe copy of the configuration."""
    probe = write_config(
        bench.path("pipelining", f"probe-{key}"),
        f"probe-{key.replace('_', '-')}",
        compile_seconds=compile_s,
        firmware_bytes=FIRMWARE_BYTES,
        ota_port=port,
    )
    compiles, uploads = [], []
    for _ in range(1 if bench.quick else 2):
        compiles.append(await run_tool(standin_argv("--dashboard", "compile", str(probe))))
        uploads.append(
            await run_tool(standin_argv("--dashboard", "upload", str(probe), "--device", host))
        )
    return median(compiles), median(uploads)


def diagnostics(chains: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Where meshd spends time between the tools: lane turnaround and chain hand-off."""
    compiles = sorted((c for c, _ in chains), key=lambda j: j["started_at"])
    gaps = [b["started_at"] - a["finished_at"] for a, b in itertools.pairwise(compiles)]
    handoffs = [u["started_at"] - c["finished_at"] for c, u in chains]
    return {
        "compile_job_s_median": round(
            median(c["finished_at"] - c["started_at"] for c, _ in chains), 3
        ),
        "upload_job_s_median": round(
            median(u["finished_at"] - u["started_at"] for _, u in chains), 3
        ),
        "compile_to_next_compile_gap_ms_median": round(median(gaps) * 1000, 1) if gaps else None,
        "compile_done_to_upload_start_ms_median": round(median(handoffs) * 1000, 1),
        "compile_done_to_upload_start_ms_max": round(max(handoffs) * 1000, 1),
    }


async def run(bench: Bench, result: Result) -> None:
    installs = 2 if bench.quick else 6
    regimes = QUICK if bench.quick else FULL
    [node] = await bench.start_nodes([("pipeline", ["--no-mdns"])])
    slots = (await node.call("GET", "/status"))["lanes"]["upload"]["slots"]
    result.details.update(
        {"installs": installs, "upload_slots": slots, "firmware_bytes": FIRMWARE_BYTES}
    )
    for key, (compile_s, transfer_s) in regimes.items():
        devices = [await bench.device(rate=FIRMWARE_BYTES / transfer_s) for _ in range(installs)]
        c_tool, u_tool = await tool_times(bench, key, compile_s, devices[0][1].port, devices[0][0])
        configs = [
            write_config(
                bench.path("pipelining", key),
                f"{key.replace('_', '-')}-{index}",
                compile_seconds=compile_s,
                firmware_bytes=FIRMWARE_BYTES,
                ota_port=emulator.port,
            )
            for index, (_host, emulator) in enumerate(devices)
        ]
        async with node.events() as events:
            submitted = time.time()
            chains = [
                await node.install(cfg, host)
                for cfg, (host, _e) in zip(configs, devices, strict=True)
            ]
            done = await events.until_terminal([j["id"] for chain in chains for j in chain])
        ensure_all_completed(done, node)
        finished = [(done[c["id"]], done[u["id"]]) for c, u in chains]
        makespan = max(u["finished_at"] for _, u in finished) - submitted
        bound = pipeline_bound(compile_ends(installs, c_tool, 1), u_tool, slots)
        serial = installs * (c_tool + u_tool)
        label = f"{installs} installs, C {c_tool:.2f} s, U {u_tool:.2f} s"
        result.add(
            f"{key}.makespan",
            Figure(
                f"{key}: makespan ({label})",
                makespan,
                reference=bound,
                reference_label="bound (1 compile slot, S upload slots)",
                target="<= 1.10 x bound",
                met=makespan <= 1.10 * bound,
            ),
        )
        excess = (makespan - bound) / installs
        result.add(
            f"{key}.excess_per_job",
            Figure(
                f"{key}: time over the bound per install",
                excess,
                target="< 0.5 s",
                met=excess < 0.5,
            ),
        )
        result.add(
            f"{key}.vs_one_at_a_time",
            Figure(
                f"{key}: makespan vs one install at a time",
                makespan,
                reference=serial,
                reference_label="N x (C + U)",
            ),
        )
        result.details[key] = {
            "compile_nominal_s": compile_s,
            "transfer_nominal_s": transfer_s,
            "compile_tool_s": round(c_tool, 3),
            "upload_tool_s": round(u_tool, 3),
            "makespan_s": round(makespan, 3),
            "bound_s": round(bound, 3),
            "one_at_a_time_s": round(serial, 3),
            "regime": "compile-bound" if c_tool >= u_tool / slots else "upload-bound",
            **diagnostics(finished),
        }
        await asyncio.gather(*(e.stop() for _h, e in devices))


SCENARIO = Scenario(
    1, "pipelining", "Pipelining on one node (compile and upload lanes overlap)", KEYS, run
)
