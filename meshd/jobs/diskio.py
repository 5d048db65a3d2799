"""Local write failures (disk full, I/O errors): recognised, described, blamed on this node.

A full disk is an ordinary bad day on a Pi with a small SD card. Whatever was being
written (a job log, the database, a content-store blob, a bundle, artifacts), the job
that needed it fails with a sentence the operator can act on ("no space left on
/var/lib/meshd/logs/ab12.log"), its dependents are cancelled like after any failure,
and nobody else is blamed: a write error on the offloader while it pulls artifacts is
the offloader's failure, never a lost receiver.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from meshd.jobs.runner import JobFailed

# errno values that mean "this node cannot write there" rather than "bad input".
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
# SQLite primary result codes for the same (extended IOERR codes share the low byte).
_SQLITE_IOERR = 10
_SQLITE_FULL = 13


def is_write_error(exc: BaseException) -> bool:
    """Is ``exc`` a failure of this node's storage (not a bug, not the peer's doing)?"""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF in (_SQLITE_FULL, _SQLITE_IOERR):
            return True
        text = str(exc).lower()
        return "disk is full" in text or "disk i/o error" in text
    return isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS


def describe(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """One sentence: what could not be written where (``path``, else the error's own)."""
    where = str(path) if path is not None else getattr(exc, "filename", None) or "disk"
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        full = (isinstance(code, int) and code & 0xFF == _SQLITE_FULL) or "full" in str(exc)
        return f"no space left on {where}" if full else f"I/O error writing {where}: {exc}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on {where}"
    if isinstance(exc, OSError):
        return f"cannot write {where}: {exc.strerror or exc}"
    return f"cannot write {where}: {exc}"


class LocalWriteError(JobFailed):
    """This node could not write something the job needs; the job fails here."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None

    @classmethod
    def of(cls, exc: BaseException, path: str | os.PathLike[str] | None = None) -> LocalWriteError:
        """The error for ``exc`` while writing ``path`` (default: the error's own path)."""
        return cls(
            describe(exc, path), path if path is not None else getattr(exc, "filename", None)
        )
