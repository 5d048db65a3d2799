"""The receiver's parts (meshd/mesh/serving/) between in-process nodes, stand-in esphome.

The bookkeeping of remote jobs, and every task the receiver and the node start in the
background, must end with the node: none may be dropped unreferenced, none left
running after ``stop``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshd.jobs.events import JobOutput
from meshd.jobs.model import Job, JobStatus, JobType
from meshd.link.errors import LinkClosed
from tests.mesh.nodes import (
    WAIT,
    Node,
    assert_no_mesh_tasks_left,
    host_yaml,
    start_node,
    trust,
)


def slow_to_die(tmp_path: Path, name: str = "kitchen") -> Path:
    """A long compile that ignores SIGTERM: only the kill after the grace period ends it."""
    path = tmp_path / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# standin: ignore_sigterm=1\n" + host_yaml(name, compile_seconds=120))
    return path


async def remote_job(receiver: Node, remote_id: str, status: JobStatus) -> Job:
    async with asyncio.timeout(WAIT):
        while True:
            jobs = receiver.engine.jobs_where(lambda j: j.options.remote_job == remote_id)
            if jobs and jobs[0].status is status:
                return jobs[0]
            await asyncio.sleep(0.02)


async def test_a_lost_offloaders_compile_is_cancelled_before_the_receiver_stops(
    tmp_path: Path,
) -> None:
    """The cancel a lost session starts is kept and awaited, not dropped: by the time the
    receiver's mesh has stopped, the orphaned compile has really ended."""
    pi = await start_node(tmp_path, "pi", receiver=False, include_local=False)
    desk = await start_node(tmp_path, "desk", offload=False)
    running = [pi, desk]
    try:
        trust(pi, desk)
        await pi.wait_peer(desk.fingerprint, connected=True, idle=True)
        job = pi.engine.submit(JobType.COMPILE, str(slow_to_die(tmp_path)))
        served = await remote_job(desk, job.id, JobStatus.RUNNING)

        lost = asyncio.Event()

        def on_change(_change: object) -> None:
            info = desk.mesh.registry.get(pi.fingerprint)
            if info is not None and not info.connected:
                lost.set()

        desk.mesh.registry.add_listener(on_change)
        running.remove(pi)
        await pi.mesh.stop()  # the offloader goes away mid-compile
        async with asyncio.timeout(WAIT):
            await lost.wait()
        # The receiver holds the cancel while the compiler takes its grace period to die.
        assert desk.mesh.receiver.pending_cancels == 1
        assert desk.engine.get(served.id).status is JobStatus.RUNNING

        running.remove(desk)
        await desk.mesh.stop()
        ended = desk.engine.get(served.id)
        assert ended.status is JobStatus.CANCELLED
        assert "offloader disconnected" in "\n".join(desk.engine.logs.read_lines(served.id))
        assert desk.mesh.receiver.pending_cancels == 0
        await assert_no_mesh_tasks_left()
    finally:
        for node in running:
            await node.mesh.stop()
        await pi.engine.stop()
        await desk.engine.stop()


async def test_jobs_still_running_at_stop_are_left_to_the_engine_and_cancelled_at_start(
    tmp_path: Path,
) -> None:
    """The receiver's own stop cancels nothing: the engine interrupts the compile, and
    the next start cancels it as an orphan (its offloader re-routes it)."""
    pi = await start_node(tmp_path, "pi", receiver=False, include_local=False)
    desk = await start_node(tmp_path, "desk", offload=False)
    try:
        trust(pi, desk)
        await pi.wait_peer(desk.fingerprint, connected=True, idle=True)
        cfg = tmp_path / "configs" / "porch.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(host_yaml("porch", compile_seconds=120))
        job = pi.engine.submit(JobType.COMPILE, str(cfg))
        served = await remote_job(desk, job.id, JobStatus.RUNNING)
        await desk.mesh.stop()
        await desk.engine.stop()
        assert desk.engine.get(served.id).status is JobStatus.QUEUED  # interrupted
        again = await start_node(tmp_path, "desk", offload=False)
        try:
            orphan = again.engine.get(served.id)
            assert orphan.status is JobStatus.CANCELLED
            log = "\n".join(again.engine.logs.read_lines(served.id))
            assert "receiver restarted" in log
        finally:
            await again.mesh.stop()
            await again.engine.stop()
    finally:
        await pi.mesh.stop()
        await pi.engine.stop()
    await assert_no_mesh_tasks_left()


async def test_a_compile_whose_session_breaks_under_a_send_is_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver woken from a freeze may first learn of the lost session from a failed
    send (its forwarder's), not from the session's end: the compile is dropped all the
    same, while the session itself still looks open here."""
    pi = await start_node(tmp_path, "pi", receiver=False, include_local=False)
    desk = await start_node(tmp_path, "desk", offload=False)
    try:
        trust(pi, desk)
        await pi.wait_peer(desk.fingerprint, connected=True, idle=True)
        job = pi.engine.submit(JobType.COMPILE, str(slow_to_die(tmp_path)))
        served = await remote_job(desk, job.id, JobStatus.RUNNING)
        session = desk.mesh.connections.session_for(pi.fingerprint)
        assert session is not None

        async def reset(_message: object) -> None:
            raise LinkClosed("connection lost: Connection lost", by_peer=True)

        monkeypatch.setattr(session, "send", reset)
        desk.engine.bus.publish(JobOutput(served.snapshot(), "a line for the offloader"))
        ended = await remote_job(desk, job.id, JobStatus.CANCELLED)
        assert "offloader disconnected" in "\n".join(desk.engine.logs.read_lines(ended.id))
        assert not session.closed  # the session's own end did not do it
    finally:
        await pi.mesh.stop()
        await desk.mesh.stop()
        await pi.engine.stop()
        await desk.engine.stop()
