"""Reliability tests: bad data and faults survived on purpose.

Daemon tests here reuse the real ``meshd serve`` fixture of tests/daemon.
"""

from __future__ import annotations

from tests.daemon.conftest import daemon, meshd

__all__ = ["daemon", "meshd"]
