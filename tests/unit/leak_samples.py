"""Tests that leak on purpose, run only by tests/unit/test_leak_guard.py in a subprocess.

Not collected by a normal run (the name does not start with ``test_``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

_KEEP: list[object] = []


async def test_leaks_a_task() -> None:
    _KEEP.append(asyncio.create_task(asyncio.sleep(3600), name="left-behind"))


async def test_leaks_a_timer() -> None:
    asyncio.get_running_loop().call_later(3600, print, "never")


def test_leaks_a_child() -> None:
    child = subprocess.Popen(["sleep", "3600"])
    _KEEP.append(child)  # no ResourceWarning from Popen.__del__: the guard must speak
    Path(os.environ["LEAK_SAMPLE_PID_FILE"]).write_text(str(child.pid))


async def test_cleans_up() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    task.cancel()
    handle = asyncio.get_running_loop().call_later(3600, print, "never")
    handle.cancel()
    child = await asyncio.create_subprocess_exec("true")
    await child.wait()
