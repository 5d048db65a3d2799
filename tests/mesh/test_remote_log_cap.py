"""A receiver cannot grow an offloader's job log without bound (docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshd.link.messages import JobState, LogLine
from meshd.mesh.content.blobs import BlobExchange
from meshd.mesh.content.stores import StoreSet
from meshd.mesh.dispatch import offloader
from meshd.mesh.dispatch.offloader import RemoteCompileRunner
from meshd.toolchain.tools import Toolchain


async def test_a_flood_of_log_lines_is_cut_with_one_truncation_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(offloader, "MAX_REMOTE_LOG_BYTES", 1000)
    blobs = BlobExchange(StoreSet(tmp_path / "cas"), max_blob=1 << 20, accept_unrequested=bool)
    runner = RemoteCompileRunner(
        Toolchain(esphome=("esphome",), esptool=("esptool",)),
        blobs,
        lambda _fp: None,
        tmp_path / "out",
        esphome_version=lambda: "2026.6.5",
    )
    kept: list[str] = []
    ctx: Any = SimpleNamespace(log=kept.append, progress=lambda _p: None)
    queue: asyncio.Queue[object] = asyncio.Queue()
    for i in range(5000):  # 5000 lines of 100 bytes: 500 kB sent
        queue.put_nowait(LogLine("j1", f"{i:05d} " + "x" * 94))
    queue.put_nowait(JobState("j1", "completed"))
    await runner._follow_remote(ctx, queue, "ab" * 32)
    assert sum(len(line) + 1 for line in kept[:-1]) <= 1000
    assert len(kept) == 10
    assert kept[-1].startswith("[meshd] log truncated")
    assert sum("truncated" in line for line in kept) == 1
