"""Fixtures for the operator's view: real daemons (tests/daemon/conftest.py), a browser
login, and a place for screenshots (``tests/ui/artifacts/``, gitignored)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.conftest import Meshd, MeshdFactory, daemon, meshd  # noqa: F401 - fixtures

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests leave screenshots (kept after the run for a person to look at)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def login_url(node: Meshd, *args: str) -> dict[str, Any]:
    """``meshd ui --json``: the one-time login link, as a user would get it."""
    result = node.cli("ui", "--json", *args)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    found: dict[str, Any] = json.loads(result.stdout)
    return found
