"""Every table of meshd.db is opened the same way (meshd.db.connect), so no connection
weakens another's durability promise."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.db import BUSY_TIMEOUT_MS, database_path
from meshd.jobs.model import Job, JobType
from meshd.jobs.store import JobStore
from meshd.mesh.security.trust import TrustStore
from tests.support.fingerprints import random_fingerprint

FULL = 2  # PRAGMA synchronous answers with a number


def _settings(conn: sqlite3.Connection) -> tuple[str, int, int]:
    return (
        conn.execute("PRAGMA journal_mode").fetchone()[0],
        conn.execute("PRAGMA synchronous").fetchone()[0],
        conn.execute("PRAGMA busy_timeout").fetchone()[0],
    )


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[JobStore, TrustStore]]:
    jobs = JobStore(database_path(tmp_path))
    trust = TrustStore.open(tmp_path)
    yield jobs, trust
    trust.close()
    jobs.close()


def test_both_stores_open_the_one_file_with_the_same_settings(
    stores: tuple[JobStore, TrustStore],
) -> None:
    jobs, trust = stores
    assert jobs.path == trust.path
    for conn in (jobs._conn, trust._db):
        assert _settings(conn) == ("wal", FULL, BUSY_TIMEOUT_MS)


def test_both_stores_write_side_by_side(stores: tuple[JobStore, TrustStore]) -> None:
    jobs, trust = stores
    job = Job(type=JobType.COMPILE, configuration="/c/a.yaml")
    jobs.save(job)
    peer = trust.add(random_fingerprint(), name="desk")
    assert [j.id for j in jobs.load_all()] == [job.id]
    assert trust.get(peer.fingerprint) == peer
