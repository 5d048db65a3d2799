"""The benchmark command runs end to end (``--quick``), so it cannot rot between runs.

Part of the default test run (not ``-m bench``): ``python -m tests.bench --quick``
starts its real daemons with tiny sizes, and the JSON it writes must name the machine
and carry every scenario's figures (or say a scenario is pending). Its numbers mean
nothing and nothing here looks at them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.bench.scenarios import all_scenarios
from tests.daemon.conftest import REPO, base_env

# Not slow-marked: the default run includes it, so the benchmark cannot rot. It adds
# about 40 s on 2 busy cores (every scenario at once, tiny sizes); the full run is
# never part of the test suite.
# A hang guard, not a speed assertion.
QUICK_TIMEOUT = 600


def test_quick_run_reports_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--quick", "--output", str(output)],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=QUICK_TIMEOUT,
        check=False,
    )
    report = json.loads(output.read_text()) if output.exists() else {}
    errors = {
        ident: entry.get("traceback")
        for ident, entry in report.get("scenarios", {}).items()
        if entry["status"] == "error"
    }
    assert done.returncode == 0, f"{errors}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert report["quick"] is True
    machine = report["machine"]
    for key in ("cores", "load_before", "load_after", "python", "esphome", "meshd", "git_commit"):
        assert key in machine, key
    assert report["load"]["samples"] >= 1
    scenarios = report["scenarios"]
    expected = all_scenarios()
    assert list(scenarios) == [s.ident for s in expected]
    for scenario in expected:
        entry = scenarios[scenario.ident]
        if scenario.pending:
            assert entry["status"] == "pending" and entry["pending"] == scenario.pending
            continue
        assert entry["status"] == "ok", entry.get("traceback")
        assert list(entry["figures"]) == list(scenario.keys), scenario.ident
        for key, figure in entry["figures"].items():
            if figure["measured"] is None:
                # Only a part the quick mode or this machine skips may lack a value.
                assert figure["note"], (scenario.ident, key)
    # The table was printed too, one per scenario that ran.
    for scenario in expected:
        assert scenario.ident in done.stdout
