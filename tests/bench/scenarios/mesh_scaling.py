"""Scenario 2: mesh scaling. N installs over K receivers (separate daemons) + the local slot.

One offloader daemon and up to four receiver daemons, mDNS off, linked by the two
``trust`` calls (static addresses), the stand-in esphome compiling for C seconds (no
CPU) and real OTA uploads from the offloader to throttled emulators. K grows from 0
to 4 by trusting one more receiver before each run; each run uses fresh
configurations, so no receiver has a warm copy.

With include-local on, K + 1 builders share the compiles: the bound is
ceil(N / (K + 1)) x C + U (issue 17), computed exactly by ``pipeline_bound`` with the
tools' own times measured in this run. "One receiver at a time" is how dispatch worked
before parallel dispatch: one compile in flight, wherever it runs, i.e. N x C + U.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter

from tests.bench.harness import (
    Bench,
    Figure,
    Result,
    compile_ends,
    ensure_all_completed,
    link,
    median,
    pipeline_bound,
    run_tool,
    standin_argv,
    write_config,
)
from tests.bench.scenarios import Scenario
from tests.bench.scenarios.remote_overhead import PHASES, parse_phases

FIRMWARE_BYTES = 64 * 1024
UPLOAD_QUICK = 0.05
RECEIVERS = (0, 1, 2, 4)
KEYS = tuple(
    f"k{k}.{what}" for k in RECEIVERS for what in ("makespan", "excess_per_job", "vs_one_at_a_time")
)


async def run(bench: Bench, result: Result) -> None:
    installs, compile_s, transfer_s = (3, 0.2, 0.05) if bench.quick else (12, 2.0, 0.1)
    specs = [("offloader", ["--no-mdns", "--no-receiver"])]
    specs += [(f"rx{i + 1}", ["--no-mdns", "--no-offload"]) for i in range(max(RECEIVERS))]
    offloader, *receivers = await bench.start_nodes(specs)
    slots = (await offloader.call("GET", "/status"))["lanes"]["upload"]["slots"]
    # --quick skips real OTA (esphome's client alone waits 1 s per upload): uploads
    # then only pretend to take UPLOAD_QUICK seconds. Scenario 1 exercises OTA in both.
    devices = [await bench.device(rate=FIRMWARE_BYTES / transfer_s) for _ in range(installs)]
    upload = (
        {"upload_seconds": UPLOAD_QUICK}
        if bench.quick
        else {"firmware_bytes": FIRMWARE_BYTES, "ota_port": 0}
    )

    def directives(port: int) -> dict[str, object]:
        return {**upload, "ota_port": port} if "ota_port" in upload else dict(upload)

    host, emulator = devices[0]
    probe = write_config(
        bench.path("mesh", "probe"), "probe", compile_seconds=compile_s, **directives(emulator.port)
    )
    c_runs, u_runs = [], []
    for _ in range(1 if bench.quick else 3):
        c_runs.append(await run_tool(standin_argv("--dashboard", "compile", str(probe))))
        u_runs.append(
            await run_tool(standin_argv("--dashboard", "upload", str(probe), "--device", host))
        )
    c_tool, u_tool = median(c_runs), median(u_runs)
    names = {offloader.fingerprint: offloader.name, "local": offloader.name}
    names.update({r.fingerprint: r.name for r in receivers})
    linked = 0
    usable: list[float] = []
    result.details.update(
        {
            "installs": installs,
            "compile_nominal_s": compile_s,
            "compile_tool_s": round(c_tool, 3),
            "upload_tool_s": round(u_tool, 3),
            "upload_slots": slots,
            "include_local": True,
        }
    )
    for k in RECEIVERS:
        while linked < k:
            usable.append(await link(offloader, receivers[linked]))
            linked += 1
        configs = [
            write_config(
                bench.path("mesh", f"k{k}"),
                f"k{k}-dev{index}",
                compile_seconds=compile_s,
                **directives(device.port),
            )
            for index, (_h, device) in enumerate(devices)
        ]
        async with offloader.events() as events:
            submitted = time.time()
            chains = [
                await offloader.install(cfg, address)
                for cfg, (address, _d) in zip(configs, devices, strict=True)
            ]
            done = await events.until_terminal([j["id"] for chain in chains for j in chain])
        ensure_all_completed(done, offloader)
        compiles = [done[c["id"]] for c, _u in chains]
        uploads = [done[u["id"]] for _c, u in chains]
        makespan = max(u["finished_at"] for u in uploads) - submitted
        bound = pipeline_bound(compile_ends(installs, c_tool, k + 1), u_tool, slots)
        issue_bound = math.ceil(installs / (k + 1)) * c_tool + u_tool
        one_at_a_time = pipeline_bound(compile_ends(installs, c_tool, 1), u_tool, slots)
        in_series = math.ceil(installs / (k + 1))
        excess = (makespan - bound) / in_series
        per_node = Counter(names.get(c["runner"], c["runner"][:12]) for c in compiles)
        label = f"{installs} installs, K={k}, C {c_tool:.2f} s, U {u_tool:.2f} s"
        result.add(
            f"k{k}.makespan",
            Figure(
                f"K={k}: makespan ({label})",
                makespan,
                reference=bound,
                reference_label="ceil(N/(K+1)) x C + U",
                target="<= 1.10 x bound",
                met=makespan <= 1.10 * bound,
            ),
        )
        result.add(
            f"k{k}.excess_per_job",
            Figure(
                f"K={k}: time over the bound per compile in series ({in_series})",
                excess,
                target="< 0.5 s",
                met=excess < 0.5,
            ),
        )
        result.add(
            f"k{k}.vs_one_at_a_time",
            Figure(
                f"K={k}: makespan vs one compile in flight at a time",
                makespan,
                reference=one_at_a_time,
                reference_label="N x C + U",
            ),
        )
        remote = [c for c in compiles if c["runner"] != "local"]
        phases = [parse_phases(await offloader.log(c["id"])) for c in remote]
        result.details[f"k{k}"] = {
            "makespan_s": round(makespan, 3),
            "bound_s": round(bound, 3),
            "issue_formula_s": round(issue_bound, 3),
            "one_at_a_time_s": round(one_at_a_time, 3),
            "compiles_per_node": dict(sorted(per_node.items())),
            "compile_job_s_median_local": _median_duration(
                [c for c in compiles if c["runner"] == "local"]
            ),
            "compile_job_s_median_remote": _median_duration(remote),
            "max_compiles_in_flight": _max_overlap(compiles),
            "remote_phases_median_ms": {
                p: round(median(x.get(p, 0.0) for x in phases) * 1000, 1) for p in PHASES
            }
            if phases
            else None,
        }
    result.details["trust_to_usable_s"] = [round(u, 3) for u in usable]
    await asyncio.gather(*(d.stop() for _h, d in devices))


def _median_duration(jobs: list[dict[str, float]]) -> float | None:
    if not jobs:
        return None
    return round(median(j["finished_at"] - j["started_at"] for j in jobs), 3)


def _max_overlap(jobs: list[dict[str, float]]) -> int:
    edges = sorted([(j["started_at"], 1) for j in jobs] + [(j["finished_at"], -1) for j in jobs])
    running = peak = 0
    for _t, step in edges:
        running += step
        peak = max(peak, running)
    return peak


SCENARIO = Scenario(
    2, "mesh-scaling", "Mesh scaling: N installs over K receivers + the local slot", KEYS, run
)
