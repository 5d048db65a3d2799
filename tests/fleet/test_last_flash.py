"""The daemon's hook for ``meshd devices``: the engine's last completed upload of a
configuration, as the fleet shows it (``flashed_build`` in meshd/daemon.py)."""

from __future__ import annotations

from pathlib import Path

from meshd.daemon import flashed_build
from meshd.fleet.state import FlashedBuild
from meshd.jobs.build import LOCAL_BUILDER, ArtifactSum, BuildProvenance, JobBuild
from meshd.jobs.engine import Engine
from meshd.jobs.model import Job, JobStatus, JobType

PROVENANCE = BuildProvenance(
    receiver="ab" * 32,
    offloader="cd" * 32,
    job_id="3f9c0a1b2d4e",
    bundle="01" * 32,
    esphome_version="2026.6.5",
    platform="HOST",
    artifacts=(ArtifactSum("build/program", "app", "aa" * 32),),
    signed_at=1.0,
    record="89",
    signature="11" * 64,
    receiver_key="22" * 32,
)


def test_flashed_build_reads_the_upload_and_its_record(tmp_path: Path) -> None:
    engine = Engine(tmp_path, {})
    try:
        remote = JobBuild("2026.6.5", "desktop", "ab" * 32, "HOST", PROVENANCE)
        engine.store.save(
            Job(JobType.UPLOAD, "/c/a.yaml", seq=1, status=JobStatus.COMPLETED, build=remote)
        )
        local = Job(
            JobType.UPLOAD,
            "/c/b.yaml",
            seq=2,
            status=JobStatus.COMPLETED,
            build=JobBuild("2026.5.2", LOCAL_BUILDER),
        )
        plain = Job(JobType.UPLOAD, "/c/c.yaml", seq=3, status=JobStatus.COMPLETED)
        engine.store.save(local)
        engine.store.save(plain)
        [first] = [j for j in engine.jobs() if j.configuration == "/c/a.yaml"]
        assert flashed_build(engine, "/c/a.yaml") == FlashedBuild(
            first.id, "2026.6.5", "desktop", True
        )
        assert flashed_build(engine, "/c/b.yaml") == FlashedBuild(
            local.id, "2026.5.2", LOCAL_BUILDER, None
        )
        assert flashed_build(engine, "/c/c.yaml") == FlashedBuild(plain.id, None)
        assert flashed_build(engine, "/c/none.yaml") is None
    finally:
        engine.store.close()
