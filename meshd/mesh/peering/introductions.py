"""Peers introduce themselves when a session opens: ``node_info``, then ``lane_status``.

On every new session we send our ``node_info`` (name, esphome version, whether we
accept builds); the status pusher sends ``lane_status`` beside it. What the peer sends
us goes into the registry. Once both of its messages have arrived the peer counts as
introduced: the scheduler, which holds compiles back while a trusted receiver is
still connecting, can judge it now (``on_introduced``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

from meshd.link import LinkError, LinkSession, Router
from meshd.link.messages import MAX_TOOLCHAINS, LaneStatus, NodeInfo
from meshd.mesh.peering.registry import Registry
from meshd.mesh.tasks import TaskSet

_NODE_INFO = "node_info"
_LANE_STATUS = "lane_status"
_INTRODUCED = frozenset({_NODE_INFO, _LANE_STATUS})


class Introductions:
    def __init__(
        self,
        registry: Registry,
        *,
        name: str,
        accepts_builds: bool,
        esphome_version: Callable[[], str],
        on_introduced: Callable[[str], None],
        provisions: bool = False,
        toolchains: Callable[[], Sequence[str]] = tuple,
    ) -> None:
        self.provisions = provisions
        self._toolchains = toolchains
        self.registry = registry
        self.name = name
        self.accepts_builds = accepts_builds
        self._esphome_version = esphome_version
        self._on_introduced = on_introduced
        self._heard: dict[str, set[str]] = {}
        self._tasks = TaskSet("introductions")

    def register(self, router: Router) -> None:
        router.on(LaneStatus, self._on_lane_status)
        router.on(NodeInfo, self._on_node_info)

    def opened(self, session: LinkSession) -> None:
        """A session opened: tell the peer who we are (in the background)."""
        self._tasks.spawn(self._introduce(session), name="introduce")

    def closed(self, session: LinkSession) -> None:
        self._heard.pop(session.peer.fingerprint_hex, None)

    async def stop(self) -> None:
        await self._tasks.cancel()

    @property
    def pending(self) -> int:
        """Introductions still being sent."""
        return len(self._tasks)

    async def _introduce(self, session: LinkSession) -> None:
        # A session that ends before it took our node_info needs no introduction.
        with contextlib.suppress(LinkError):
            await session.send(
                NodeInfo(
                    name=self.name,
                    esphome_version=self._esphome_version(),
                    accepts_builds=self.accepts_builds,
                    provisions=self.provisions,
                    toolchains=tuple(self._toolchains())[:MAX_TOOLCHAINS],
                )
            )

    def _heard_from(self, session: LinkSession, what: str) -> None:
        fingerprint = session.peer.fingerprint_hex
        heard = self._heard.setdefault(fingerprint, set())
        heard.add(what)
        if heard >= _INTRODUCED:
            self._on_introduced(fingerprint)

    async def _on_lane_status(self, session: LinkSession, message: LaneStatus) -> None:
        self.registry.link_status(
            session.peer.fingerprint_hex,
            idle=message.idle,
            idle_since=message.idle_since,
            running=message.running,
            queued=message.queued,
            esphome_version=message.esphome_version or None,
            toolchains=message.toolchains,
        )
        self._heard_from(session, _LANE_STATUS)

    async def _on_node_info(self, session: LinkSession, message: NodeInfo) -> None:
        self.registry.link_hello(
            session.peer.fingerprint_hex,
            name=message.name,
            protocol=session.peer.version,
            esphome_version=message.esphome_version or None,
            accepts_builds=message.accepts_builds,
            provisions=message.provisions,
            toolchains=message.toolchains,
        )
        self._heard_from(session, _NODE_INFO)
