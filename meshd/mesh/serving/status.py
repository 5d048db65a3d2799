"""Pushes this node's compile-lane status to every connected peer.

An offloader schedules by the receivers' lane state; over an open session it learns
that state from ``lane_status`` messages instead of waiting for the next mDNS advert.
One pusher task per session sends the status once when the session opens and again on
every change of the compile lane. Bursts coalesce: the pusher always sends the latest
status, never a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from meshd.jobs.engine import Engine
from meshd.jobs.events import Event, LaneStatusChanged
from meshd.jobs.model import LaneName
from meshd.link import LinkError, LinkSession
from meshd.link.messages import MAX_TOOLCHAINS, LaneStatus
from meshd.mesh.tasks import TaskSet


class StatusPusher:
    def __init__(
        self,
        engine: Engine,
        *,
        accepts_builds: bool,
        esphome_version: Callable[[], str],
        toolchains: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.engine = engine
        self._toolchains = toolchains
        self.accepts_builds = accepts_builds
        self._esphome_version = esphome_version
        self._wanted: dict[LinkSession, asyncio.Event] = {}
        self._pushers: dict[LinkSession, asyncio.Task[None]] = {}
        self._tasks = TaskSet("lane-status pushers")  # detached ones too, until they end
        self._stopped = False
        self._remove_listener = engine.bus.add_listener(self._on_event)

    def attach(self, session: LinkSession) -> None:
        """A session opened: push our compile-lane status now and on every change."""
        if self._stopped:
            return  # shutting down: this session is about to be closed
        wanted = asyncio.Event()
        wanted.set()
        self._wanted[session] = wanted
        self._pushers[session] = self._tasks.spawn(
            self._push(session, wanted), name="lane-status-push"
        )

    def detach(self, session: LinkSession) -> None:
        """A session ended: stop pushing to it."""
        self._wanted.pop(session, None)
        pusher = self._pushers.pop(session, None)
        if pusher is not None:
            pusher.cancel()

    async def stop(self) -> None:
        self._stopped = True
        self._remove_listener()
        self._pushers.clear()
        self._wanted.clear()
        await self._tasks.cancel()

    def current(self) -> LaneStatus:
        """The message a peer gets now: busy while we run local work or refuse builds."""
        status = self.engine.lane_status(LaneName.COMPILE)
        return LaneStatus(
            idle=status.idle and self.accepts_builds,
            running=len(status.running) - len(status.remote),
            queued=status.queued,
            idle_since=status.idle_since,
            esphome_version=self._esphome_version(),
            toolchains=tuple(self._toolchains())[:MAX_TOOLCHAINS],
        )

    def refresh(self) -> None:
        """Something the status carries besides the lane changed (a toolchain became
        ready or was swept): push to every session again."""
        for wanted in self._wanted.values():
            wanted.set()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, LaneStatusChanged) and event.snapshot.lane is LaneName.COMPILE:
            for wanted in self._wanted.values():
                wanted.set()

    async def _push(self, session: LinkSession, wanted: asyncio.Event) -> None:
        with contextlib.suppress(LinkError):
            while not session.closed:
                await wanted.wait()
                wanted.clear()
                await session.send(self.current())
