"""Job logs as append-only files, one per job.

Compile output runs to thousands of lines; keeping it out of SQLite and out of RAM
lets a Pi follow a long build and lets ``meshd logs`` read a log after a restart.

A log that cannot be written (disk full, I/O error) never raises into the engine's
bookkeeping: ``append`` notes the failure per job and drops the line, and whoever must
act on it (the engine fails the running job) asks ``write_error``. A later job gets a
fresh file, so once space returns its log works again.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from meshd.jobs.diskio import describe, is_write_error

_LOGGER = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[0-9a-f]{6,64}$")


class JobLogs:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, TextIO] = {}
        self._errors: dict[str, str] = {}

    def path(self, job_id: str) -> Path:
        # Job ids come from the API; never let one name a path outside the log dir.
        if not _SAFE_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.directory / f"{job_id}.log"

    def append(self, job_id: str, line: str) -> None:
        """Append one line; on a write failure note it (``write_error``) and drop the line."""
        path = self.path(job_id)
        try:
            handle = self._open.get(job_id)
            if handle is None:
                handle = path.open("a", encoding="utf-8", buffering=1)
                self._open[job_id] = handle
            handle.write(line.rstrip("\n") + "\n")
        except OSError as exc:
            if not is_write_error(exc):
                raise
            self._drop(job_id)
            if job_id not in self._errors:
                self._errors[job_id] = describe(exc, path)
                _LOGGER.error("job log %s: %s", job_id, self._errors[job_id])  # noqa: TRY400

    def write_error(self, job_id: str) -> str | None:
        """Why this job's log could not be written since ``clear_error`` (None if it could)."""
        return self._errors.get(job_id)

    def clear_error(self, job_id: str) -> None:
        """Forget an earlier write failure (a queued job starting once space may be back)."""
        self._errors.pop(job_id, None)

    def _drop(self, job_id: str) -> None:
        handle = self._open.pop(job_id, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def close(self, job_id: str) -> None:
        """Close the job's file (flushing it); a failed flush counts as a write error."""
        handle = self._open.pop(job_id, None)
        self._errors.pop(job_id, None)
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:
                if not is_write_error(exc):
                    raise
                message = describe(exc, self.path(job_id))
                _LOGGER.error("job log %s: %s", job_id, message)  # noqa: TRY400 - expected

    def close_all(self) -> None:
        for job_id in list(self._open):
            self.close(job_id)

    def delete_files(self, job_ids: list[str]) -> None:
        """Remove the log files of jobs that are gone (close them first: not thread-safe)."""
        for job_id in job_ids:
            self.path(job_id).unlink(missing_ok=True)

    def read_lines(self, job_id: str) -> Iterator[str]:
        path = self.path(job_id)
        if not path.exists():
            return
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                yield line.rstrip("\n")
