"""Job logs as append-only files, one per job.

Compile output runs to thousands of lines; keeping it out of SQLite and out of RAM
lets a Pi follow a long build and lets ``meshd logs`` read a log after a restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

_SAFE_ID = re.compile(r"^[0-9a-f]{6,64}$")


class JobLogs:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, TextIO] = {}

    def path(self, job_id: str) -> Path:
        # Job ids come from the API; never let one name a path outside the log dir.
        if not _SAFE_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.directory / f"{job_id}.log"

    def append(self, job_id: str, line: str) -> None:
        handle = self._open.get(job_id)
        if handle is None:
            handle = self.path(job_id).open("a", encoding="utf-8", buffering=1)
            self._open[job_id] = handle
        handle.write(line.rstrip("\n") + "\n")

    def close(self, job_id: str) -> None:
        handle = self._open.pop(job_id, None)
        if handle is not None:
            handle.close()

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
