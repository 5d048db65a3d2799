"""Serial ports without hardware, for esptool.

* :class:`MockBootloader` runs PyPI's ``esp32-mock-bootloader`` (a SLIP ROM-bootloader
  emulator built from esptool's own chip definitions) in its own process group, on a
  PTY (a ``/dev/pts/N`` path, which esphome treats as a serial port) or on TCP
  (``socket://127.0.0.1:PORT``, which esptool opens through pyserial).
* :func:`silent_pty` is a port where nothing answers: esptool keeps trying to connect,
  which is how a cancel during chip detection is exercised.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_ENDPOINT_RE = re.compile(r"(?:on PTY (/dev/\S+))|(?:listening on 127\.0\.0\.1:(\d+))")


def mock_bootloader_command() -> str | None:
    """The mock's console script next to this interpreter (or on PATH), if installed."""
    local = Path(sys.executable).parent / "esp32-mock-bootloader"
    if local.exists():
        return str(local)
    return shutil.which("esp32-mock-bootloader")


class MockBootloader:
    """An emulated ESP ROM bootloader answering as ``chip`` (e.g. ``esp32s3``)."""

    def __init__(self, chip: str, *, pty: bool = True) -> None:
        self.chip = chip
        self.pty = pty
        self.port = ""
        self._proc: subprocess.Popen[str] | None = None
        self._state_dir: str | None = None

    def start(self, timeout: float = 20.0) -> MockBootloader:
        command = mock_bootloader_command()
        if command is None:
            raise RuntimeError("esp32-mock-bootloader is not installed (test dependency)")
        argv = [command, "run", "--chip", self.chip]
        argv += ["--pty"] if self.pty else ["--port", "0", "--bind", "127.0.0.1"]
        # The mock keeps a registry of instances; give each its own, removed on stop.
        self._state_dir = tempfile.mkdtemp(prefix="mock-bootloader-")
        env = {**os.environ, "ESP32_MOCK_BOOTLOADER_STATE_DIR": self._state_dir}
        self._proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            match = _ENDPOINT_RE.search(line)
            if match is not None:
                self.port = match.group(1) or f"socket://127.0.0.1:{match.group(2)}"
                return self
        self.stop()
        raise RuntimeError("esp32-mock-bootloader did not report its endpoint")

    def stop(self) -> None:
        proc = self._proc
        if proc is None:
            self._remove_state()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        self._proc = None
        self._remove_state()

    def _remove_state(self) -> None:
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def __enter__(self) -> MockBootloader:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def silent_pty() -> Iterator[str]:
    """A PTY path nobody answers on; the controlling end is held open, then closed."""
    controller, device = os.openpty()
    try:
        yield os.ttyname(device)
    finally:
        os.close(device)
        os.close(controller)
