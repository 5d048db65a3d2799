"""The node's SQLite database, ``<data-dir>/meshd.db``: one way to open it, for every table.

Several modules keep tables in the one file (the job store its ``jobs`` tables, the
trust store its ``trust_`` ones), each through its own connection. They must agree on
how the file is opened, or one connection's weaker setting would undo another's
promise; so every connection comes from :func:`connect`:

* ``journal_mode=WAL``: readers never block the writer, and the daemon's several
  connections (and a CLI-less ``sqlite3`` shell an operator opens) coexist;
* ``synchronous=FULL``: a commit survives power loss. A state change is announced only
  once durable; losing a "completed" on power loss would flash a device again. At a few
  writes a minute the fsyncs cost nothing;
* ``busy_timeout``: a second connection waits for the lock instead of failing at once;
* autocommit (``isolation_level=None``): a caller that wants a transaction says
  ``BEGIN`` itself, so nothing is left uncommitted by accident;
* not bound to one thread: the daemon runs short statements on the loop or in a
  worker thread; each store guards its connection with its own lock where it needs one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DB_FILENAME = "meshd.db"
# Long enough for any writer of ours (single-row upserts) to finish on a slow SD card,
# short enough that a wedged one surfaces as an error rather than a hang.
BUSY_TIMEOUT_MS = 5000


def database_path(data_dir: Path) -> Path:
    return data_dir / DB_FILENAME


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at ``path`` with the settings above."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except BaseException:
        conn.close()
        raise
    return conn
