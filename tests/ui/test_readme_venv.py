"""The README's first command line, as written, in a fresh venv: the daemon it starts
finds the esphome installed beside it (no PATH tricks) and compiles a host config.

Offline and without downloading the world: pip reads a local wheelhouse (pip's own
``PIP_NO_INDEX``/``PIP_FIND_LINKS`` settings; the command line is untouched) made of
the distributions already installed here, repacked as wheels, plus the build backend
that ``scripts/test`` downloads. Everything runs in a fresh network namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.host_device import HostFirmware, free_port
from tests.support.netns import isolated, netns_available
from tests.support.pio_offline import offline_env
from tests.support.wheelhouse import repack_closure

# ~90 wheels installed, then a host compile: minutes, not the default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path(os.environ.get("MESHD_TEST_WHEELHOUSE", REPO / ".wheelhouse"))
INSTALL_TIMEOUT = 1200  # a safety net: ~90 wheels, then a host compile


def readme_first_command() -> str:
    """The one-line command of "Set up", step 1, exactly as the README shows it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n\s*(python3 -m venv[^\n]*)\n\s*```", text)
    assert block, "the README's first command block moved"
    return block.group(1).strip()


def _build_backend() -> list[Path]:
    wheels = [*WHEELHOUSE.glob("setuptools-*.whl"), *WHEELHOUSE.glob("wheel-*.whl")]
    if len({w.name.split("-")[0] for w in wheels}) < 2:
        pytest.skip(f"no setuptools/wheel wheels in {WHEELHOUSE} (scripts/test downloads them)")
    return wheels


def _source_copy(dest: Path) -> Path:
    """The checkout as a user has it (tracked files), so the build leaves the repo clean."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, files):
        rel = raw.decode()
        if not (REPO / rel).is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


# Runs inside one network namespace: the README line in the background (its own
# process group), then the CLI of the new venv against the daemon it started.
_DRIVER = r"""
cd "$SRC"
setsid sh -c "$README_COMMAND" > "$OUT/serve.log" 2>&1 &
serve=$!
echo "$serve" > "$OUT/serve.pid"
i=0
while [ ! -f "$MESHD_DATA_DIR/api.json" ]; do
    kill -0 "$serve" 2>/dev/null || { echo "serve exited" > "$OUT/failure"; exit 90; }
    i=$((i + 1)); [ "$i" -gt 9000 ] && { echo "no api.json" > "$OUT/failure"; exit 91; }
    sleep 0.1
done
.venv/bin/meshd status --json > "$OUT/status.json"
.venv/bin/python - <<'PY'
import json, os, urllib.request
url = json.load(open(os.path.join(os.environ["MESHD_DATA_DIR"], "api.json")))["url"]
for name, path in (("index.html", "/"), ("app.js", "/static/app.js")):
    with urllib.request.urlopen(url + path, timeout=60) as response:
        open(os.path.join(os.environ["OUT"], name), "wb").write(response.read())
PY
.venv/bin/meshd compile "$CONFIG" --json > "$OUT/compile.json" 2> "$OUT/compile.err"
echo $? > "$OUT/compile.rc"
kill -TERM "-$serve"
wait "$serve" || true  # the line's shell dies of the TERM; meshd's log says how it ended
i=0
while kill -0 "-$serve" 2>/dev/null && [ "$i" -lt 600 ]; do i=$((i + 1)); sleep 0.1; done
"""


def _kill_group(pid_file: Path) -> None:
    """Whatever the README line left running (its own process group), on any failure."""
    try:
        pgid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def test_readme_first_command_in_a_fresh_venv(
    host_project: HostFirmware, offline_pio_core: Path, tmp_path: Path
) -> None:
    if not netns_available():
        pytest.skip("needs `unshare -n` to keep pip and PlatformIO offline")
    command = readme_first_command()
    assert command == (
        "python3 -m venv .venv && .venv/bin/python -m pip install '.[esphome]' "
        "&& .venv/bin/meshd serve"
    )
    base_python = Path(sys._base_executable).parent  # python3 on PATH, without esphome
    path = f"{base_python}:/usr/bin:/bin"
    for directory in path.split(":"):
        assert not (Path(directory) / "esphome").exists(), f"esphome on PATH in {directory}"

    wheelhouse = tmp_path / "wheelhouse"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["esphome"]]
    repack_closure(wanted, wheelhouse, skip={"meshd"})
    for wheel in _build_backend():
        shutil.copy2(wheel, wheelhouse)
    src = _source_copy(tmp_path / "meshd-src")
    out = tmp_path / "out"
    out.mkdir()
    host_project.write_config(marker="R")  # a real (warm) rebuild by the new venv's esphome

    env = offline_env(offline_pio_core, base={})
    env.update(
        {
            "PATH": path,
            "HOME": str(tmp_path / "home"),
            "LANG": "C.UTF-8",
            "SRC": str(src),
            "OUT": str(out),
            "CONFIG": str(host_project.config),
            "README_COMMAND": command,
            # pip's own settings: the README's command line stays as written.
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(wheelhouse),
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_COMPILE": "1",
            # meshd's own settings: a private data dir and loopback addresses.
            "MESHD_DATA_DIR": str(tmp_path / "data"),
            "MESHD_API": f"127.0.0.1:{free_port()}",
            "MESHD_PEER_LISTEN": "127.0.0.1:0",
            "MESHD_MDNS": "off",
        }
    )
    try:
        result = subprocess.run(
            isolated("sh", "-c", _DRIVER),
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
    finally:
        _kill_group(out / "serve.pid")
    serve_log = (out / "serve.log").read_text(errors="replace")[-6000:]
    report = f"{result.stdout}\n{result.stderr}\n--- serve.log ---\n{serve_log}"
    assert result.returncode == 0, report

    venv_esphome = src / ".venv" / "bin" / "esphome"
    assert venv_esphome.exists(), report
    node = json.loads((out / "status.json").read_text())["node"]
    assert node["esphome"] == str(venv_esphome), node
    assert node["warnings"] == [], node

    # The status page shipped in the wheel (package data) and is served.
    assert '<script src="/static/app.js"' in (out / "index.html").read_text(), report
    assert "new WebSocket" in (out / "app.js").read_text(), report

    compile_err = (out / "compile.err").read_text()
    assert (out / "compile.rc").read_text().strip() == "0", f"{compile_err}\n{report}"
    (job,) = json.loads((out / "compile.json").read_text())["jobs"]
    assert job["status"] == "completed" and job["runner"] == "local"
    assert b"meshd build marker R" in host_project.program.read_bytes()
    log = (tmp_path / "data" / "logs" / f"{job['id']}.log").read_text(errors="replace")
    assert f"$ {venv_esphome}" in log  # the venv's own esphome ran the compile
    # SIGTERM to the line's process group: meshd shut down cleanly.
    assert "meshd.daemon: stopped" in (out / "serve.log").read_text(errors="replace"), report
