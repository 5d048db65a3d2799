"""What a receiver advertises over mDNS, and keeping its lane idleness current.

Only a receiver advertises (an offloader-only node has nothing to offer). The advert
carries the compile lane's idleness so offloaders can pick the receiver idle the
longest before they open a session; :func:`follow_compile_lane` republishes it on
every compile-lane change (discovery coalesces bursts).
"""

from __future__ import annotations

from collections.abc import Callable

from meshd.jobs.events import Event, EventBus, LaneStatusChanged
from meshd.jobs.lanes import LaneSnapshot
from meshd.jobs.model import LaneName
from meshd.link.limits import PROTOCOL_VERSION
from meshd.mesh.peering.discovery import AdvertInfo, Discovery


def receiver_advert(
    *, fingerprint: str, name: str, port: int, esphome_version: str, lane: LaneSnapshot
) -> AdvertInfo:
    """The advert of a receiver listening on ``port`` whose compile lane is ``lane``."""
    return AdvertInfo(
        fingerprint=fingerprint,
        name=name,
        port=port,
        protocol=PROTOCOL_VERSION,
        esphome_version=esphome_version,
        accepts_builds=True,
        idle=lane.idle,
        idle_since=lane.idle_since,
    )


def follow_compile_lane(bus: EventBus, discovery: Discovery) -> Callable[[], None]:
    """Republish the advert's idleness on every compile-lane change; returns the unlisten."""

    def on_event(event: Event) -> None:
        if isinstance(event, LaneStatusChanged) and event.snapshot.lane is LaneName.COMPILE:
            discovery.update_lane(event.snapshot.idle, event.snapshot.idle_since)

    return bus.add_listener(on_event)
