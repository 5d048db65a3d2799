"""Runs the link benchmark under pytest, only when asked for with ``-m bench``.

Reports numbers (and writes tests/bench/results/link.json); asserts only that the
bytes arrived intact, never a wall-clock limit.
"""

from __future__ import annotations

import bench_link  # tests/bench is on sys.path (rootdir-relative import of this file)
import pytest

pytestmark = pytest.mark.bench


def test_link_benchmark(request: pytest.FixtureRequest) -> None:
    if "bench" not in (request.config.getoption("-m") or ""):
        pytest.skip("benchmarks run only with -m bench")
    result = bench_link.main(["--size-mib", "32", "--rounds", "2", "--handshakes", "10"])
    assert result["link_mib_s"] > 0 and result["raw_mib_s"] > 0
