"""The fleet package's seams: each module imports alone, nothing above it is pulled in,
and the heavy client libraries load only where they are used."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import meshd.fleet

ROOT = Path(__file__).resolve().parents[2]
MODULES = ["meshd.fleet"] + [
    f"meshd.fleet.{m.name}" for m in pkgutil.iter_modules(meshd.fleet.__path__)
]


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    result = run(f"import {module}")
    assert result.returncode == 0, result.stderr


def test_fleet_does_not_reach_up_and_loads_clients_lazily() -> None:
    code = (
        "import sys\n"
        "import meshd.fleet.verify, meshd.fleet.monitor, meshd.fleet.confighash\n"
        "import meshd.fleet.resolve, meshd.fleet.state\n"
        "up = [m for m in sys.modules if m.startswith(('meshd.daemon', 'meshd.api', "
        "'meshd.cli', 'meshd.mesh', 'esphome'))]\n"
        "lazy = [m for m in ('aioesphomeapi',) if m in sys.modules]\n"
        "print(up, lazy); sys.exit(1 if up or lazy else 0)\n"
    )
    result = run(code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pure_modules_do_not_load_zeroconf() -> None:
    """State, configs and resolution are usable (e.g. by the CLI's renderer) without zeroconf."""
    code = (
        "import sys, meshd.fleet.state, meshd.fleet.configs, meshd.fleet.resolve\n"
        "sys.exit(1 if 'zeroconf' in sys.modules else 0)\n"
    )
    result = run(code)
    assert result.returncode == 0, result.stdout + result.stderr
