"""Remote compiles between in-process nodes on loopback (stand-in esphome)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.jobs.model import Job, JobStatus, JobType, LaneName
from meshd.jobs.placement import ReasonCode
from meshd.link.messages import CompileReject, CompileRequest
from tests.mesh.nodes import Node, host_yaml, start_node, stop_node, trust

# Every status a job can end in: wait for the end, then assert which.
ENDED = tuple(status for status in JobStatus if status.terminal)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """A Pi-like offloader (no receiver) and a desktop receiver, trusted both ways."""
    pi = await start_node(tmp_path, "pi", receiver=False, include_local=False)
    desktop = await start_node(tmp_path, "desktop", offload=False)
    try:
        trust(pi, desktop)
        await pi.wait_peer(desktop.fingerprint, connected=True, idle=True)
        yield pi, desktop
    finally:
        await stop_node(pi)
        await stop_node(desktop)


def config(tmp_path: Path, name: str = "kitchen", **kw: object) -> Path:
    path = tmp_path / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(host_yaml(name, **kw))  # type: ignore[arg-type]
    return path


async def test_install_compiles_remotely_and_flashes_locally(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, desktop = pair
    cfg = config(tmp_path)
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
    done = await pi.wait_status(upload_job.id, *ENDED)
    assert done.status is JobStatus.COMPLETED, pi.engine.get(compile_job.id).error
    compiled = pi.engine.get(compile_job.id)
    assert compiled.runner == desktop.fingerprint
    assert compiled.reason_code == ReasonCode.IDLE_RECEIVER
    # The receiver ran it as its own job, tagged with the offloader, and never re-offloads it.
    remote = desktop.engine.jobs_where(lambda j: j.options.remote_job == compile_job.id)
    assert len(remote) == 1 and remote[0].status is JobStatus.COMPLETED
    assert remote[0].options.offloader == pi.fingerprint
    assert remote[0].options.offloader_name == "pi" and remote[0].options.force_local
    # The flash ran on the Pi, with the firmware the desktop built.
    built = Path(remote[0].configuration).parent / ".esphome/build/kitchen/.pioenvs/kitchen/program"
    flashed = pi.uploads(cfg)
    assert len(flashed) == 1 and flashed[0]["device"] == "192.0.2.10"
    assert flashed[0]["sha256"] == hashlib.sha256(built.read_bytes()).hexdigest()
    assert str(tmp_path / "desktop") not in flashed[0]["firmware"]
    log = "\n".join(pi.engine.logs.read_lines(compile_job.id))
    assert "receiver accepted the compile" in log and "artifacts" in log


async def test_second_compile_sends_only_what_changed(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, _desktop = pair
    cfg = config(tmp_path)
    (cfg.parent / "secrets.yaml").write_text("wifi_password: hunter2\n")
    first = pi.engine.submit(JobType.COMPILE, str(cfg))
    assert (await pi.wait_status(first.id, *ENDED)).status is JobStatus.COMPLETED
    cfg.write_text(cfg.read_text() + "# edited\n")
    second = pi.engine.submit(JobType.COMPILE, str(cfg))
    assert (await pi.wait_status(second.id, *ENDED)).status is JobStatus.COMPLETED
    first_log = "\n".join(pi.engine.logs.read_lines(first.id))
    second_log = "\n".join(pi.engine.logs.read_lines(second.id))
    assert "sent 3 of 3 bundle files" in first_log  # manifest, YAML, secrets
    assert "sent 2 of 3 bundle files" in second_log  # manifest and the edited YAML


async def test_cancel_during_remote_compile_cancels_there_and_never_flashes(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, desktop = pair
    cfg = config(tmp_path, compile_seconds=30)
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")

    def remote_running() -> list[object]:
        return desktop.engine.jobs_where(
            lambda j: j.options.remote_job == compile_job.id and j.status is JobStatus.RUNNING
        )

    async with asyncio.timeout(60):
        while not remote_running():
            await asyncio.sleep(0.02)
    await pi.engine.cancel(compile_job.id)
    assert pi.engine.get(upload_job.id).status is JobStatus.CANCELLED
    remote_id = desktop.engine.jobs_where(lambda j: j.options.remote_job == compile_job.id)[0].id
    assert (await desktop.wait_status(remote_id, *ENDED)).status is JobStatus.CANCELLED
    assert pi.uploads(cfg) == []


async def test_compile_error_on_the_receiver_is_a_normal_failure(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, desktop = pair
    cfg = tmp_path / "configs" / "broken.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("# standin: compile_fail=1\n" + host_yaml("broken"))
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
    failed = await pi.wait_status(compile_job.id, *ENDED)
    assert failed.status is JobStatus.FAILED and failed.runner == desktop.fingerprint
    assert "reroute" not in "\n".join(pi.engine.logs.read_lines(compile_job.id)).lower()
    assert (await pi.wait_status(upload_job.id, *ENDED)).status is JobStatus.CANCELLED


async def test_receiver_lane_status_reaches_the_offloader(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, desktop = pair
    before = await pi.wait_peer(desktop.fingerprint, idle=True)
    job = desktop.engine.submit(JobType.COMPILE, str(config(tmp_path, compile_seconds=1)))
    await pi.wait_peer(desktop.fingerprint, idle=False)
    await desktop.wait_status(job.id, JobStatus.COMPLETED)
    after = await pi.wait_peer(desktop.fingerprint, idle=True)
    assert after["idle_since"] > before["idle_since"]  # type: ignore[operator]
    assert after["esphome_version"] == "2026.6.5" and after["name"] == "desktop"


async def test_receiver_refuses_unsafe_bundles_with_a_reason(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, desktop = pair
    session = pi.mesh.connections.session_for(desktop.fingerprint)
    assert session is not None
    evil = json.dumps(
        {"config": "x.yaml", "files": [{"path": "../../x.yaml", "digest": "a" * 64, "size": 1}]}
    ).encode()
    digest = pi.mesh.store.put_bytes(evil)
    await pi.mesh.blobs.push(session, [digest])
    answer = await session.request(
        CompileRequest("abcdef123456", "x.yaml", "2026.6.5", bytes.fromhex(digest), len(evil))
    )
    assert isinstance(answer, CompileReject)
    assert answer.reason == "invalid" and "escapes" in answer.message
    assert not any(desktop.engine.jobs())


async def test_untrusted_offloader_gets_no_work_done(tmp_path: Path) -> None:
    pi = await start_node(tmp_path, "pi", receiver=False)
    desktop = await start_node(tmp_path, "desktop", offload=False)
    try:
        # The desktop trusts the Pi only as a builder for it, not to send work.
        trust(pi, desktop)
        desktop.mesh.trust_peer(pi.fingerprint, may_send_work=False, may_build_for_me=True)
        desktop.mesh.untrust_peer(pi.fingerprint)
        desktop.mesh.trust_peer(pi.fingerprint, may_send_work=False, may_build_for_me=True)
        await pi.wait_peer(desktop.fingerprint, connected=True)
        session = pi.mesh.connections.session_for(desktop.fingerprint)
        assert session is not None
        answer = await session.request(
            CompileRequest("abcdef123456", "x.yaml", "2026.6.5", b"\0" * 32, 10)
        )
        assert isinstance(answer, CompileReject) and answer.reason == "forbidden"
    finally:
        await stop_node(pi)
        await stop_node(desktop)


async def test_lost_receiver_reroutes_to_another(tmp_path: Path) -> None:
    pi = await start_node(tmp_path, "pi", receiver=False, include_local=False)
    first = await start_node(tmp_path, "first", offload=False)
    second = await start_node(tmp_path, "second", offload=False)
    try:
        trust(pi, first)
        await pi.wait_peer(first.fingerprint, connected=True, idle=True)
        trust(pi, second)  # idle later than `first`: `first` is picked
        await pi.wait_peer(second.fingerprint, connected=True, idle=True)
        cfg = config(tmp_path, compile_seconds=30)
        compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
        job = await pi.wait_status(compile_job.id, JobStatus.RUNNING)
        assert job.runner == first.fingerprint
        async with asyncio.timeout(60):
            while not first.engine.jobs_where(lambda j: j.status is JobStatus.RUNNING):
                await asyncio.sleep(0.02)
        cfg.write_text(host_yaml("kitchen", compile_seconds=0.2))  # faster the second time
        await stop_node(first)  # gone mid-build
        done = await pi.wait_status(upload_job.id, *ENDED)
        assert done.status is JobStatus.COMPLETED
        rerouted = pi.engine.get(compile_job.id)
        assert rerouted.runner == second.fingerprint
        assert rerouted.options.excluded_receivers == (first.fingerprint,)
        assert rerouted.options.reroutes == 1 and not rerouted.options.force_local
        log = "\n".join(pi.engine.logs.read_lines(compile_job.id))
        assert "re-routing (attempt 1)" in log
        assert pi.engine.lane_status(LaneName.COMPILE).idle
    finally:
        await stop_node(pi)
        for node in (first, second):
            if not node.mesh.server._closing:
                await stop_node(node)


@pytest.mark.parametrize("trigger", ["supersede", "clean", "reset"])
async def test_supersede_clean_and_reset_cancel_an_offloaded_compile_there(
    pair: tuple[Node, Node], tmp_path: Path, trigger: str
) -> None:
    pi, desk = pair
    cfg = config(tmp_path, compile_seconds=30)
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")

    def remote_of(job_id: str) -> list[Job]:
        return desk.engine.jobs_where(lambda j: j.options.remote_job == job_id)

    async with asyncio.timeout(60):
        while not [j for j in remote_of(compile_job.id) if j.status is JobStatus.RUNNING]:
            await asyncio.sleep(0.02)
    if trigger == "supersede":
        newer = pi.engine.submit(JobType.COMPILE, str(cfg))
    elif trigger == "clean":
        newer = pi.engine.submit(JobType.CLEAN, str(cfg))
    else:
        newer = pi.engine.submit(JobType.RESET_BUILD_ENV, str(cfg.parent))
    assert (await pi.wait_status(compile_job.id, *ENDED)).status is JobStatus.CANCELLED
    assert pi.engine.get(upload_job.id).status is JobStatus.CANCELLED
    (remote,) = remote_of(compile_job.id)
    assert (await desk.wait_status(remote.id, *ENDED)).status is JobStatus.CANCELLED
    if trigger == "supersede":
        cfg.write_text(host_yaml("kitchen", compile_seconds=0.2))
    await pi.engine.cancel(newer.id)  # a 30 s compile need not run to the end here
    assert pi.uploads(cfg) == []
