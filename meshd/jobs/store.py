"""Durable job records in SQLite.

Each write commits before it returns, so the engine can announce an event only after
the state it describes would survive a crash (WAL with ``synchronous=FULL``: a job
rate of a few per minute makes the fsync cost irrelevant, and losing a completed
status on power loss would re-flash a device).

The trust store and settings live in other tables of the same file, each owned by
its own module and connection (all opened by :func:`meshd.db.connect`); this module
touches only ``jobs``, ``job_processes`` and ``jobs_quarantine``.

Bad data never stops the daemon: a row that cannot be read back as a job (unknown type
or status, bad JSON, a missing or mistyped value) is moved to ``jobs_quarantine`` with
the reason, in one transaction, and logged; every other row loads. ``check_database``
(run before anything opens the file) refuses a file SQLite itself finds corrupt, with a
message that says how to recover, instead of a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from meshd.db import connect
from meshd.jobs.build import decode_build
from meshd.jobs.model import Job, JobStatus, JobType

_LOGGER = logging.getLogger(__name__)

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
    waiting_until REAL,
    build         TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS job_processes (
    pgid     INTEGER PRIMARY KEY,
    job_id   TEXT NOT NULL,
    identity TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs_quarantine (
    job_id         TEXT,
    row            TEXT NOT NULL,
    reason         TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""

# Column types for columns an older or hand-edited table lacks (added back on open, as
# nullable: a row missing a value it needs is then quarantined on load).
_COLUMN_TYPES = {
    "seq": "INTEGER",
    "created_at": "REAL",
    "started_at": "REAL",
    "waiting_since": "REAL",
    "waiting_until": "REAL",
}

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
    "build",
)

# Created after the missing columns were added. ``seq`` orders every page and every prune;
# ``(status, seq)`` serves a page filtered by status; ``depends_on`` the prune's check
# that no active job still needs a row.
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_depends_on ON jobs(depends_on);
CREATE INDEX IF NOT EXISTS jobs_configuration_seq ON jobs(configuration, seq);
"""

_ACTIVE = ("queued", "running")
_TERMINAL = ("completed", "failed", "cancelled")
_SELECT = f"SELECT rowid, {','.join(_COLUMNS)} FROM jobs"  # noqa: S608 - column names are constants


class DatabaseUnusable(Exception):
    """The database file cannot be used; the message says why and what to do."""


class DatabaseCorrupt(DatabaseUnusable):
    """The database file is damaged; the message says what was found and how to recover."""


def check_database(path: Path) -> None:
    """Run SQLite's ``PRAGMA integrity_check`` on ``path``; DatabaseCorrupt if it fails.

    A missing file is fine (it will be created). Nothing is written or repaired.
    ``DatabaseUnusable`` if the file cannot even be opened (owner, permissions).
    """
    if not path.exists():
        return
    if not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseUnusable(
            f"cannot open the database {path}: meshd may not read and write it "
            "(check its owner and permissions)"
        )
    problems: list[str]
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        problems = [str(exc)]
    if problems == ["ok"]:
        return
    lines = [
        line.strip()
        for problem in problems
        for line in problem.splitlines()
        if line.strip() and not line.startswith("***")
    ] or ["integrity check failed"]
    detail = "; ".join(line[:200] for line in lines[:3])
    if len(lines) > 3:
        detail += f" (and {len(lines) - 3} more problems)"
    raise DatabaseCorrupt(
        f"the database {path} is corrupt: {detail}. meshd did not change it. To recover, "
        f"stop meshd and keep a copy (cp {path.name} {path.name}.corrupt), then restore "
        f"it from a backup, or salvage what SQLite can still read "
        f"(sqlite3 {path.name} .recover > salvage.sql, or .dump where .recover fails; "
        f"sqlite3 {path.name}.recovered < salvage.sql; remove {path.name}-wal and "
        f"{path.name}-shm; move {path.name}.recovered to {path.name}), "
        f"or move it (and any {path.name}-wal and "
        f"{path.name}-shm beside it) away to start with an empty "
        "job history and trust store (trusted peers must then be trusted or paired again; "
        "the node's identity key is a separate file and is kept)"
    )


class JobStore:
    """Upserts and loads whole job rows; the rules live in the engine, not in queries.

    Every read is keyed (an id, the active rows, one page by ``seq``), so nothing the
    daemon does while running loads the whole history.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)
        _add_missing_columns(self._conn)
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
            job.build.to_json() if job.build is not None else None,
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
            self._conn.execute("COMMIT")
        except BaseException:
            _rollback(self._conn)
            raise

    def get(self, job_id: str) -> Job | None:
        """The job, or None if there is none (or its row had to be quarantined)."""
        row = self._conn.execute(
            f"SELECT rowid, {','.join(_COLUMNS)} FROM jobs WHERE id = ?",  # noqa: S608 - constants
            (job_id,),
        ).fetchone()
        return self._decode(row) if row is not None else None

    def load_all(self) -> list[Job]:
        """Every readable job; unreadable rows are quarantined (see the module docstring)."""
        cur = self._conn.execute(f"SELECT rowid, {','.join(_COLUMNS)} FROM jobs")  # noqa: S608
        jobs = []
        for row in cur.fetchall():
            job = self._decode(row)
            if job is not None:
                jobs.append(job)
        return jobs

    def quarantined(self) -> list[tuple[str | None, str]]:
        """(job id, reason) of every quarantined row, oldest first."""
        rows = self._conn.execute(
            "SELECT job_id, reason FROM jobs_quarantine ORDER BY quarantined_at, rowid"
        ).fetchall()
        return [(job_id, str(reason)) for job_id, reason in rows]

    def _decode(self, row: tuple[Any, ...]) -> Job | None:
        rowid, values = row[0], row[1:]
        data = dict(zip(_COLUMNS, values, strict=True))
        try:
            return _row_to_job(data)
        except (BadJobRow, ValueError, TypeError, KeyError) as exc:
            self._quarantine(rowid, data, str(exc) or type(exc).__name__)
            return None

    def _quarantine(self, rowid: int, data: Mapping[str, Any], reason: str) -> None:
        """Move one unreadable row out of ``jobs``, keeping it and the reason."""
        job_id = data.get("id") if isinstance(data.get("id"), str) else None
        raw = json.dumps({k: _jsonable(v) for k, v in data.items()}, sort_keys=True)
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "INSERT INTO jobs_quarantine (job_id, row, reason, quarantined_at)"
                " VALUES (?, ?, ?, ?)",
                (job_id, raw, reason, time.time()),
            )
            self._conn.execute("DELETE FROM jobs WHERE rowid = ?", (rowid,))
            self._conn.execute("COMMIT")
        except BaseException:
            _rollback(self._conn)
            raise
        _LOGGER.warning(
            "job %s cannot be read (%s); moved it to the jobs_quarantine table of %s, "
            "the other jobs load",
            job_id or f"row {rowid}",
            reason,
            self.path,
        )

    def load_active(self) -> list[Job]:
        """Queued and running rows, plus every row one of them depends on (for restore)."""
        marks = _marks(_ACTIVE)
        rows = self._conn.execute(
            f"{_SELECT} WHERE status IN ({marks}) OR id IN "  # noqa: S608 - constants
            f"(SELECT depends_on FROM jobs WHERE status IN ({marks}) AND depends_on IS NOT NULL)",
            (*_ACTIVE, *_ACTIVE),
        ).fetchall()
        return [job for row in rows if (job := self._decode(row)) is not None]

    def last_flashed(self, configuration: str) -> Job | None:
        """The newest completed upload of ``configuration`` (its ``build`` says what was
        flashed): one range scan of the ``(configuration, seq)`` index."""
        rows = self._conn.execute(
            f"{_SELECT} WHERE configuration = ? AND type = 'upload' AND status = 'completed' "
            "ORDER BY seq DESC LIMIT 1",
            (configuration,),
        ).fetchall()
        return next((job for row in rows if (job := self._decode(row)) is not None), None)

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
        return [job for row in rows if (job := self._decode(row)) is not None]

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


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite ends one itself on SQLITE_FULL)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class BadJobRow(ValueError):
    """A stored row that is not a job this version can run; the message says why."""


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Give an older or hand-edited ``jobs`` table every column this version writes."""
    present = {str(row[1]) for row in conn.execute("PRAGMA table_info(jobs)")}
    for name in _COLUMNS:
        if name not in present:
            kind = _COLUMN_TYPES.get(
                name, "REAL" if name in ("finished_at", "progress") else "TEXT"
            )
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
            _LOGGER.warning("the jobs table had no %s column; added it", name)


def _text(data: Mapping[str, Any], name: str, *, optional: bool = False) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value):
        raise BadJobRow(f"{name} is {value!r:.60}, not text")
    return value


def _number(data: Mapping[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadJobRow(f"{name} is {value!r:.60}, not a number")
    return float(value)


def _row_to_job(data: Mapping[str, Any]) -> Job:
    """Decode one row strictly: every value must have the type the job model expects."""
    try:
        job_type = JobType(str(data.get("type")))
    except ValueError:
        raise BadJobRow(f"unknown job type {data.get('type')!r:.60}") from None
    try:
        status = JobStatus(str(data.get("status")))
    except ValueError:
        raise BadJobRow(f"unknown job status {data.get('status')!r:.60}") from None
    seq = data.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise BadJobRow(f"seq is {seq!r:.60}, not an integer")
    raw_args = data.get("args")
    try:
        args = json.loads(raw_args) if isinstance(raw_args, str) else None
    except ValueError as exc:
        raise BadJobRow(f"args is not valid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise BadJobRow(f"args is {raw_args!r:.60}, not a JSON object")
    return Job.from_dict(
        {
            "id": _text(data, "id"),
            "seq": seq,
            "type": job_type,
            "status": status,
            "configuration": _text(data, "configuration"),
            "device": _text(data, "device", optional=True),
            "depends_on": _text(data, "depends_on", optional=True),
            "args": args,
            "created_at": _number(data, "created_at"),
            "started_at": _number(data, "started_at", optional=True),
            "finished_at": _number(data, "finished_at", optional=True),
            "error": _text(data, "error", optional=True),
            "runner": _text(data, "runner", optional=True),
            "reason": _text(data, "reason", optional=True),
            "progress": _number(data, "progress", optional=True),
            "reason_code": _text(data, "reason_code", optional=True),
            "waiting": _text(data, "waiting", optional=True),
            "waiting_since": _number(data, "waiting_since", optional=True),
            "waiting_until": _number(data, "waiting_until", optional=True),
            # Never a reason to quarantine the job: a bad record loads as a marker.
            "build": decode_build(data.get("build")),
        }
    )


def _jsonable(value: Any) -> Any:
    """A stored value as JSON can keep it (blobs as hex, the rest as their repr)."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return repr(value)


# Larger than any seq: "no ``before``" is then the same single range scan.
_NO_UPPER_BOUND = 2**63 - 1


def _marks(values: Collection[str]) -> str:
    return ",".join("?" * len(values))
