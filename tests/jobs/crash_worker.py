"""Runs an engine in a separate process so a test can SIGKILL it mid-chain.

Usage: python -m tests.jobs.crash_worker DATA_DIR GATE_DIR
Queues one install chain, prints the job ids as JSON, then serves until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from meshd.jobs.engine import Engine
from meshd.jobs.model import JobType
from tests.jobs.gated import GatedRunner


async def main(data_dir: Path, gate_dir: Path) -> None:
    engine = Engine(data_dir, dict.fromkeys(JobType, GatedRunner(gate_dir)))
    await engine.start()
    compile_job, upload_job = engine.install("a.yaml", "10.0.0.5")
    other = engine.submit(JobType.UPLOAD, "b.yaml", "10.0.0.6")
    print(json.dumps({"compile": compile_job.id, "upload": upload_job.id, "other": other.id}))
    sys.stdout.flush()
    await engine.join()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
