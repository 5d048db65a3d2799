"""Crash trials: a real ``meshd serve`` SIGKILLed at a random moment under a random load.

Each trial (one seed) starts a daemon with the stand-in esphome and three emulated OTA
devices (tests/support/ota_emulator.py, served by this process so they outlive the
daemon), submits a random mix of installs, compiles, cleans, resets, cancels and
re-installs over HTTP, SIGKILLs the daemon (only its own pid, as a crash would: its
children live on) at a random moment, restarts it, lets it finish, stops it, and then
checks from the database (opened read-only), the job logs, the stand-in's journal and
the devices' own records:

1. every job the API acknowledged exists and ended terminal;
2. no upload ran whose compile did not complete in the same chain;
3. no device got an image other than the one its chain built (every build is unique,
   so an image names exactly one build, hence one compile job);
4. a cancelled or superseded chain never flashed, and a completed upload did;
5. no process the dead daemon left survives the restart.

A failing trial prints its seed; ``MESHD_CRASH_SEED=N`` runs only that one, and
``MESHD_CRASH_TRIALS=N`` changes how many seeds run (default 50). Further kinds of work
(fleet updates, once they exist) join the mix through ``EXTRA_OPS``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.conftest import Meshd, MeshdFactory, pid_alive
from tests.support.ota_emulator import OtaDevices

pytestmark = pytest.mark.slow

TRIALS = int(os.environ.get("MESHD_CRASH_TRIALS", "50"))
SEEDS = (
    [int(os.environ["MESHD_CRASH_SEED"])]
    if os.environ.get("MESHD_CRASH_SEED")
    else list(range(1, TRIALS + 1))
)
DEVICES = 3
SETTLE_TIMEOUT = 60.0  # a safety net: every job must end, not a speed assertion
TERMINAL = {"completed", "failed", "cancelled"}
_BUILD_RE = re.compile(r"standin build (\w+) sha256 ([0-9a-f]{64})")
_SENT_RE = re.compile(r"Uploading .* sha256 ([0-9a-f]{64})\)")


class Api:
    """The control API over plain HTTP (a trial submits many jobs; the CLI costs ~1 s each)."""

    def __init__(self, daemon: Meshd) -> None:
        self.url = daemon.url
        self.token = daemon.token

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v1{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@dataclass
class Trial:
    seed: int
    root: Path
    daemon: Meshd
    devices: OtaDevices
    configs: list[Path]
    rng: random.Random
    acknowledged: list[str] = field(default_factory=list)
    chains: dict[str, str] = field(default_factory=dict)  # upload id -> compile id
    ops: list[str] = field(default_factory=list)
    installed: list[int] = field(default_factory=list)
    killed_pid: int | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def journal(self) -> Path:
        return self.root / "standin-journal.jsonl"

    def note(self, text: str) -> None:
        self.ops.append(text)

    def submit(self, api: Api, body: dict[str, Any]) -> None:
        try:
            status, answer = api.call("POST", "/jobs", body)
        except OSError as exc:
            self.note(f"{body['type']} not acknowledged ({type(exc).__name__})")
            return
        if status != 201:
            self.note(f"{body['type']} refused {status}: {answer}")
            return
        jobs = answer["jobs"]
        self.acknowledged += [job["id"] for job in jobs]
        for job in jobs:
            if job["type"] == "upload" and job.get("depends_on"):
                self.chains[job["id"]] = job["depends_on"]
        self.note(
            f"{body['type']} {Path(body.get('configuration', '')).name} -> "
            + ",".join(job["id"] for job in jobs)
        )


def _install(trial: Trial, api: Api) -> None:
    index = trial.rng.randrange(DEVICES)
    trial.installed.append(index)
    trial.submit(
        api, {"type": "install", "configuration": str(trial.configs[index]), "device": "127.0.0.1"}
    )


def _compile(trial: Trial, api: Api) -> None:
    config = trial.rng.choice(trial.configs)
    trial.submit(api, {"type": "compile", "configuration": str(config)})


def _clean(trial: Trial, api: Api) -> None:
    config = trial.rng.choice(trial.configs)
    trial.submit(api, {"type": "clean", "configuration": str(config)})


def _reset(trial: Trial, api: Api) -> None:
    trial.submit(api, {"type": "reset_build_env", "configuration": str(trial.configs[0].parent)})


def _cancel(trial: Trial, api: Api) -> None:
    if not trial.acknowledged:
        return
    job_id = trial.rng.choice(trial.acknowledged)
    try:
        status, _ = api.call("POST", f"/jobs/{job_id}/cancel")
    except OSError as exc:
        trial.note(f"cancel {job_id} not acknowledged ({type(exc).__name__})")
        return
    trial.note(f"cancel {job_id} -> {status}")


def _reinstall(trial: Trial, api: Api) -> None:
    """Install a device again that already has a chain (supersedes it if still active)."""
    index = trial.rng.choice(trial.installed) if trial.installed else 0
    trial.submit(
        api, {"type": "install", "configuration": str(trial.configs[index]), "device": "127.0.0.1"}
    )


Op = Callable[[Trial, Api], None]
# (weight, op): installs dominate, because the chain invariants are what crash trials prove.
OPS: list[tuple[int, Op]] = [
    (5, _install),
    (2, _compile),
    (1, _clean),
    (1, _reset),
    (3, _cancel),
    (2, _reinstall),
]
EXTRA_OPS: list[tuple[int, Op]] = []
"""More kinds of work for the mix (fleet updates join here when they land)."""


def _pick(rng: random.Random) -> Op:
    choices = OPS + EXTRA_OPS
    return rng.choices([op for _w, op in choices], [w for w, _op in choices])[0]


def _write_configs(root: Path, devices: OtaDevices, rng: random.Random) -> list[Path]:
    directory = root / "cfg"
    directory.mkdir(parents=True)
    (directory / "secrets.yaml").write_text("api_password: trial\n", encoding="utf-8")
    configs = []
    for index in range(DEVICES):
        name = f"dev{index}"
        path = directory / f"{name}.yaml"
        path.write_text(
            f"esphome:\n  name: {name}\nhost:\napi:\n  password: !secret api_password\n"
            f"# standin: compile_seconds={rng.uniform(0.1, 0.7):.2f}\n"
            f"# standin: upload_seconds={rng.uniform(0.1, 0.5):.2f}\n"
            f"# standin: link_seconds={rng.choice([0.0, 0.0, 0.3, 1.0])}\n"
            f"# standin: firmware_bytes={rng.choice([0, 40000, 100000])}\n"
            f"# standin: ota_port={devices.port(index)}\n",
            encoding="utf-8",
        )
        configs.append(path)
    return configs


def _active(api: Api) -> list[dict[str, Any]]:
    _status, body = api.call("GET", "/jobs?status=queued,running")
    jobs: list[dict[str, Any]] = body["jobs"]
    return jobs


def _wait_settled(api: Api, daemon: Meshd) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while active := _active(api):
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs never ended: {active}\n{daemon.log()}")
        time.sleep(0.05)


def _journal(trial: Trial) -> list[dict[str, Any]]:
    if not trial.journal.exists():
        return []
    return [json.loads(line) for line in trial.journal.read_text().splitlines() if line]


def _orphans(trial: Trial) -> list[dict[str, Any]]:
    """Stand-in processes the killed daemon started that are still running."""
    return [
        entry
        for entry in _journal(trial)
        if entry["cmd"] != "built" and entry["ppid"] == trial.killed_pid and pid_alive(entry["pid"])
    ]


def _rows(data_dir: Path) -> dict[str, dict[str, Any]]:
    conn = sqlite3.connect(f"file:{data_dir / 'meshd.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return {row["id"]: dict(row) for row in conn.execute("SELECT * FROM jobs")}
    finally:
        conn.close()


def _log(data_dir: Path, job_id: str) -> str:
    path = data_dir / "logs" / f"{job_id}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _check(trial: Trial) -> list[str]:
    """Every invariant, as a list of violations (empty: the trial passed)."""
    data_dir = trial.daemon.data_dir
    rows = _rows(data_dir)
    problems: list[str] = []

    # 1. Acknowledged jobs exist and are terminal.
    for job_id in trial.acknowledged:
        row = rows.get(job_id)
        if row is None:
            problems.append(f"acknowledged job {job_id} is not in the database")
        elif row["status"] not in TERMINAL:
            problems.append(f"job {job_id} ended {row['status']}")

    # Which build each compile job made last (a restarted compile builds again).
    builds: dict[str, str] = {}  # image digest -> compile job id
    final_build: dict[str, str] = {}  # compile job id -> digest of its last build
    for job_id, row in rows.items():
        if row["type"] != "compile":
            continue
        found = _BUILD_RE.findall(_log(data_dir, job_id))
        for _build, digest in found:
            builds[digest] = job_id
        if found:
            final_build[job_id] = found[-1][1]
    uploads = {job_id: row for job_id, row in rows.items() if row["type"] == "upload"}

    # 2. No upload ran unless its compile completed.
    for job_id, row in uploads.items():
        log = _log(data_dir, job_id)
        ran = "started on" in log
        compile_row = rows.get(row["depends_on"] or "")
        if ran and (compile_row is None or compile_row["status"] != "completed"):
            status = compile_row["status"] if compile_row else "missing"
            problems.append(f"upload {job_id} ran although its compile is {status}")
        for sent in _SENT_RE.findall(log):
            if compile_row is None or final_build.get(compile_row["id"]) != sent:
                problems.append(f"upload {job_id} sent {sent[:12]}, not its chain's build")

    # 3./4. What the devices received, by their own records.
    flashed_by: dict[str, set[str]] = {}  # upload job id -> digests its device accepted
    for index, config in enumerate(trial.configs):
        for image in trial.devices.images(index):
            if not image.accepted:
                continue
            digest = hashlib.sha256(image.data).hexdigest()
            compile_id = builds.get(digest)
            if compile_id is None:
                problems.append(f"device {index} got {digest[:12]}, which no compile job built")
                continue
            compile_row = rows[compile_id]
            if compile_row["configuration"] != str(config):
                problems.append(f"device {index} got a build of {compile_row['configuration']}")
            chain = [u for u, r in uploads.items() if r["depends_on"] == compile_id]
            if not chain:
                problems.append(
                    f"device {index} got {digest[:12]} from compile {compile_id}, "
                    "which has no upload"
                )
                continue
            upload_id = chain[0]
            flashed_by.setdefault(upload_id, set()).add(digest)
            if final_build.get(compile_id) != digest:
                problems.append(
                    f"device {index} got {digest[:12]}, an earlier build of "
                    f"{compile_id} than the one that completed"
                )
            if uploads[upload_id]["status"] != "completed":
                problems.append(
                    f"device {index} was flashed by chain {compile_id}/{upload_id}, which "
                    f"ended {compile_row['status']}/{uploads[upload_id]['status']}"
                )
    for job_id, row in uploads.items():
        if row["status"] == "completed" and not flashed_by.get(job_id):
            problems.append(f"upload {job_id} completed but its device has no image from it")

    # 5. Checked right after the restart (see _run).
    trial.stats.update(
        acknowledged=len(trial.acknowledged),
        jobs={
            status: sum(1 for r in rows.values() if r["status"] == status) for status in TERMINAL
        },
        images_accepted=sum(len(v) for v in flashed_by.values()),
        images_refused_or_partial=sum(
            1 for i in range(DEVICES) for image in trial.devices.images(i) if not image.accepted
        ),
        restarted=sum("restarted: meshd stopped" in _log(data_dir, j) for j in rows),
        orphans_killed=sum("left by the previous run" in _log(data_dir, j) for j in rows),
    )
    return problems


def _run(trial: Trial) -> None:
    rng = trial.rng
    daemon = trial.daemon
    daemon.start()
    api = Api(daemon)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    kill_at = rng.uniform(0.1, 1.6)
    killer = threading.Timer(kill_at, lambda: os.kill(pid, signal.SIGKILL))
    started = time.monotonic()
    killer.start()
    try:
        for _ in range(rng.randint(3, 8)):
            _pick(rng)(trial, api)
            time.sleep(rng.uniform(0.0, 0.35))
        trial.note(f"ops took {time.monotonic() - started:.2f} s; kill at {kill_at:.2f} s")
    finally:
        killer.join()
    daemon.proc.wait(timeout=30)
    trial.killed_pid = pid
    trial.stats["left_running"] = [e["cmd"] for e in _orphans(trial)]
    daemon.start()
    api = Api(daemon)
    survivors = _orphans(trial)
    assert not survivors, f"processes of the killed daemon survived the restart: {survivors}"
    if trial.seed % 5 == 0:
        # Now and then through the CLI, as a user would (it costs a second, so rarely).
        config = str(trial.configs[rng.randrange(DEVICES)])
        result = daemon.cli_json("install", config, "--device", "127.0.0.1", "--detach")
        trial.acknowledged += [result["compile"], result["upload"]]
        trial.note(f"cli install {Path(config).name} -> {result['compile']},{result['upload']}")
    for _ in range(rng.randint(0, 2)):
        _pick(rng)(trial, api)
    _wait_settled(api, daemon)
    assert daemon.terminate() == 0, daemon.log()


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_crash_trial(seed: int, meshd: MeshdFactory, tmp_path: Path) -> None:
    rng = random.Random(seed)
    with OtaDevices(DEVICES) as devices:
        configs = _write_configs(tmp_path, devices, rng)
        daemon = meshd(
            env={"STANDIN_JOURNAL": str(tmp_path / "standin-journal.jsonl")},
            args=("--no-mdns", "--no-offload", "--no-receiver"),
        )
        trial = Trial(seed, tmp_path, daemon, devices, configs, rng)
        failure = ""
        try:
            _run(trial)
            problems = _check(trial)
        except AssertionError as exc:
            problems, failure = [], str(exc)
        finally:
            with contextlib.suppress(Exception):
                daemon.kill()
        report = os.environ.get("MESHD_RELIABILITY_REPORT")
        if report:
            record = {
                "family": "crash_trials",
                "seed": seed,
                "ok": not (problems or failure),
                "ops": len(trial.ops),
                **trial.stats,
            }
            with open(report, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        if problems or failure:
            history = "\n  ".join(trial.ops)
            raise AssertionError(
                f"crash trial seed {seed} failed (reproduce: MESHD_CRASH_SEED={seed} "
                f"pytest tests/reliability/test_crash_trials.py):\n"
                + "\n".join(problems)
                + failure
                + f"\nops:\n  {history}"
            )
