"""run_process: lines split as a terminal shows them, output capped, groups killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from meshd.toolchain.process import MAX_LINE, run_process


async def _lines(script: str) -> list[str]:
    lines: list[str] = []
    result = await run_process([sys.executable, "-c", script], on_line=lines.append)
    assert result.returncode == 0
    return lines


async def test_carriage_return_redraws_are_separate_lines() -> None:
    script = (
        "import sys, time\n"
        "for p in (10, 50, 100):\n"
        "    sys.stdout.write(f'\\rUploading: {p}%'); sys.stdout.flush(); time.sleep(0.05)\n"
        "sys.stdout.write('\\r\\nOK\\nwin\\r\\nlast')\n"
    )
    assert await _lines(script) == [
        "Uploading: 10%",
        "Uploading: 50%",
        "Uploading: 100%",
        "OK",
        "win",
        "last",
    ]


async def test_a_runaway_line_is_cut_into_bounded_pieces() -> None:
    lines = await _lines(f"import sys; sys.stdout.write('x' * {MAX_LINE * 2 + 10})")
    assert [len(line) for line in lines] == [MAX_LINE, MAX_LINE, 10]


async def test_a_character_split_across_writes_is_not_mangled() -> None:
    script = (
        "import sys, time\n"
        "sys.stdout.buffer.write(b'caf\\xc3'); sys.stdout.flush(); time.sleep(0.1)\n"
        "sys.stdout.buffer.write(b'\\xa9 ok\\n'); sys.stdout.flush()\n"
    )
    assert await _lines(script) == ["café ok"]


async def test_lines_arrive_while_the_process_runs() -> None:
    seen: list[str] = []
    started = asyncio.Event()

    def on_line(line: str) -> None:
        seen.append(line)
        started.set()

    task = asyncio.create_task(
        run_process(
            [sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(30)"],
            on_line=on_line,
            kill_grace=0.5,
        )
    )
    await asyncio.wait_for(started.wait(), 20)
    assert seen == ["hi"]
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the cancel did not propagate")


async def test_a_grandchild_holding_the_pipe_does_not_keep_the_run_alive(tmp_path: Path) -> None:
    # The leader exits at once; its child (same group) keeps stdout open for 60 s.
    marker = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "print('leader done', flush=True)\n"
    )
    lines: list[str] = []
    result = await asyncio.wait_for(
        run_process([sys.executable, "-c", script], on_line=lines.append), 30
    )
    assert result.returncode == 0
    assert lines == ["leader done"]
    pid = int(marker.read_text())
    await _wait_gone(pid)


async def test_a_pipe_held_outside_the_group_is_abandoned(tmp_path: Path) -> None:
    # The grandchild leaves the group (setsid), so killing the group cannot close the
    # pipe; the run still ends with the leader's exit code, and the escapee is ours
    # to clean up here.
    marker = tmp_path / "escapee.pid"
    script = (
        "import subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
        "print('bye', flush=True)\n"
        "sys.exit(3)\n"
    )
    lines: list[str] = []
    try:
        result = await asyncio.wait_for(
            run_process([sys.executable, "-c", script], on_line=lines.append), 30
        )
    finally:
        if marker.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
    assert result.returncode == 3
    assert lines == ["bye"]


async def _wait_gone(pid: int) -> None:
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"process {pid} outlived the run")


async def test_a_failing_line_handler_stops_the_tool_at_once() -> None:
    # The job log's disk is full: the handler raises, and a tool still writing must be
    # stopped, not left blocked on a pipe nobody reads.
    def on_line(_line: str) -> None:
        raise OSError(28, "No space left on device")

    script = "import sys\nwhile True:\n    sys.stdout.write('x' * 1000 + '\\n')\n"
    try:
        await asyncio.wait_for(
            run_process([sys.executable, "-c", script], on_line=on_line, kill_grace=0.5), 30
        )
    except OSError as exc:
        assert exc.errno == 28
    else:
        raise AssertionError("the handler's failure was swallowed")
