"""Durable job records in SQLite.

Each write commits before it returns, so the engine can announce an event only after
the state it describes would survive a crash (WAL with ``synchronous=FULL``: a job
rate of a few per minute makes the fsync cost irrelevant, and losing a completed
status on power loss would re-flash a device).

The trust store and settings live in other tables of the same file, each owned by
its own module and connection; this module touches only ``jobs``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from pathlib import Path
from typing import Any

from meshd.jobs.model import Job
from meshd.jobs.options import JobOptions

DB_FILENAME = "meshd.db"

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
    progress      REAL,
    reason_code   TEXT,
    waiting       TEXT,
    waiting_since REAL,
    waiting_until REAL
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
    "reason_code",
    "waiting",
    "waiting_since",
    "waiting_until",
)

# Columns added after the first release, with their type: a database an older meshd
# created gets them on open (``ALTER TABLE ... ADD COLUMN`` keeps every row).
_ADDED_COLUMNS = {
    "reason_code": "TEXT",
    "waiting": "TEXT",
    "waiting_since": "REAL",
    "waiting_until": "REAL",
}

# Created after the added columns exist. ``seq`` orders every page and every prune;
# ``(status, seq)`` serves a page filtered by status; ``depends_on`` the prune's check
# that no active job still needs a row.
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_depends_on ON jobs(depends_on);
"""

_ACTIVE = ("queued", "running")
_TERMINAL = ("completed", "failed", "cancelled")
_SELECT = f"SELECT {','.join(_COLUMNS)} FROM jobs"  # noqa: S608 - column names are constants


def connect(path: Path) -> sqlite3.Connection:
    """Open the shared database file with the settings every meshd table relies on."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class JobStore:
    """Upserts and loads whole job rows; the rules live in the engine, not in queries.

    Every read is keyed (an id, the active rows, one page by ``seq``), so nothing the
    daemon does while running loads the whole history.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        self._conn.executescript(_INDEXES)

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
            job.options.to_json(),
            job.created_at,
            job.started_at,
            job.finished_at,
            job.error,
            job.runner,
            job.reason,
            job.progress,
            job.reason_code,
            job.waiting,
            job.waiting_since,
            job.waiting_until,
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
        row = self._conn.execute(f"{_SELECT} WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row is not None else None

    def load_all(self) -> list[Job]:
        """Every row (tests and tools; the daemon reads pages and active rows only)."""
        cur = self._conn.execute(_SELECT)
        return [_row_to_job(row) for row in cur.fetchall()]

    def load_active(self) -> list[Job]:
        """Queued and running rows, plus every row one of them depends on (for restore)."""
        marks = _marks(_ACTIVE)
        rows = self._conn.execute(
            f"{_SELECT} WHERE status IN ({marks}) OR id IN "  # noqa: S608 - constants
            f"(SELECT depends_on FROM jobs WHERE status IN ({marks}) AND depends_on IS NOT NULL)",
            (*_ACTIVE, *_ACTIVE),
        ).fetchall()
        return [_row_to_job(row) for row in rows]

    def max_seq(self) -> int:
        row = self._conn.execute("SELECT MAX(seq) FROM jobs").fetchone()
        return int(row[0] or 0)

    def page(
        self, *, limit: int, before: int | None = None, statuses: Collection[str] | None = None
    ) -> list[Job]:
        """The newest ``limit`` rows with ``seq < before`` (and one of ``statuses``),
        newest first: one index range scan, whatever the table holds."""
        where = ["seq < ?"]
        params: list[Any] = [before if before is not None else _NO_UPPER_BOUND]
        if statuses is not None:
            where.append(f"status IN ({_marks(statuses)})")
            params.extend(statuses)
        params.append(limit)
        rows = self._conn.execute(
            f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
            params,
        ).fetchall()
        return [_row_to_job(row) for row in rows]

    def prunable(self, *, keep: int, finished_before: float, limit: int) -> list[str]:
        """Ids of terminal jobs past the cap, oldest first, at most ``limit`` of them.

        Past the cap means: not among the newest ``keep`` terminal jobs (by ``seq``), or
        finished before ``finished_before``. A row an active job depends on is never
        listed: restore would otherwise cancel that job for a missing prerequisite.
        """
        terminal = _marks(_TERMINAL)
        threshold = self._conn.execute(
            f"SELECT seq FROM jobs WHERE status IN ({terminal}) "  # noqa: S608 - constants
            "ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (*_TERMINAL, keep),
        ).fetchone()
        # Rows with seq <= threshold are beyond the newest ``keep``; none if there are fewer.
        beyond = int(threshold[0]) if threshold is not None else -1
        rows = self._conn.execute(
            f"SELECT id FROM jobs WHERE status IN ({terminal}) "  # noqa: S608 - constants
            "AND (seq <= ? OR COALESCE(finished_at, created_at) < ?) "
            f"AND id NOT IN (SELECT depends_on FROM jobs WHERE status IN ({_marks(_ACTIVE)}) "
            "AND depends_on IS NOT NULL) ORDER BY seq LIMIT ?",
            (*_TERMINAL, beyond, finished_before, *_ACTIVE, limit),
        ).fetchall()
        return [str(row[0]) for row in rows]

    def delete(self, job_ids: Collection[str]) -> None:
        """Remove rows (one transaction); ids that do not exist are ignored."""
        if not job_ids:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

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


# Larger than any seq: "no ``before``" is then the same single range scan.
_NO_UPPER_BOUND = 2**63 - 1


def _marks(values: Collection[str]) -> str:
    return ",".join("?" * len(values))


def _row_to_job(row: tuple[Any, ...]) -> Job:
    data = dict(zip(_COLUMNS, row, strict=True))
    job = Job.from_dict({**data, "args": None})
    job.options = JobOptions.from_json(data["args"])
    return job
