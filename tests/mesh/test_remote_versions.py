"""Version-matched remote builds between in-process nodes, offline.

The offloader runs esphome A; the receiver's own esphome is B. Its toolchain store
provisions A with pip from a local wheelhouse holding a stand-in esphome wheel that
hands every command but ``version`` to the stand-in CLI, so the build really runs with
the provisioned venv and its build record says A.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.jobs.build import JobBuild
from meshd.jobs.model import JobStatus
from meshd.jobs.placement import ReasonCode
from meshd.toolchain.storage import load_storage
from meshd.toolchain.versions import PipOptions, ToolchainStore
from meshd.version_policy import VersionPolicy
from tests.mesh.nodes import STANDIN, Node, host_yaml, start_node, stop_node, trust
from tests.support.standin_wheel import build_standin_wheel

A = "2026.6.5"
B = "2026.5.2"
ENDED = tuple(status for status in JobStatus if status.terminal)


def provisioning_store(tmp_path: Path) -> ToolchainStore:
    house = tmp_path / "wheelhouse"
    build_standin_wheel(house, A, delegate=STANDIN)
    return ToolchainStore(tmp_path / "desktop", pip=PipOptions(find_links=(str(house),)))


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[tuple[Node, Node, ToolchainStore]]:
    store = provisioning_store(tmp_path)
    pi = await start_node(
        tmp_path,
        "pi",
        receiver=False,
        include_local=False,
        version=A,
        policy=VersionPolicy.PROVISION,
    )
    desktop = await start_node(tmp_path, "desktop", offload=False, version=B, store=store)
    try:
        trust(pi, desktop)
        await pi.wait_peer(desktop.fingerprint, connected=True, idle=True, provisions=True)
        yield pi, desktop, store
    finally:
        await stop_node(pi)
        await stop_node(desktop)


def config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(host_yaml(name))
    return path


@pytest.mark.slow
async def test_the_receiver_provisions_the_offloaders_version_and_builds_with_it(
    nodes: tuple[Node, Node, ToolchainStore], tmp_path: Path
) -> None:
    pi, desktop, store = nodes
    assert store.ready_versions() == []
    cfg = config(tmp_path, "kitchen")
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
    done = await pi.wait_status(upload_job.id, *ENDED)
    assert done.status is JobStatus.COMPLETED, pi.engine.get(compile_job.id).error
    compiled = pi.engine.get(compile_job.id)
    assert compiled.runner == desktop.fingerprint
    assert compiled.reason_code == ReasonCode.IDLE_PROVISIONING_RECEIVER
    # The receiver's copy was pinned to A and built by the provisioned toolchain.
    [remote] = desktop.engine.jobs_where(lambda j: j.options.remote_job == compile_job.id)
    assert remote.options.esphome_version == A
    remote_log = "\n".join(desktop.engine.logs.read_lines(remote.id))
    assert f"pip install esphome=={A}" in remote_log  # provisioning shows in the job log
    assert f"building with esphome {A} from {store.path(A)}" in remote_log
    assert load_storage(Path(remote.configuration)).esphome_version == A
    assert store.ready_versions() == [A]
    # The offloader verified a provenance naming A (policy provision requires it) and
    # its materialised build record says A too.
    log = "\n".join(pi.engine.logs.read_lines(compile_job.id))
    assert f"build provenance verified: built by {desktop.mesh.identity.short} " in log
    assert f"with esphome {A} for HOST" in log
    assert load_storage(cfg).esphome_version == A
    # The job keeps it: built by the receiver with A, its signed provenance verified.
    assert isinstance(compiled.build, JobBuild)
    assert compiled.build.esphome_version == A
    assert compiled.build.builder_fingerprint == desktop.fingerprint
    assert compiled.build.provenance is not None and compiled.build.provenance.verified
    assert compiled.build.provenance.esphome_version == A
    assert pi.engine.get(upload_job.id).build == compiled.build
    # ...and the receiver's own copy records the provisioned toolchain it ran.
    assert isinstance(remote.build, JobBuild) and remote.build.esphome_version == A
    # The receiver now advertises A as ready; a second build goes there without pip.
    await pi.wait_peer(desktop.fingerprint, toolchains=[A])
    again, again_upload = pi.engine.install(str(config(tmp_path, "porch")), "192.0.2.11")
    assert (await pi.wait_status(again_upload.id, *ENDED)).status is JobStatus.COMPLETED
    assert pi.engine.get(again.id).reason_code == ReasonCode.IDLE_RECEIVER
    [second] = desktop.engine.jobs_where(lambda j: j.options.remote_job == again.id)
    second_log = "\n".join(desktop.engine.logs.read_lines(second.id))
    assert f"pip install esphome=={A}" not in second_log
    assert f"building with esphome {A}" in second_log


async def test_under_release_a_receiver_on_another_release_is_skipped(tmp_path: Path) -> None:
    store = provisioning_store(tmp_path)
    pi = await start_node(tmp_path, "pi", receiver=False, version=A, policy=VersionPolicy.RELEASE)
    desktop = await start_node(tmp_path, "desktop", offload=False, version=B, store=store)
    try:
        trust(pi, desktop)
        await pi.wait_peer(desktop.fingerprint, connected=True, idle=True, provisions=True)
        cfg = config(tmp_path, "kitchen")
        compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
        assert (await pi.wait_status(upload_job.id, *ENDED)).status is JobStatus.COMPLETED
        job = pi.engine.get(compile_job.id)
        assert job.reason_code == ReasonCode.NO_ELIGIBLE_RECEIVER
        assert job.runner != desktop.fingerprint
        assert not any(desktop.engine.jobs())
        assert store.ready_versions() == []
    finally:
        await stop_node(pi)
        await stop_node(desktop)


async def test_a_receiver_that_cannot_provision_is_rerouted_and_local_is_the_last_resort(
    tmp_path: Path,
) -> None:
    house = tmp_path / "wheelhouse"
    build_standin_wheel(house, "2020.1.1")  # not the version asked for: pip finds nothing
    store = ToolchainStore(tmp_path / "desktop", pip=PipOptions(find_links=(str(house),)))
    pi = await start_node(tmp_path, "pi", receiver=False, version=A, policy=VersionPolicy.PROVISION)
    desktop = await start_node(tmp_path, "desktop", offload=False, version=B, store=store)
    try:
        trust(pi, desktop)
        await pi.wait_peer(desktop.fingerprint, connected=True, idle=True, provisions=True)
        cfg = config(tmp_path, "kitchen")
        compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
        done = await pi.wait_status(upload_job.id, *ENDED)
        assert done.status is JobStatus.COMPLETED, pi.engine.get(compile_job.id).error
        job = pi.engine.get(compile_job.id)
        assert job.runner == "local"
        assert job.options.excluded_receivers == (desktop.fingerprint,)
        log = "\n".join(pi.engine.logs.read_lines(compile_job.id))
        assert f"re-routing (attempt 1): receiver failed: cannot provision esphome {A}" in log
        [remote] = desktop.engine.jobs_where(lambda j: j.options.remote_job == compile_job.id)
        assert remote.status is JobStatus.FAILED
        assert store.ready_versions() == []
    finally:
        await stop_node(pi)
        await stop_node(desktop)
