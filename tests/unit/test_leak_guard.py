"""The autouse leak guard (tests/conftest.py) fails tests that leave things behind.

Runs tests/unit/leak_samples.py in a child pytest (the same conftest applies) and
reads its verdicts: each leak is named in a teardown error, the clean test passes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import REPO, base_env

SAMPLES = Path(__file__).with_name("leak_samples.py")


def test_leak_guard_names_each_leak_and_passes_a_clean_test(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(SAMPLES)],
            cwd=REPO,
            env=base_env({"LEAK_SAMPLE_PID_FILE": str(pid_file)}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
    out = result.stdout
    assert "3 errors" in out and "4 passed" in out, out
    assert "ERROR tests/unit/leak_samples.py::test_leaks_a_task" in out
    assert "left 1 task(s)" in out and "name='left-behind'" in out
    assert "ERROR tests/unit/leak_samples.py::test_leaks_a_timer" in out
    assert "left 0 task(s) and 1 timer(s)" in out
    assert "ERROR tests/unit/leak_samples.py::test_leaks_a_child" in out
    assert "left 1 child process(es)" in out and "sleep 3600" in out
    assert "PASSED tests/unit/leak_samples.py::test_cleans_up" in out
