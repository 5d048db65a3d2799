"""Every meshd.link / meshd.mesh module imports on its own in a fresh interpreter
(catches circular imports that a warm test process would hide)."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MESH_MODULES = [
    "meshd.mesh.security.identity",
    "meshd.mesh.security.trust",
    "meshd.mesh.security.pairing",
]


def link_modules() -> list[str]:
    import meshd.link

    names = ["meshd.link"]
    names += [f"meshd.link.{m.name}" for m in pkgutil.iter_modules(meshd.link.__path__)]
    return names


@pytest.mark.parametrize("module", link_modules() + MESH_MODULES)
def test_module_imports_alone(module: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_link_does_not_import_upper_layers() -> None:
    """The link is the bottom layer: importing it must not pull in mesh, jobs or api."""
    code = (
        "import sys, meshd.link; "
        "bad = [m for m in sys.modules if m.startswith(('meshd.mesh', 'meshd.jobs', "
        "'meshd.api', 'meshd.toolchain', 'meshd.daemon'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
