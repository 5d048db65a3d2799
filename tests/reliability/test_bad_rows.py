"""Rows that cannot be read are quarantined with a reason; the rest load.

The job store and the trust store, each given every kind of bad row a hand edit, a
disk fault or an older version could leave: unknown type or status, bad JSON, a
missing value, a missing column, mistyped values.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from meshd.db import DB_FILENAME
from meshd.jobs.model import Job, JobStatus, JobType
from meshd.jobs.store import JobStore
from meshd.mesh.security.identity import Identity
from meshd.mesh.security.trust import Permission, TrustStore

GOOD = 3


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def _store_with_good_jobs(tmp_path: Path) -> tuple[Path, list[Job]]:
    path = tmp_path / DB_FILENAME
    store = JobStore(path)
    jobs = [Job(JobType.COMPILE, f"/cfg/dev{i}.yaml", seq=i) for i in range(GOOD)]
    for job in jobs:
        store.save(job)
    store.close()
    return path, jobs


BAD_ROWS = {
    "unknown type": {"type": "teleport"},
    "unknown status": {"status": "exploded"},
    "bad JSON args": {"args": "{not json"},
    "args not an object": {"args": "[1, 2]"},
    "empty configuration": {"configuration": ""},
    "created_at as text": {"created_at": "yesterday"},
    "seq as text": {"seq": "first"},
    "device as a blob": {"device": b"\x00\xff"},
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_job_row_is_quarantined_and_the_rest_load(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    path, good = _store_with_good_jobs(tmp_path)
    with _db(path) as db:
        db.execute(
            "INSERT INTO jobs (id, seq, type, status, configuration, args, created_at)"
            " VALUES ('bad1', 99, 'compile', 'queued', '/cfg/x.yaml', '{}', 1.0)"
        )
        for column, value in BAD_ROWS[case].items():
            db.execute(f"UPDATE jobs SET {column} = ? WHERE id = 'bad1'", (value,))
    store = JobStore(path)
    with caplog.at_level(logging.WARNING, logger="meshd.jobs.store"):
        loaded = store.load_all()
    assert sorted(j.id for j in loaded) == sorted(j.id for j in good)
    [(job_id, reason)] = store.quarantined()
    assert job_id == "bad1"
    assert reason
    assert any("bad1" in r.getMessage() and "quarantine" in r.getMessage() for r in caplog.records)
    # The row left the jobs table and its content is kept for the operator.
    with _db(path) as db:
        assert db.execute("SELECT COUNT(*) FROM jobs WHERE id = 'bad1'").fetchone()[0] == 0
        raw = json.loads(db.execute("SELECT row FROM jobs_quarantine").fetchone()[0])
    assert raw["id"] == "bad1"
    # Loading again finds nothing new to quarantine; the store keeps working.
    assert len(store.load_all()) == GOOD and len(store.quarantined()) == 1
    store.save(Job(JobType.CLEAN, "/cfg/dev0.yaml", seq=100))
    assert len(store.load_all()) == GOOD + 1
    store.close()


def test_get_of_a_bad_row_quarantines_it_and_answers_none(tmp_path: Path) -> None:
    path, good = _store_with_good_jobs(tmp_path)
    with _db(path) as db:
        db.execute("UPDATE jobs SET status = 'zombie' WHERE id = ?", (good[0].id,))
    store = JobStore(path)
    assert store.get(good[0].id) is None
    assert store.get(good[1].id) == good[1]
    assert [job_id for job_id, _ in store.quarantined()] == [good[0].id]
    store.close()


def test_a_missing_column_is_added_back_and_rows_still_load(tmp_path: Path) -> None:
    path, good = _store_with_good_jobs(tmp_path)
    with _db(path) as db:
        db.execute("ALTER TABLE jobs DROP COLUMN reason")
        db.execute("ALTER TABLE jobs DROP COLUMN progress")
    store = JobStore(path)
    loaded = {j.id: j for j in store.load_all()}
    assert set(loaded) == {j.id for j in good}
    assert all(j.reason is None and j.progress is None for j in loaded.values())
    job = loaded[good[0].id]
    job.status, job.reason, job.progress = JobStatus.RUNNING, "local compile lane", 0.5
    store.save(job)  # the columns are back, so the daemon can write again
    assert store.get(job.id) == job
    store.close()


def test_a_missing_required_column_quarantines_every_row_not_the_daemon(tmp_path: Path) -> None:
    path, _good = _store_with_good_jobs(tmp_path)
    with _db(path) as db:
        db.execute("DROP INDEX jobs_configuration_seq")  # SQLite drops no indexed column
        db.execute("ALTER TABLE jobs DROP COLUMN configuration")
    store = JobStore(path)
    assert store.load_all() == []
    assert len(store.quarantined()) == GOOD
    assert all("configuration" in reason for _, reason in store.quarantined())
    new = Job(JobType.COMPILE, "/cfg/new.yaml", seq=7)
    store.save(new)
    assert store.load_all() == [new]
    store.close()


# -- the trust store ------------------------------------------------------------------------


def _trust_with(tmp_path: Path, peers: int = 2) -> tuple[Path, list[Identity]]:
    identities = [Identity.generate() for _ in range(peers)]
    with TrustStore.open(tmp_path) as store:
        for identity in identities:
            store.add(
                identity.fingerprint,
                public_key=identity.public_key,
                name="ok",
                addresses=["10.0.0.1:6056"],
                may_send_work=True,
            )
    return tmp_path / DB_FILENAME, identities


BAD_TRUST = {
    "permission as text 'false'": ("may_build_for_me", "false"),
    "permission 2": ("may_send_work", 2),
    "addresses not JSON": ("addresses", "10.0.0.1:6056"),
    "addresses not a list": ("addresses", '{"a": 1}'),
    "fingerprint upper case": ("fingerprint", None),
    "public key of another peer": ("public_key", None),
    "added_at missing": ("added_at", "soon"),
}


@pytest.mark.parametrize("case", sorted(BAD_TRUST))
def test_bad_trust_row_is_quarantined_and_never_grants_anything(tmp_path: Path, case: str) -> None:
    path, (victim, other) = _trust_with(tmp_path)
    column, value = BAD_TRUST[case]
    if case == "fingerprint upper case":
        value = victim.fingerprint.hex().upper()
    if case == "public key of another peer":
        value = other.public_key
    with _db(path) as db:
        db.execute(
            f"UPDATE trust_peers SET {column} = ? WHERE fingerprint = ?",
            (value, victim.fingerprint.hex()),
        )
    with TrustStore.open(tmp_path) as store:
        listed = store.list()
        assert [p.fingerprint for p in listed] == [other.fingerprint.hex()]
        assert not store.is_trusted(victim.public_key)
        assert not store.is_trusted(victim.public_key, Permission.BUILD_FOR_ME)
        assert store.is_trusted(other.public_key, Permission.SEND_WORK)
        [(fingerprint, reason)] = store.quarantined()
        assert reason and (fingerprint or "").lower() == victim.fingerprint.hex()
        # Trusting it again works: the operator's fix is the ordinary command.
        store.add(victim.fingerprint, public_key=victim.public_key, may_send_work=True)
        assert store.is_trusted(victim.public_key, Permission.SEND_WORK)


def test_bad_trust_row_found_by_get_is_quarantined(tmp_path: Path) -> None:
    path, (victim, _other) = _trust_with(tmp_path)
    with _db(path) as db:
        db.execute("UPDATE trust_peers SET may_send_work = 'yes'")  # both rows
    with TrustStore.open(tmp_path) as store:
        assert store.get(victim.fingerprint) is None
        assert len(store.quarantined()) == 1
        assert store.list() == []  # the other bad row is found by list()
        assert len(store.quarantined()) == 2
