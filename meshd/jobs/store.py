"""Durable job records in SQLite.

Each write commits before it returns, so the engine can announce an event only after
the state it describes would survive a crash (WAL with ``synchronous=FULL``: a job
rate of a few per minute makes the fsync cost irrelevant, and losing a completed
status on power loss would re-flash a device).

The trust store and settings live in other tables of the same file, each owned by
its own module and connection (all opened by :func:`meshd.db.connect`); this module
touches only ``jobs`` and ``job_processes``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meshd.db import connect
from meshd.jobs.model import Job

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL,
    type          TEXT NOT NULL,
    status        TEXT NOT NULL,
    configuration TEXT NOT NULL,
    device        TEXT,
    depends_on    TEXT,
    args          TEXT NOT NULL DEFAULT '{}',
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    error         TEXT,
    runner        TEXT,
    reason        TEXT,
    progress      REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS job_processes (
    pgid     INTEGER PRIMARY KEY,
    job_id   TEXT NOT NULL,
    identity TEXT NOT NULL
);
"""

_COLUMNS = (
    "id",
    "seq",
    "type",
    "status",
    "configuration",
    "device",
    "depends_on",
    "args",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "runner",
    "reason",
    "progress",
)


class JobStore:
    """Upserts and loads whole job rows; no query logic lives here on purpose."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def save(self, job: Job) -> None:
        row = (
            job.id,
            job.seq,
            job.type.value,
            job.status.value,
            job.configuration,
            job.device,
            job.depends_on,
            json.dumps(job.args, sort_keys=True),
            job.created_at,
            job.started_at,
            job.finished_at,
            job.error,
            job.runner,
            job.reason,
            job.progress,
        )
        placeholders = ",".join("?" * len(_COLUMNS))
        self._conn.execute(
            f"INSERT OR REPLACE INTO jobs ({','.join(_COLUMNS)}) VALUES ({placeholders})",  # noqa: S608 - column names are constants
            row,
        )

    def save_many(self, jobs: list[Job]) -> None:
        """Commit several rows atomically (a chain is created whole or not at all)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for job in jobs:
                self.save(job)
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def get(self, job_id: str) -> Job | None:
        row = self._conn.execute(
            f"SELECT {','.join(_COLUMNS)} FROM jobs WHERE id = ?",  # noqa: S608 - constants
            (job_id,),
        ).fetchone()
        return _row_to_job(row) if row is not None else None

    def load_all(self) -> list[Job]:
        cur = self._conn.execute(f"SELECT {','.join(_COLUMNS)} FROM jobs")  # noqa: S608
        return [_row_to_job(row) for row in cur.fetchall()]

    # Process groups of running jobs (see meshd.jobs.orphans).

    def record_process(self, job_id: str, pgid: int, identity: str) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO job_processes (pgid, job_id, identity) VALUES (?, ?, ?)",
            (pgid, job_id, identity),
        )

    def forget_processes(self, job_id: str) -> None:
        self._conn.execute("DELETE FROM job_processes WHERE job_id = ?", (job_id,))

    def take_processes(self) -> list[tuple[str, int, str]]:
        """All recorded groups as (job_id, pgid, identity), clearing the table."""
        rows = self._conn.execute("SELECT job_id, pgid, identity FROM job_processes").fetchall()
        self._conn.execute("DELETE FROM job_processes")
        return [(str(j), int(p), str(i)) for j, p, i in rows]


def _row_to_job(row: tuple[Any, ...]) -> Job:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["args"] = json.loads(data["args"])
    return Job.from_dict(data)
