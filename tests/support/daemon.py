"""A real ``meshd serve`` process on loopback, driven through the CLI and HTTP only.

Shared by the daemon and cluster suites and by the CLI benchmark. ``Meshd.kill``
SIGKILLs the daemon's whole process group (it runs in its own session, so that takes
the esphome children too). Timeouts here are safety nets against hangs, never
assertions about speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.waits import poll_until

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "support" / "standin_esphome.py"
STANDIN_CMD = f"{sys.executable} {STANDIN}"
# Safety nets against hangs, not speed assertions.
START_TIMEOUT = 60.0
CLI_TIMEOUT = 300.0


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent environment without meshd/systemd variables, with meshd importable."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MESHD_", "NOTIFY_SOCKET", "WATCHDOG_", "STANDIN_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def host_config(directory: Path, name: str = "dev1", **directives: Any) -> Path:
    """A minimal host configuration for the stand-in, with ``# standin:`` directives."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"esphome:\n  name: {name}\nhost:\napi:\n  password: !secret api_password\n"]
    lines += [f"# standin: {key}={value}\n" for key, value in directives.items()]
    path = directory / f"{name}.yaml"
    path.write_text("".join(lines), encoding="utf-8")
    return path


class Meshd:
    """One ``meshd serve`` process and a CLI bound to its data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        esphome: str = STANDIN_CMD,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
        wrap: tuple[str, ...] = (),
        cli_wrap: tuple[str, ...] = (),
    ) -> None:
        """``wrap`` prefixes the serve command (e.g. ``unshare --mount ...``); it must
        ``exec`` meshd, so the process is the daemon. ``cli_wrap`` prefixes CLI runs
        (``ip netns exec NS`` for a daemon whose loopback is another namespace's)."""
        self.data_dir = data_dir
        self.wrap = wrap
        self.cli_wrap = cli_wrap
        self.esphome = esphome
        self.env = base_env(env)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self.url = ""
        self.token = ""

    # -- life cycle -------------------------------------------------------------

    def seen(self, path: Path) -> Path:
        """``path`` as this (test) process can read it; a daemon in its own mount
        namespace (tests/support/tmpfs.py) answers with its ``/proc/PID/root`` view."""
        return path

    def start(self, *, wait: bool = True) -> Meshd:
        before = _identity(self.seen(self.data_dir / "api.json"))
        argv = [
            *self.wrap,
            sys.executable,
            "-m",
            "meshd",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--api",
            "127.0.0.1:0",
            # Stored only for now; loopback so nothing could ever listen outside.
            "--peer-listen",
            "127.0.0.1:0",
            "--mdns-interface",
            "127.0.0.1",
            "--name",
            "test-node",
            "--esphome",
            self.esphome,
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.data_dir.parent,
        )
        log.close()
        if wait:
            self.wait_ready(before)
        return self

    def wait_ready(self, before: tuple[int, int] | None) -> None:
        """Wait until this process writes a new ``api.json`` (it is then serving)."""
        proc = self.proc
        assert proc is not None

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"meshd serve exited {proc.returncode}:\n{self.log()}")
            return _identity(self.seen(self.data_dir / "api.json")) != before

        try:
            poll_until(ready, timeout=START_TIMEOUT, what="api.json")
        except TimeoutError:
            raise AssertionError(f"meshd serve did not write api.json:\n{self.log()}") from None
        self.start_url_from_file()

    def start_url_from_file(self) -> None:
        data = json.loads(self.seen(self.data_dir / "api.json").read_text())
        self.url, self.token = data["url"], data["token"]

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    # -- the CLI ----------------------------------------------------------------

    def cli(
        self,
        *args: str,
        timeout: float = CLI_TIMEOUT,
        cwd: Path | None = None,
        data_dir: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if data_dir:
            env["MESHD_DATA_DIR"] = str(self.seen(self.data_dir))
        env["COLUMNS"] = "200"
        return subprocess.run(
            [*self.cli_wrap, sys.executable, "-m", "meshd", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=cwd or self.data_dir.parent,
            stdin=subprocess.DEVNULL,
        )

    def cli_json(self, *args: str, **kwargs: Any) -> Any:
        result = self.cli(*args, "--json", **kwargs)
        assert result.returncode == 0, (
            f"{args}: {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        return json.loads(result.stdout)

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.cli_json("show", job_id)
        return result

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 120.0) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def reached() -> dict[str, Any] | None:
            seen[:] = [self.job(job_id)]
            return seen[0] if seen[0]["status"] in statuses else None

        try:
            return poll_until(reached, timeout=timeout, interval=0.1)
        except TimeoutError:
            raise AssertionError(
                f"{job_id} stayed {seen[0]['status']}, wanted {statuses}"
            ) from None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns)


class MeshdFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Meshd] = []

    def __call__(self, name: str = "data", **kwargs: Any) -> Meshd:
        daemon = Meshd(self.tmp_path / name, **kwargs)
        self.started.append(daemon)
        return daemon

    def close(self) -> None:
        for daemon in self.started:
            daemon.kill()
