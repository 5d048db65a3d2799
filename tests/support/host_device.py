"""A real ESPHome device on this machine: the ``host:`` platform firmware as a process.

The host firmware is a Linux program that runs the ESPHome core, logs to stdout and
serves the native OTA protocol. An OTA upload writes ``<exe>.ota.new``, checks it is
an ELF for the same machine, renames it over the running executable and ``execv``s
it (``components/ota/ota_backend_host.cpp``). So each device runs a private *copy*
of a compiled program: an upload replaces the copy, never the build output.

ESPHome binds its OTA socket to all interfaces. Tests must only be reachable on
loopback, so every device runs with a tiny LD_PRELOAD shim (built once per session
with the system gcc) that turns a bind to the wildcard address into a bind to
127.0.0.1 / ::1. The shim survives the re-exec, since execv keeps the environment.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# The line ESPHome's Application logs when setup() completes: one per boot.
BOOT_LINE = "setup() finished successfully"
# Logged by the host OTA backend right before the re-exec.
REEXEC_LINE = "will re-exec on reboot"

HOST_YAML = """\
esphome:
  name: {name}
  on_boot:
    then:
      - logger.log: "meshd build marker {marker}"
host:
logger:
  level: DEBUG
ota:
  - platform: esphome
    port: {port}
    password: "{password}"
"""

_LOOPBACK_SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* Test-only: keep every wildcard bind of the ESPHome host device on loopback. */
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  static int (*real_bind)(int, const struct sockaddr *, socklen_t);
  if (!real_bind)
    real_bind = (int (*)(int, const struct sockaddr *, socklen_t)) dlsym(RTLD_NEXT, "bind");
  if (addr && addr->sa_family == AF_INET && len >= (socklen_t) sizeof(struct sockaddr_in)) {
    struct sockaddr_in a;
    memcpy(&a, addr, sizeof a);
    if (a.sin_addr.s_addr == htonl(INADDR_ANY)) {
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      return real_bind(fd, (const struct sockaddr *) &a, sizeof a);
    }
  } else if (addr && addr->sa_family == AF_INET6
             && len >= (socklen_t) sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 a;
    memcpy(&a, addr, sizeof a);
    if (!memcmp(&a.sin6_addr, &in6addr_any, sizeof a.sin6_addr)) {
      a.sin6_addr = in6addr_loopback;
      return real_bind(fd, (const struct sockaddr *) &a, sizeof a);
    }
  }
  return real_bind(fd, addr, len);
}
"""


def host_yaml(*, name: str, port: int, password: str, marker: str) -> str:
    """A minimal host-platform configuration with native OTA and a boot marker line."""
    return HOST_YAML.format(name=name, port=port, password=password, marker=marker)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_loopback_shim(dest: Path) -> Path:
    """Compile the bind-to-loopback LD_PRELOAD shim into ``dest``; return the .so path."""
    dest.mkdir(parents=True, exist_ok=True)
    source = dest / "loopback_bind.c"
    source.write_text(_LOOPBACK_SHIM_C, encoding="utf-8")
    lib = dest / "libmeshd_loopback_bind.so"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    return lib


def listening_addresses(port: int) -> set[str]:
    """Local addresses (``ip:port`` hex as in /proc/net/tcp*) with a LISTEN socket on ``port``."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state = fields[1], fields[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


# 127.0.0.1 and ::1 as /proc/net/tcp{,6} spell them (little-endian words).
LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000"}


class HostDevice:
    """A running copy of a host firmware, with its log captured line by line."""

    def __init__(self, program: Path, workdir: Path, *, port: int, shim: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = port
        self.shim = shim
        self.exe = workdir / "program"
        shutil.copy2(program, self.exe)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._controller: int | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 20.0) -> HostDevice:
        """Start the device and wait until its OTA port listens."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            # Preferences go to $HOME/.esphome/prefs; keep them in the device's dir.
            "HOME": str(self.workdir),
            "LD_PRELOAD": str(self.shim),
        }
        # The firmware logs through stdio, which a pipe would block-buffer until exit;
        # a pseudo-terminal makes it line-buffered, as on a real console.
        controller, terminal = pty.openpty()
        try:
            self._proc = subprocess.Popen(
                [str(self.exe)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=terminal,
                stderr=terminal,
                start_new_session=True,
            )
        except BaseException:
            os.close(controller)
            raise
        finally:
            os.close(terminal)
        self._controller = controller
        self._reader = threading.Thread(
            target=self._read, args=(controller,), name="host-device-log", daemon=True
        )
        self._reader.start()
        self.wait_listening(timeout)
        return self

    def _read(self, controller: int) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every holder of the terminal side has gone
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = _ANSI_RE.sub("", raw.decode("utf-8", "replace")).rstrip("\r ")
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()

    def count(self, needle: str) -> int:
        with self._cond:
            return sum(needle in line for line in self.lines)

    def wait_for(self, needle: str, *, occurrences: int = 1, timeout: float = 20.0) -> None:
        """Block until ``needle`` has appeared ``occurrences`` times in the log."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(needle in line for line in self.lines) < occurrences:
                left = deadline - time.monotonic()
                if left <= 0 or (self._proc is not None and self._proc.poll() is not None):
                    tail = "\n".join(self.lines[-20:])
                    raise TimeoutError(f"device never logged {needle!r} x{occurrences}:\n{tail}")
                self._cond.wait(min(left, 0.2))

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not listening_addresses(self.port):
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                raise RuntimeError(f"device exited with {code}: {self.lines[-20:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"device did not listen on {self.port}: {self.lines[-20:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the device's process group (SIGTERM, then SIGKILL)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        # Anything the device left in its group goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self._controller is not None:
            os.close(self._controller)
            self._controller = None
        self._proc = None


@dataclass(frozen=True)
class HostFirmware:
    """A host-platform ESPHome project compiled once per session (see tests/conftest.py).

    ``snapshot`` is a private copy of the first build's program and never changes;
    ``program`` is the live build output, which later warm compiles overwrite.
    """

    config: Path
    name: str
    ota_port: int
    password: str
    marker: str
    snapshot: Path
    env: dict[str, str]
    cold_compile_seconds: float
    original_yaml: str

    @property
    def build_path(self) -> Path:
        return self.config.parent / ".esphome" / "build" / self.name

    @property
    def program(self) -> Path:
        return self.build_path / ".pioenvs" / self.name / "program"

    def write_config(self, *, marker: str | None = None, password: str | None = None) -> None:
        """Rewrite the YAML (same name and port, so the build tree stays warm)."""
        self.config.write_text(
            host_yaml(
                name=self.name,
                port=self.ota_port,
                password=self.password if password is None else password,
                marker=self.marker if marker is None else marker,
            ),
            encoding="utf-8",
        )


def write_host_project(
    directory: Path, *, name: str, port: int, password: str, image: bytes, marker: str = "X"
) -> Path:
    """A host config plus an 'already built' image where ``esphome upload`` looks for it.

    Without a StorageJSON, ``esphome upload`` validates the YAML and takes the image
    from the default build path ``<dir>/.esphome/build/<name>/.pioenvs/<name>/program``
    (``CORE.firmware_bin`` for host). Returns the YAML path.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"{name}.yaml"
    config.write_text(host_yaml(name=name, port=port, password=password, marker=marker))
    program = directory / ".esphome" / "build" / name / ".pioenvs" / name / "program"
    program.parent.mkdir(parents=True, exist_ok=True)
    program.write_bytes(image)
    return config
