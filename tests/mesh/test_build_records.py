"""Jobs record what built them: between in-process nodes, and for local builds.

A remote compile keeps the receiver's verified provenance (and its raw bytes, which
verify again later); the upload that flashes it shows the same record; a local build
records the esphome its runner really ran.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshd.jobs.build import LOCAL_BUILDER, JobBuild
from meshd.jobs.model import JobStatus, JobType
from meshd.jobs.options import JobOptions
from meshd.mesh.security.provenance import ArtifactDigest, ExpectedJob, verify
from meshd.toolchain.versions import PipOptions, ToolchainStore
from meshd.version_policy import VersionPolicy
from tests.mesh.nodes import STANDIN, Node, host_yaml, start_node, stop_node, trust
from tests.support.standin_wheel import build_standin_wheel

A = "2026.6.5"
B = "2026.5.2"
ENDED = tuple(status for status in JobStatus if status.terminal)


def config(tmp_path: Path, name: str = "kitchen") -> Path:
    path = tmp_path / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(host_yaml(name))
    return path


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    # Both on A: the offloader requires exactly its own version and gets it.
    pi = await start_node(
        tmp_path, "pi", receiver=False, include_local=False, version=A, policy=VersionPolicy.EXACT
    )
    desktop = await start_node(tmp_path, "desktop", offload=False, version=A)
    try:
        trust(pi, desktop)
        await pi.wait_peer(desktop.fingerprint, connected=True, idle=True)
        yield pi, desktop
    finally:
        await stop_node(pi)
        await stop_node(desktop)


async def test_a_remote_compile_records_the_verified_provenance_of_what_it_stored(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, desktop = pair
    cfg = config(tmp_path)
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
    done = await pi.wait_status(upload_job.id, *ENDED)
    assert done.status is JobStatus.COMPLETED, pi.engine.get(compile_job.id).error
    # Read back from SQLite (a terminal job is no longer in memory): it survived a save.
    compiled = pi.engine.store.get(compile_job.id)
    assert compiled is not None
    build = compiled.build
    assert isinstance(build, JobBuild)
    assert build.esphome_version == A
    assert build.builder == "desktop"
    assert build.builder_fingerprint == desktop.fingerprint
    assert build.platform == "HOST"
    prov = build.provenance
    assert prov is not None and prov.verified
    assert prov.receiver == desktop.fingerprint
    assert prov.receiver_key == desktop.mesh.identity.public_key.hex()
    assert prov.offloader == pi.fingerprint
    assert prov.job_id == compile_job.id
    assert prov.esphome_version == A and prov.platform == "HOST"
    # Every signed digest is the digest of what the offloader stored: the blob in its
    # content store, and (for a file written as served) the file esphome upload reads.
    assert prov.artifacts
    roles = {a.role for a in prov.artifacts}
    assert roles == {"app", "storage", "validated_config", "build_info"}
    data_dir = cfg.parent / ".esphome"
    compared_on_disk = 0
    for artifact in prov.artifacts:
        blob = pi.mesh.blobs.store.path(artifact.sha256)
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == artifact.sha256
        on_disk = data_dir / artifact.path
        if artifact.role != "storage":  # the storage record is rewritten to our paths
            assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == artifact.sha256
            compared_on_disk += 1
    assert compared_on_disk >= 1
    # The raw record and signature verify again, later, with the receiver's key.
    again = verify(
        bytes.fromhex(prov.record),
        bytes.fromhex(prov.signature),
        bytes.fromhex(prov.receiver_key),
        ExpectedJob(pi.mesh.identity.fingerprint, compile_job.id, bytes.fromhex(prov.bundle), A),
        [ArtifactDigest(a.path, a.role, bytes.fromhex(a.sha256)) for a in prov.artifacts],
    )
    assert again.time_ms / 1000 == prov.signed_at
    # The upload shows the record of the compile it flashed, in the API's JSON too.
    flashed = pi.engine.get(upload_job.id)
    assert flashed.build == build
    shown = flashed.to_dict()["build"]
    assert shown["where"] == "remote" and shown["verified"] is True
    assert shown["esphome_version"] == A and shown["builder"] == "desktop"
    assert shown["provenance"]["artifacts"][0]["sha256"] == prov.artifacts[0].sha256
    assert pi.engine.last_flashed(str(cfg)) == flashed
    # The receiver's own copy is a local build there, with its own esphome.
    [remote] = desktop.engine.jobs_where(lambda j: j.options.remote_job == compile_job.id)
    assert remote.build == JobBuild(esphome_version=A, builder=LOCAL_BUILDER, platform="HOST")


async def test_a_local_compile_records_the_nodes_own_esphome(tmp_path: Path) -> None:
    node = await start_node(tmp_path, "solo", receiver=False, offload=False, version=B)
    try:
        job = node.engine.submit(JobType.COMPILE, str(config(tmp_path)))
        done = await node.wait_status(job.id, *ENDED)
        assert done.status is JobStatus.COMPLETED, done.error
        stored = node.engine.store.get(job.id)
        assert stored is not None
        assert stored.build == JobBuild(esphome_version=B, builder=LOCAL_BUILDER, platform="HOST")
        assert stored.to_dict()["build"]["where"] == "local"
        assert stored.to_dict()["build"]["provenance"] is None
    finally:
        await stop_node(node)


async def test_a_failed_compile_records_no_build(tmp_path: Path) -> None:
    node = await start_node(tmp_path, "solo", receiver=False, offload=False, version=B)
    try:
        cfg = tmp_path / "configs" / "broken.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text("# standin: compile_fail=1\n" + host_yaml("broken"))
        job = node.engine.submit(JobType.COMPILE, str(cfg))
        done = await node.wait_status(job.id, *ENDED)
        assert done.status is JobStatus.FAILED
        stored = node.engine.store.get(job.id)
        assert stored is not None and stored.build is None
    finally:
        await stop_node(node)


@pytest.mark.slow
async def test_a_local_compile_pinned_to_another_esphome_records_that_version(
    tmp_path: Path,
) -> None:
    house = tmp_path / "wheelhouse"
    build_standin_wheel(house, A, delegate=STANDIN)
    store = ToolchainStore(tmp_path / "solo", pip=PipOptions(find_links=(str(house),)))
    node = await start_node(tmp_path, "solo", receiver=False, offload=False, version=B, store=store)
    try:
        cfg = config(tmp_path)
        job = node.engine.submit(JobType.COMPILE, str(cfg), options=JobOptions(esphome_version=A))
        done = await node.wait_status(job.id, *ENDED)
        assert done.status is JobStatus.COMPLETED, done.error
        stored = node.engine.store.get(job.id)
        assert stored is not None
        assert stored.build == JobBuild(esphome_version=A, builder=LOCAL_BUILDER, platform="HOST")
        assert store.ready_versions() == [A]
    finally:
        await stop_node(node)
