"""The operator's view, wired to the mesh: peer changes as events, link bytes for metrics.

Part of the composition root (only :mod:`meshd.daemon` imports it): it is the one
place that knows both the mesh and the API's needs, so neither imports the other.

* :func:`bridge_peer_events` puts every peer-registry change on the engine's event
  bus as a ``peer_changed`` event, so the status page (and any websocket client) sees
  peers connect, go idle or busy without polling.
* :func:`link_bytes` reads, at scrape time, how many bytes each open peer link carried.
  The link session keeps no byte counters of its own (``meshd/link`` is not changed
  here), so this asks the kernel: ``TCP_INFO`` of the session's socket. Bytes a
  session carried after the last scrape before it closed are not counted; sessions
  are long-lived (one per peer pair), so that tail is small.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from meshd.api.metrics import LinkBytes, tcp_byte_counts
from meshd.jobs.events import EventBus, PeerChanged
from meshd.mesh.node import MeshNode

_LOGGER = logging.getLogger(__name__)


def bridge_peer_events(node: MeshNode, bus: EventBus) -> Callable[[], None]:
    """Publish ``peer_changed`` (``change``, ``fingerprint``, ``peer``) on every registry
    change; ``peer`` is the record as ``/api/v1/peers`` lists it, None once removed.
    Returns the function that stops the bridge."""
    registry = node.registry

    def on_change(change: Any) -> None:
        fingerprint = str(change.fingerprint)
        peer = next((p for p in registry.snapshot() if p.get("fingerprint") == fingerprint), None)
        bus.publish(PeerChanged(str(change.kind), fingerprint, peer))

    return registry.add_listener(on_change)


def link_bytes(node: MeshNode) -> LinkBytes:
    """A reader of ``(peer, session id, sent, received)`` for every open peer link."""

    def read() -> Iterator[tuple[str, bytes, int, int]]:
        for peer in node.peers():
            if not peer.get("connected"):
                continue
            fingerprint = str(peer.get("fingerprint"))
            session = node.connections.session_for(fingerprint)
            if session is None:
                continue
            # LinkSession exposes no transport; its stream writer is the only way to the
            # socket without changing meshd/link. A rename there only loses these counts.
            writer = getattr(session, "_writer", None)
            transport = getattr(writer, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            counts = tcp_byte_counts(sock)
            if counts is not None:
                yield fingerprint, session.peer.session_id, counts[0], counts[1]

    return read
