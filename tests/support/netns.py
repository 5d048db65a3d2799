"""Run a command with no network but loopback: ``unshare -n`` plus ``ip link set lo up``.

Anything that might make PlatformIO or esphome reach for the internet (a compile that
could resolve a missing package, ``esphome config`` for an ESP32) runs under this
prefix, whatever namespace the test session itself is in.
"""

from __future__ import annotations

import shutil
import subprocess

NETNS_PREFIX: tuple[str, ...] = (
    "unshare",
    "-n",
    "sh",
    "-c",
    'ip link set lo up && exec "$@"',
    "sh",
)


def isolated(*argv: str) -> tuple[str, ...]:
    """``argv`` wrapped to run in a fresh network namespace with only loopback up."""
    return (*NETNS_PREFIX, *argv)


def netns_available() -> bool:
    """Whether ``unshare -n`` works here (root, util-linux and iproute2 present)."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    result = subprocess.run([*NETNS_PREFIX, "true"], capture_output=True, check=False)
    return result.returncode == 0
