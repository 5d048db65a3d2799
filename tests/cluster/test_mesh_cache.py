"""The compile cache across the mesh, with real daemons on loopback and real ccache+gcc.

The stand-in esphome of tests/toolchain/cc_esphome.py compiles one shared C source
through ``$MESHD_CCACHE``. Offloader ``pi`` sends a compile to ``rx1``: a miss there,
and the entry travels back to pi's shared store (``cache_put``). The next compile, of
another configuration, goes to ``rx2``, which has never built for pi: its lookup goes
through its per-job gateway to pi (``cache_get``) and is a hit from the mesh. Each
receiver keeps pi's objects in pi's own per-offloader cache directory.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import HEARTBEAT, Meshd, link, remote_jobs, wait_peer
from tests.daemon.conftest import MeshdFactory, host_config

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

CC_ESPHOME = f"{sys.executable} {Path(__file__).parents[1] / 'toolchain' / 'cc_esphome.py'}"


def _node(factory: MeshdFactory, name: str, *args: str) -> Meshd:
    return factory(
        name,
        esphome=CC_ESPHOME,
        # This test is about the cache crossing the mesh; the stand-in compiler imports
        # test helpers the build sandbox does not lend (test_ccache_sandbox.py proves the
        # per-offloader cache inside a real sandbox).
        args=("--name", name, "--heartbeat", HEARTBEAT, "--no-mdns", "--unsafe-no-sandbox", *args),
    ).start()


def _remote_compile(pi: Meshd, receiver: Meshd, config: Path) -> dict[str, Any]:
    job_id = pi.cli_json("compile", str(config), "--detach")["compile"]
    job = pi.wait_status(job_id, "completed", "failed")
    assert job["status"] == "completed", pi.cli("logs", job_id).stdout
    ours = [j for j in remote_jobs(receiver) if j["args"].get("remote_job") == job_id]
    assert ours, f"{job_id} did not run on {receiver.data_dir.name}: runner {job['runner']}"
    return ours[0]


def test_a_second_receiver_gets_the_offloaders_objects(meshd: MeshdFactory, tmp_path: Path) -> None:
    rx1 = _node(meshd, "rx1", "--no-offload")
    pi = _node(meshd, "pi", "--no-receiver", "--no-include-local")
    pi_fp, rx1_fp = link(pi, rx1)
    wait_peer(pi, rx1_fp, connected=True, idle=True)

    first = _remote_compile(pi, rx1, host_config(tmp_path / "a", "kitchen"))
    assert (first["args"]["cache_hits"], first["args"]["cache_misses"]) == (0, 1)
    shared = pi.data_dir / "ccache" / "shared"
    assert [p for p in shared.rglob("*") if p.is_file() and len(p.relative_to(shared).parts) == 2]
    assert (rx1.data_dir / "ccache" / "peers" / pi_fp[:16]).is_dir()
    assert not (rx1.data_dir / "ccache" / "local").exists()

    assert rx1.terminate() == 0
    rx2 = _node(meshd, "rx2", "--no-offload")
    _, rx2_fp = link(pi, rx2)
    wait_peer(pi, rx2_fp, connected=True, idle=True)
    second = _remote_compile(pi, rx2, host_config(tmp_path / "elsewhere" / "b", "garage"))
    assert (second["args"]["cache_hits"], second["args"]["cache_misses"]) == (1, 0)
    log = rx2.cli("logs", second["id"]).stdout
    assert "compile cache: 1 hits, 0 misses (100% hit rate), 1 from the mesh" in log
    # The offloader's own log shows it too (the receiver's lines are forwarded).
    assert "1 from the mesh" in pi.cli("logs", second["args"]["remote_job"]).stdout
