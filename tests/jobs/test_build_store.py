"""A job's build record in SQLite: it round-trips, an older table gains the column, and
a record that does not decode never costs the job (it lists, marked, and is kept)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from meshd.db import DB_FILENAME
from meshd.jobs.build import (
    LOCAL_BUILDER,
    ArtifactSum,
    BuildProvenance,
    JobBuild,
    UnreadableBuild,
)
from meshd.jobs.model import Job, JobStatus, JobType
from meshd.jobs.store import JobStore

FP = "ab12" + "cd" * 30
REMOTE = JobBuild(
    esphome_version="2026.6.5",
    builder="desktop",
    builder_fingerprint=FP,
    platform="HOST",
    provenance=BuildProvenance(
        receiver=FP,
        offloader="ef" * 32,
        job_id="3f9c0a1b2d4e",
        bundle="01" * 32,
        esphome_version="2026.6.5",
        platform="HOST",
        artifacts=(ArtifactSum(".esphome/build/kitchen/program", "app", "aa" * 32),),
        signed_at=1764633600.25,
        record="89a9" + "00" * 40,
        signature="11" * 64,
        receiver_key="22" * 32,
    ),
)


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_a_build_record_round_trips_and_shows_in_the_api_shape(tmp_path: Path) -> None:
    store = JobStore(tmp_path / DB_FILENAME)
    remote = Job(JobType.COMPILE, "/cfg/kitchen.yaml", seq=1, build=REMOTE)
    local = Job(
        JobType.COMPILE,
        "/cfg/porch.yaml",
        seq=2,
        build=JobBuild("2026.5.2", LOCAL_BUILDER, platform="ESP32S3"),
    )
    plain = Job(JobType.CLEAN, "/cfg/porch.yaml", seq=3)
    for job in (remote, local, plain):
        store.save(job)
    assert store.get(remote.id) == remote
    assert store.get(local.id) == local
    assert store.get(plain.id) == plain
    shown = remote.to_dict()["build"]
    assert shown["where"] == "remote" and shown["verified"] is True
    assert shown["builder_fingerprint"] == FP
    assert shown["provenance"]["artifacts"] == [
        {"path": ".esphome/build/kitchen/program", "role": "app", "sha256": "aa" * 32}
    ]
    assert local.to_dict()["build"]["where"] == "local"
    assert local.to_dict()["build"]["verified"] is None
    assert plain.to_dict()["build"] is None
    store.close()


CORRUPT = {
    "not JSON": "{not json",
    "not an object": "[1, 2]",
    "no format": '{"builder": "local"}',
    "builder not text": '{"v": 1, "builder": 5}',
    "provenance not an object": '{"v": 1, "builder": "x", "provenance": "yes"}',
    "signed_at not a time": (
        '{"v": 1, "builder": "x", "provenance": {"artifacts": [], "signed_at": "noon",'
        ' "verified": true}}'
    ),
    "a blob": b"\x00\xff",
    "a number": 7,
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_build_record_lists_marked_and_is_kept(tmp_path: Path, case: str) -> None:
    path = tmp_path / DB_FILENAME
    store = JobStore(path)
    good = Job(JobType.COMPILE, "/cfg/a.yaml", seq=1, build=REMOTE)
    odd = Job(JobType.UPLOAD, "/cfg/b.yaml", seq=2, status=JobStatus.COMPLETED)
    store.save(good)
    store.save(odd)
    store.close()
    with _db(path) as db:
        db.execute("UPDATE jobs SET build = ? WHERE id = ?", (CORRUPT[case], odd.id))
        # (As SQLite keeps it: a TEXT column stores the number 7 as the text '7'.)
        [(stored,)] = db.execute("SELECT build FROM jobs WHERE id = ?", (odd.id,)).fetchall()
    store = JobStore(path)
    listed = {job.id: job for job in store.page(limit=10)}
    assert set(listed) == {good.id, odd.id}
    assert store.quarantined() == []
    marker = listed[odd.id].build
    assert isinstance(marker, UnreadableBuild)
    assert marker.error
    shown = listed[odd.id].to_dict()["build"]
    assert shown["unreadable"] is True and shown["error"] == marker.error
    assert listed[good.id].build == REMOTE
    # Nothing is lost: saving the job again writes the stored value back unchanged.
    store.save(listed[odd.id])
    with _db(path) as db:
        [(kept,)] = db.execute("SELECT build FROM jobs WHERE id = ?", (odd.id,)).fetchall()
    assert kept == stored
    assert store.last_flashed("/cfg/b.yaml") == listed[odd.id]
    store.close()


def test_a_table_from_before_build_records_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    store = JobStore(path)
    old = Job(JobType.COMPILE, "/cfg/a.yaml", seq=1)
    store.save(old)
    store.close()
    with _db(path) as db:
        db.execute("DROP INDEX IF EXISTS jobs_configuration_seq")
        db.execute("ALTER TABLE jobs DROP COLUMN build")
    store = JobStore(path)
    assert store.get(old.id) == old
    old.build = REMOTE
    store.save(old)
    assert store.get(old.id) == old
    store.close()


def test_last_flashed_is_the_newest_completed_upload_of_the_configuration(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path / DB_FILENAME)
    older = Job(JobType.UPLOAD, "/cfg/a.yaml", seq=1, status=JobStatus.COMPLETED, build=REMOTE)
    newer = Job(JobType.UPLOAD, "/cfg/a.yaml", seq=2, status=JobStatus.COMPLETED)
    failed = Job(JobType.UPLOAD, "/cfg/a.yaml", seq=3, status=JobStatus.FAILED, build=REMOTE)
    compiled = Job(JobType.COMPILE, "/cfg/a.yaml", seq=4, status=JobStatus.COMPLETED)
    other = Job(JobType.UPLOAD, "/cfg/b.yaml", seq=5, status=JobStatus.COMPLETED)
    for job in (older, newer, failed, compiled, other):
        store.save(job)
    assert store.last_flashed("/cfg/a.yaml") == newer
    assert store.last_flashed("/cfg/b.yaml") == other
    assert store.last_flashed("/cfg/c.yaml") is None
    store.close()
