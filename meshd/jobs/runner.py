"""The contract between the engine and whatever actually executes a job.

The engine owns scheduling, status and persistence; a runner owns execution. A runner
reports through its ``JobContext`` and ends in one of three ways:

* returns normally: the job completed;
* raises ``JobFailed``: the job failed, with a message for the user;
* raises ``Reroute``: it could not run where it was placed (a remote runner lost its
  receiver); the engine puts it back in the queue at its old place, with the options
  the exception carries. Deciding those options (which receivers to avoid, when to give
  up and build locally) is the runner's side's business, not the engine's;
* lets ``asyncio.CancelledError`` through: the job was cancelled. A runner that
  started processes must kill them before re-raising (``meshd.toolchain.process`` does this).

Any other exception is treated as a failure too, with its text as the error, so a bug
in a runner cannot wedge a lane.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from meshd.jobs.build import JobBuild
from meshd.jobs.model import Job
from meshd.jobs.options import JobOptions
from meshd.jobs.placement import Placement, ReasonCode, Where


class JobFailed(Exception):
    """The job ran and did not succeed; ``str(exc)`` becomes the job's ``error``."""


class Reroute(Exception):
    """Queue the job again with ``options``; ``notes`` go to its log (default: the reason)."""

    def __init__(self, reason: str, options: JobOptions, notes: Sequence[str] = ()) -> None:
        super().__init__(reason)
        self.options = options
        self.notes = tuple(notes) or (reason,)


# What a context built outside a lane (tests, tools) says about where the job runs.
_UNPLACED = Placement(Where.LOCAL, ReasonCode.NO_MESH, "run directly, not by a lane")


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
    placement: Placement = _UNPLACED
    """Where the lane placed the job; a remote runner reads its receiver from here."""

    def record_build(self, build: JobBuild) -> None:
        """Say what built this compile (``meshd.jobs.build``), once it is built and
        checked: the engine persists it with the job if the job completes, and drops it
        if the job fails, is cancelled or re-routed."""
        self.job.build = build


class Runner(Protocol):
    async def run(self, ctx: JobContext) -> None: ...
