"""Run a meshd Runner directly, recording what it reports (the engine is not needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meshd.jobs.model import Job, JobType
from meshd.jobs.options import JobOptions
from meshd.jobs.runner import JobContext, JobFailed, Runner


@dataclass
class Recorder:
    """A job plus every log line, progress value and process group its runner reported."""

    job: Job
    lines: list[str] = field(default_factory=list)
    progress: list[float] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)

    @property
    def ctx(self) -> JobContext:
        return JobContext(
            job=self.job,
            log=self.lines.append,
            progress=self.progress.append,
            on_process=self.processes.append,
        )

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def make_job(
    job_type: JobType,
    configuration: object,
    device: str | None = None,
    **options: Any,
) -> Recorder:
    return Recorder(
        Job(
            type=job_type,
            configuration=str(configuration),
            device=device,
            options=JobOptions(**options),
        )
    )


async def run_job(runner: Runner, recorder: Recorder) -> JobFailed | None:
    """Run to the end; return the ``JobFailed`` it raised, or None when it completed."""
    try:
        await runner.run(recorder.ctx)
    except JobFailed as exc:
        return exc
    return None
