"""In-process mesh nodes for tests: a real engine and MeshNode per node, on loopback.

Each node has its own data dir, link server on 127.0.0.1 (port 0), no mDNS, and
runs the stand-in esphome, so a compile takes as long as its YAML says and leaves
the files real esphome leaves. ``trust`` pairs two nodes the way ``meshd trust``
does; the offloader then dials the receiver at its real port.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshd.jobs.engine import Engine
from meshd.jobs.model import Job, JobStatus
from meshd.mesh.node import MeshNode, MeshSettings
from meshd.toolchain.runners import make_runners
from meshd.toolchain.tools import Toolchain
from meshd.toolchain.versions import ToolchainStore
from meshd.version_policy import VersionPolicy

STANDIN = Path(__file__).resolve().parents[1] / "support" / "standin_esphome.py"
WAIT = 60.0  # safety net against hangs, not a speed assertion


def standin(version: str = "2026.6.5") -> Toolchain:
    return Toolchain(
        esphome=(sys.executable, str(STANDIN)),
        env={"STANDIN_ESPHOME_VERSION": version},
        kill_grace=2.0,
    )


def host_yaml(name: str, *, compile_seconds: float = 0.2, extra: str = "") -> str:
    return (
        f"# standin: compile_seconds={compile_seconds}\n"
        f"esphome:\n  name: {name}\nhost:\nlogger:\n{extra}"
    )


@dataclass
class Node:
    name: str
    data_dir: Path
    engine: Engine
    mesh: MeshNode

    @property
    def fingerprint(self) -> str:
        return self.mesh.identity.fingerprint_hex

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.mesh.port}"

    async def wait_job(self, job_id: str, predicate: Callable[[Job], bool]) -> Job:
        async with asyncio.timeout(WAIT):
            while True:
                job = self.engine.get(job_id)
                if predicate(job):
                    return job
                await asyncio.sleep(0.02)

    async def wait_status(self, job_id: str, *statuses: JobStatus) -> Job:
        return await self.wait_job(job_id, lambda j: j.status in statuses)

    async def wait_peer(self, fingerprint: str, **fields: object) -> dict[str, object]:
        async with asyncio.timeout(WAIT):
            while True:
                for peer in self.mesh.peers():
                    if peer["fingerprint"] == fingerprint and all(
                        peer.get(k) == v for k, v in fields.items()
                    ):
                        return peer
                await asyncio.sleep(0.02)

    def uploads(self, config: Path) -> list[dict[str, str]]:
        log = config.parent / ".esphome" / "standin-uploads.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


async def start_node(
    root: Path,
    name: str,
    *,
    receiver: bool = True,
    offload: bool = True,
    version: str = "2026.6.5",
    policy: VersionPolicy = VersionPolicy.RELEASE,
    include_local: bool = True,
    heartbeat: float = 0.5,
    store: ToolchainStore | None = None,
) -> Node:
    """A node; with ``store`` it provisions other esphome versions from it."""
    data_dir = root / name
    toolchain = standin(version)
    engine = Engine(data_dir, make_runners(toolchain, store=store, default_version=lambda: version))
    mesh = MeshNode(
        data_dir,
        engine,
        toolchain,
        MeshSettings(
            name=name,
            listen_host="127.0.0.1",
            listen_port=0,
            receiver=receiver,
            offload=offload,
            mdns=False,
            version_policy=policy,
            include_local=include_local,
            heartbeat=heartbeat,
            provision=store is not None,
        ),
        esphome_version=lambda: version,
        toolchains=store.ready_versions if store is not None else tuple,
    )
    await engine.start()
    await mesh.start()
    return Node(name, data_dir, engine, mesh)


def mesh_tasks_left() -> list[asyncio.Task[object]]:
    """Unfinished tasks running code of the mesh or the link (none may outlive a stop)."""
    left = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if not task.done() and ("/meshd/mesh/" in filename or "/meshd/link/" in filename):
            left.append(task)
    return left


async def assert_no_mesh_tasks_left() -> None:
    # Sockets may need a loop turn or two to finish closing; tasks may not linger.
    for _ in range(3):
        await asyncio.sleep(0)
    assert mesh_tasks_left() == []


async def stop_node(node: Node) -> None:
    await node.mesh.stop()
    await node.engine.stop()


def trust(offloader: Node, receiver: Node) -> None:
    """The two ``meshd trust`` commands an operator would run."""
    receiver.mesh.trust_peer(
        offloader.fingerprint, name=offloader.name, may_send_work=True, may_build_for_me=False
    )
    offloader.mesh.trust_peer(
        receiver.fingerprint,
        name=receiver.name,
        addresses=(receiver.address,),
        may_send_work=False,
        may_build_for_me=True,
    )
