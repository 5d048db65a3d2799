"""The contract between the engine and whatever actually executes a job.

The engine owns scheduling, status and persistence; a runner owns execution. A runner
reports through its ``JobContext`` and ends in one of three ways:

* returns normally: the job completed;
* raises ``JobFailed``: the job failed, with a message for the user;
* lets ``asyncio.CancelledError`` through: the job was cancelled. A runner that
  started processes must kill them before re-raising (``meshd.toolchain.process`` does this).

Any other exception is treated as a failure too, with its text as the error, so a bug
in a runner cannot wedge a lane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshd.jobs.model import Job


class JobFailed(Exception):
    """The job ran and did not succeed; ``str(exc)`` becomes the job's ``error``."""


@dataclass(frozen=True)
class JobContext:
    """What a runner may do to the job it runs, without knowing about lanes or the store."""

    job: Job
    log: Callable[[str], None]
    """Append one line of tool output to the job log (and emit ``job_output``)."""
    progress: Callable[[float], None]
    """Report progress as a fraction in [0, 1] (emits ``job_progress``)."""
    on_process: Callable[[int], None] = lambda _pgid: None
    """Record the process group a runner started (pass it as ``run_process(on_start=...)``),
    so a restart after a crash can kill what the dead daemon left running."""


class Runner(Protocol):
    async def run(self, ctx: JobContext) -> None: ...
