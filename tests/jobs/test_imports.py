"""The jobs layer imports alone and pulls in nothing of the layers above it."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import meshd.jobs

ROOT = Path(__file__).resolve().parents[2]
JOBS_MODULES = [f"meshd.jobs.{m.name}" for m in pkgutil.iter_modules(meshd.jobs.__path__)]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("module", [*JOBS_MODULES, "meshd.toolchain.archive"])
def test_module_imports_alone(module: str) -> None:
    result = _python(f"import {module}")
    assert result.returncode == 0, result.stderr


def test_jobs_imports_nothing_of_mesh_toolchain_or_api() -> None:
    modules = ", ".join(JOBS_MODULES)
    result = _python(
        f"import sys, {modules}; "
        "bad = [m for m in sys.modules if m.startswith(('meshd.mesh', 'meshd.api', "
        "'meshd.toolchain', 'meshd.daemon', 'meshd.fleet', 'meshd.cli'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert result.returncode == 0, result.stdout + result.stderr
