"""``meshd update`` follows installs by the daemon's events, and polls only without them.

The real daemon path runs in tests/daemon/test_fleet_update.py; here a scripted
client shows what the follower asks for, which a real daemon cannot count for us.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from meshd.api.client import DaemonUnreachable
from meshd.cli import fleet


class ScriptedStream:
    def __init__(self, events: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.events = events
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self.events.get()) is not None:
            yield event

    async def close(self) -> None:
        self.closed = True


class ScriptedClient:
    """Jobs whose status the test moves; counts every job fetched."""

    def __init__(self, *, events: bool) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.fetches: list[str] = []
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.stream = ScriptedStream(self.queue) if events else None

    def add(self, config: str) -> dict[str, Any]:
        compile_job = {"id": f"c-{config}", "status": "queued"}
        upload_job = {"id": f"u-{config}", "status": "blocked"}
        self.jobs.update({compile_job["id"]: compile_job, upload_job["id"]: upload_job})
        return {"configuration": config, "compile": compile_job, "upload": upload_job}

    def move(self, job_id: str, status: str, *, event: str = "job_started") -> None:
        self.jobs[job_id] = {**self.jobs[job_id], "status": status}
        self.queue.put_nowait({"type": event, "job": dict(self.jobs[job_id])})

    async def job(self, job_id: str) -> dict[str, Any]:
        self.fetches.append(job_id)
        return dict(self.jobs[job_id])

    async def events(self) -> ScriptedStream:
        if self.stream is None:
            raise DaemonUnreachable("no events here")
        return self.stream


def _follow(client: ScriptedClient, installs: list[dict[str, Any]]) -> asyncio.Task[Any]:
    return asyncio.create_task(
        fleet.follow_installs(client, installs, {}, wait_online=False, quiet=True)  # type: ignore[arg-type]
    )


async def _fetched(client: ScriptedClient, count: int) -> None:
    """Until the follower has fetched ``count`` jobs."""
    while len(client.fetches) < count:
        await asyncio.sleep(0.01)


async def test_only_the_install_an_event_names_is_fetched_again() -> None:
    client = ScriptedClient(events=True)
    installs = [client.add("a.yaml"), client.add("b.yaml")]
    follow = _follow(client, installs)
    await _fetched(client, 4)  # the first full look
    client.fetches.clear()
    for _ in range(50):  # log lines and progress never cost a request
        client.queue.put_nowait({"type": "job_output", "job": client.jobs["c-a.yaml"]})
    client.move("c-a.yaml", "completed", event="job_completed")
    client.move("u-a.yaml", "completed", event="job_completed")
    client.move("c-b.yaml", "failed", event="job_failed")
    client.move("u-b.yaml", "cancelled", event="job_cancelled")
    outcomes = await asyncio.wait_for(follow, 10)
    assert [o["outcome"] for o in outcomes] == ["flashed", "failed"]
    # The first event naming each install fetches its two jobs (both already ended, so
    # its second event costs nothing); the 50 log lines cost nothing either.
    assert client.fetches == ["c-a.yaml", "u-a.yaml", "c-b.yaml", "u-b.yaml"]
    assert client.stream is not None and client.stream.closed


async def test_without_the_events_stream_it_polls_to_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet, "POLL_INTERVAL", 0.01)
    client = ScriptedClient(events=False)
    installs = [client.add("a.yaml")]
    follow = _follow(client, installs)
    await _fetched(client, 6)  # it keeps looking
    client.move("c-a.yaml", "completed")
    client.move("u-a.yaml", "completed")
    outcomes = await asyncio.wait_for(follow, 10)
    assert [o["outcome"] for o in outcomes] == ["flashed"]


async def test_a_stream_that_ends_falls_back_to_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "POLL_INTERVAL", 0.01)
    client = ScriptedClient(events=True)
    installs = [client.add("a.yaml")]
    client.queue.put_nowait(None)  # the daemon closes the websocket at once
    follow = _follow(client, installs)
    await _fetched(client, 6)
    client.jobs["c-a.yaml"]["status"] = "completed"
    client.jobs["u-a.yaml"]["status"] = "completed"
    outcomes = await asyncio.wait_for(follow, 10)
    assert [o["outcome"] for o in outcomes] == ["flashed"]


async def test_a_missed_event_is_caught_by_the_periodic_look(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fleet, "RESYNC_INTERVAL", 0.05)
    client = ScriptedClient(events=True)
    installs = [client.add("a.yaml")]
    follow = _follow(client, installs)
    await _fetched(client, 2)
    # The jobs end without any event reaching the follower.
    client.jobs["c-a.yaml"]["status"] = "completed"
    client.jobs["u-a.yaml"]["status"] = "completed"
    outcomes = await asyncio.wait_for(follow, 10)
    assert [o["outcome"] for o in outcomes] == ["flashed"]


async def test_the_stream_survives_quiet_spells(monkeypatch: pytest.MonkeyPatch) -> None:
    # Several periodic looks pass with no event; the events after them still count (with
    # polling made too slow to finish the test, only the stream can end it).
    monkeypatch.setattr(fleet, "RESYNC_INTERVAL", 0.02)
    monkeypatch.setattr(fleet, "POLL_INTERVAL", 3600.0)
    client = ScriptedClient(events=True)
    installs = [client.add("a.yaml")]
    follow = _follow(client, installs)
    await _fetched(client, 8)  # the first look and at least three periodic ones
    client.jobs["c-a.yaml"]["status"] = "completed"
    client.move("u-a.yaml", "completed", event="job_completed")
    outcomes = await asyncio.wait_for(follow, 10)
    assert [o["outcome"] for o in outcomes] == ["flashed"]
