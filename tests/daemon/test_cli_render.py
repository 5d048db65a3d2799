"""The human output of a real ``meshd serve`` on an 80-column terminal (``COLUMNS=80``):
``jobs``, ``status`` and ``show`` fit, ids and titles are whole, errors are cut in the
table and complete in ``show``; ``--json`` is still the API's JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from rich.cells import cell_len

from tests.daemon.conftest import CLI_TIMEOUT, Meshd, host_config

WIDTH = 80


def cli(daemon: Meshd, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**daemon.env, "MESHD_DATA_DIR": str(daemon.data_dir), "COLUMNS": str(WIDTH)}
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def fits(output: str) -> list[str]:
    lines = output.splitlines()
    too_wide = [line for line in lines if cell_len(line) > WIDTH]
    assert not too_wide, too_wide
    return lines


def test_jobs_status_and_show_fit_80_columns(daemon: Meshd, tmp_path: Path) -> None:
    good = host_config(tmp_path / "cfg", "a-device-with-a-rather-long-name-for-its-yaml-file")
    broken = host_config(tmp_path / "cfg", "broken", invalid=1)
    done = daemon.cli_json("compile", str(good), "--local")["jobs"][0]
    failed = cli(daemon, "compile", str(broken), "--local")
    assert failed.returncode == 1, failed.stderr
    # (the tool's own output keeps its lines: the terminal wraps them, rich does not)
    failed_job = daemon.cli_json("jobs")["jobs"][-1]
    assert failed_job["status"] == "failed" and "\n" in failed_job["error"]

    listed = cli(daemon, "jobs")
    assert listed.returncode == 0, listed.stderr
    lines = fits(listed.stdout)
    assert re.split(r" {2,}", lines[0].strip())[:3] == ["ID", "TYPE", "STATUS"]
    assert len(lines) == 3, "a header and one line per job"
    assert done["id"] in lines[1] and failed_job["id"] in lines[2]
    first_error_line = failed_job["error"].splitlines()[0]
    assert first_error_line[:10] in lines[2]
    # Only the error's first line, and only as much of it as fits.
    assert failed_job["error"].splitlines()[1].strip()[:10] not in listed.stdout

    shown = cli(daemon, "show", failed_job["id"])
    assert shown.returncode == 0, shown.stderr
    fits(shown.stdout)
    squeezed = re.sub(r"\s+", "", shown.stdout)
    assert re.sub(r"\s+", "", failed_job["error"]) in squeezed, "show prints the error whole"

    # A completed local compile says what built it, through the real daemon and CLI.
    built = cli(daemon, "show", done["id"])
    assert built.returncode == 0, built.stderr
    assert re.search(r"^Built +built locally with esphome \S+ on host *$", built.stdout, re.M)
    assert daemon.cli_json("show", done["id"], "--json")["build"]["where"] == "local"
    assert failed_job["build"] is None  # a failed compile built nothing

    status = cli(daemon, "status")
    assert status.returncode == 0, status.stderr
    out = "\n".join(fits(status.stdout))
    for internal in ("fingerprint_display", "short", "pairing_open"):
        assert internal not in out
    assert re.search(r"^Pairing window +closed", out, re.MULTILINE)
    node = daemon.cli_json("status")["node"]
    assert node["fingerprint_display"][:9] in out

    # --json is unchanged by the terminal's width.
    as_json = cli(daemon, "jobs", "--json")
    assert json.loads(as_json.stdout) == daemon.cli_json("jobs")
