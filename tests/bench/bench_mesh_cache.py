#!/usr/bin/env python3
"""What the mesh compile cache costs on a miss, and gives on a hit, on loopback.

    python tests/bench/bench_mesh_cache.py [--files 40] [--lookups 300]

A real link session (``LinkServer`` + ``connect`` on 127.0.0.1): the "offloader" end
serves ``SharedCacheStore``, the "receiver" end runs the per-job ``CacheGateway``.
Measured in one run, alternating per file so noise hits all alike:

* ``lookup_ms``: one ``GET`` miss through the gateway (HTTP on loopback + a
  ``cache_get`` round trip + ``not_found``), median of ``--lookups``;
* per compile of a tiny distinct C file with the real ccache and gcc: ``local``
  (ccache, no remote storage, a miss), ``mesh_miss`` (a miss that also asks the
  offloader and sends it the result), ``mesh_hit`` (a fresh local cache that gets
  the entry from the offloader).

Prints the numbers and writes tests/bench/results/mesh_cache.json. Nothing asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from meshd.jobs.model import Job, JobType  # noqa: E402
from meshd.jobs.options import JobOptions  # noqa: E402
from meshd.link import LinkServer, Router, connect  # noqa: E402
from meshd.mesh.dispatch.cache_store import SharedCacheStore  # noqa: E402
from meshd.mesh.serving.cache_gateway import CacheGateway  # noqa: E402
from meshd.toolchain.ccache import CompileCache, find_ccache  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "mesh_cache.json"


async def _ccache(cache: CompileCache, root: Path, source: Path, remote: str | None) -> float:
    env = {**os.environ, **cache.environ(base_dir=root)}
    if remote:
        env["CCACHE_REMOTE_STORAGE"] = remote
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        cache.ccache, "gcc", "-O2", "-c", str(source), "-o", str(source) + ".o", env=env, cwd=root
    )
    if await proc.wait() != 0:
        raise RuntimeError("compile failed")
    return time.perf_counter() - start


async def run(files: int, lookups: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-cache-"))
    router = Router()
    store = SharedCacheStore(tmp / "shared", lambda _s, _j: True)
    store.register(router)
    server = LinkServer(Ed25519PrivateKey.generate(), authorize=lambda c: True, router=router)
    await server.start("127.0.0.1", 0)
    session = await connect(
        "127.0.0.1", server.port, Ed25519PrivateKey.generate(), authorize=lambda c: True
    )
    gateway = CacheGateway(lambda _job_id: (session, "bench-job"))
    job = Job(JobType.COMPILE, "x.yaml", options=JobOptions(offloader="ab" * 32))
    ccache = find_ccache()
    times: dict[str, list[float]] = {"local": [], "mesh_miss": [], "mesh_hit": []}
    try:
        async with gateway.for_job(job) as url:
            assert url is not None
            async with aiohttp.ClientSession() as http:
                lookup: list[float] = []
                for n in range(lookups):
                    start = time.perf_counter()
                    async with http.get(f"{url}/ab/{n:038d}") as response:
                        assert response.status == 404
                    lookup.append(time.perf_counter() - start)
            for n in range(files):
                for kind in ("local", "mesh_miss", "mesh_hit"):
                    root = tmp / kind / str(n)
                    root.mkdir(parents=True)
                    source = root / "f.c"
                    # local and mesh_miss compile distinct sources (both misses);
                    # mesh_hit compiles mesh_miss's source into an empty local cache.
                    tag = f"{kind}-{n}" if kind != "mesh_hit" else f"mesh_miss-{n}"
                    source.write_text(
                        f"int f(int x) {{ return x + {len(tag)}; }} /* {tag} */\n"
                        f'const char *tag = "{tag}";\n'
                    )
                    cache = CompileCache(tmp / "caches" / kind / str(n), ccache=ccache)
                    remote = None if kind == "local" else url
                    times[kind].append(await _ccache(cache, root, source, remote))
    finally:
        await gateway.close()
        await session.close()
        await server.close()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {
        "files": files,
        "lookup_ms_median": round(statistics.median(lookup) * 1000, 3),
        "lookup_ms_p90": round(statistics.quantiles(lookup, n=10)[-1] * 1000, 3),
        "compile_ms_median": {k: round(v, 2) for k, v in med.items()},
        "mesh_miss_over_local": round(med["mesh_miss"] / med["local"], 3),
        "mesh_hit_over_local": round(med["mesh_hit"] / med["local"], 3),
        "served": store.served,
        "stored": store.stored,
        "note": "shared 2-core machine; tiny sources, so gcc's own time is small",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--lookups", type=int, default=300)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.files, args.lookups))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


@pytest.mark.bench
def test_bench_mesh_cache() -> None:
    main(["--files", "10", "--lookups", "50"])


if __name__ == "__main__":
    main()
