"""A runner that runs a real child process per job, controlled through marker files.

Each job's process writes ``<id>.started`` (with its pid and a grandchild's pid), prints
a few lines and a progress line, then waits until the test writes ``<id>.release``
holding an exit code. Tests thereby decide exactly when each job ends, without
sleeping, and can check which processes ever started and whether they were killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from meshd.jobs.runner import JobContext, JobFailed
from meshd.toolchain.process import run_process

_SCRIPT = r"""
import os, signal, subprocess, sys, time
marker, release, ignore_term = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
# A grandchild in the same process group, like PlatformIO under esphome.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(marker + ".tmp", "w") as fh:
    fh.write(f"{os.getpid()} {child.pid}")
os.rename(marker + ".tmp", marker)
print("building", flush=True)
print("progress 50%", flush=True)
while not os.path.exists(release):
    time.sleep(0.01)
code = int(open(release).read() or 0)
print(f"exit {code}", flush=True)
child.kill()
sys.exit(code)
"""


class GatedRunner:
    def __init__(self, directory: Path, *, kill_grace: float = 2.0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.kill_grace = kill_grace
        self.ignore_term: set[str] = set()

    def started_marker(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.started"

    def ever_started(self, job_id: str) -> bool:
        return self.started_marker(job_id).exists()

    def pids(self, job_id: str) -> tuple[int, int]:
        pid, child = self.started_marker(job_id).read_text().split()
        return int(pid), int(child)

    async def wait_started(self, job_id: str, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.ever_started(job_id):
                await asyncio.sleep(0.01)

    def release(self, job_id: str, code: int = 0) -> None:
        # Atomic: the child polls for the file and must never read it half-written.
        final = self.directory / f"{job_id}.release"
        partial = final.with_suffix(".partial")
        partial.write_text(str(code))
        partial.rename(final)

    async def run(self, ctx: JobContext) -> None:
        job = ctx.job

        def on_line(line: str) -> None:
            ctx.log(line)
            if line.startswith("progress "):
                ctx.progress(int(line.split()[1].rstrip("%")) / 100)

        result = await run_process(
            [
                sys.executable,
                "-c",
                _SCRIPT,
                str(self.started_marker(job.id)),
                str(self.directory / f"{job.id}.release"),
                "1" if job.id in self.ignore_term else "0",
            ],
            on_line=on_line,
            on_start=ctx.on_process,
            kill_grace=self.kill_grace,
        )
        if result.returncode != 0:
            raise JobFailed(f"exit code {result.returncode}")
