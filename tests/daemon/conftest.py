"""Fixtures for real ``meshd serve`` processes (tests/support/daemon.py has the driver).

Every daemon a test starts is registered with the ``meshd`` fixture, which SIGKILLs
whatever is still running in teardown (and its process group: the esphome children),
so a failing test leaks nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import (
    CLI_TIMEOUT,
    REPO,
    STANDIN,
    STANDIN_CMD,
    Meshd,
    MeshdFactory,
    base_env,
    host_config,
)
from tests.support.pids import pid_alive

__all__ = [
    "CLI_TIMEOUT",
    "REPO",
    "STANDIN",
    "STANDIN_CMD",
    "Meshd",
    "MeshdFactory",
    "base_env",
    "host_config",
    "pid_alive",
]


@pytest.fixture
def meshd(tmp_path: Path) -> Iterator[MeshdFactory]:
    """Make ``Meshd`` instances; all are killed (process group and all) in teardown."""
    factory = MeshdFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def daemon(meshd: MeshdFactory) -> Meshd:
    """A running daemon with the stand-in esphome."""
    return meshd().start()
