"""The pruner (meshd/mesh/content/pruner.py): unused builds and blobs go, used ones stay."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from meshd.mesh.content.bundle import USED_MARKER
from meshd.mesh.content.pruner import Pruner
from meshd.mesh.content.store import ContentStore

DAY = 24 * 3600.0


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def workdir(root: Path, offloader: str, config: str, *, unused_for: float) -> Path:
    path = root / offloader / config
    path.mkdir(parents=True)
    (path / USED_MARKER).touch()
    age(path / USED_MARKER, unused_for)
    return path


async def test_prunes_what_went_unused_for_the_ttl(tmp_path: Path) -> None:
    builds, store = tmp_path / "builds", ContentStore(tmp_path / "cas")
    old = workdir(builds, "aaaa", "kitchen", unused_for=8 * DAY)
    fresh = workdir(builds, "bbbb", "porch", unused_for=1 * DAY)
    stale_blob = store.path(store.put_bytes(b"old firmware"))
    age(stale_blob, 8 * DAY)
    kept_blob = store.path(store.put_bytes(b"new firmware"))
    pruner = Pruner(builds, lambda: [store], ttl=7 * DAY)
    assert await pruner.prune_once() == (1, 1)
    assert not old.exists() and not old.parent.exists()  # the empty offloader dir too
    assert fresh.exists() and kept_blob.exists() and not stale_blob.exists()
    assert await pruner.prune_once() == (0, 0)


async def test_the_loop_prunes_at_start_and_stops_cleanly(tmp_path: Path) -> None:
    builds, store = tmp_path / "builds", ContentStore(tmp_path / "cas")
    old = workdir(builds, "aaaa", "kitchen", unused_for=8 * DAY)
    pruner = Pruner(builds, lambda: [store], ttl=7 * DAY, interval=3600.0)
    pruner.start()
    try:
        async with asyncio.timeout(30):
            while old.exists():
                await asyncio.sleep(0.01)
    finally:
        await pruner.stop()
    await pruner.stop()  # idempotent
