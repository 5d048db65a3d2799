"""What a receiver advertises over mDNS, and keeping it current.

Only a receiver advertises (an offloader-only node has nothing to offer). The advert
carries the compile lane's idleness so offloaders can pick the receiver idle the
longest before they open a session, and whether it provisions toolchains and which
ones it has ready (``prov``, ``tc``), so the scheduler can prefer a receiver with the
wanted version ready before that receiver's ``node_info`` arrived.
:func:`follow_compile_lane` republishes on every compile-lane change and
:func:`follow_toolchains` whenever a toolchain becomes ready or is swept (discovery
coalesces bursts and sends nothing when the advert did not change).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meshd.jobs.events import Event, EventBus, LaneStatusChanged
from meshd.jobs.lanes import LaneSnapshot
from meshd.jobs.model import LaneName
from meshd.link.limits import PROTOCOL_VERSION
from meshd.mesh.peering.discovery import AdvertInfo, Discovery, advert_toolchains

ToolchainWatch = Callable[[Callable[[], None]], Callable[[], None]]
"""Subscribe to "the ready toolchains changed" (``ToolchainStore.watch``); returns the
remover."""


def receiver_advert(
    *,
    fingerprint: str,
    name: str,
    port: int,
    esphome_version: str,
    lane: LaneSnapshot,
    provisions: bool = False,
    toolchains: Sequence[str] = (),
) -> AdvertInfo:
    """The advert of a receiver listening on ``port`` whose compile lane is ``lane``;
    ``toolchains`` are its ready ones, most recently used first."""
    return AdvertInfo(
        fingerprint=fingerprint,
        name=name,
        port=port,
        protocol=PROTOCOL_VERSION,
        esphome_version=esphome_version,
        accepts_builds=True,
        idle=lane.idle,
        idle_since=lane.idle_since,
        provisions=provisions,
        toolchains=advert_toolchains(toolchains),
    )


def follow_compile_lane(
    bus: EventBus,
    discovery: Discovery,
    toolchains: Callable[[], Sequence[str]] | None = None,
) -> Callable[[], None]:
    """Republish the advert's idleness on every compile-lane change; returns the unlisten.

    With ``toolchains``, a lane that turns idle also refreshes ``tc``: a job that just
    ended moved its toolchain to the front of the most-recently-used order.
    """

    def on_event(event: Event) -> None:
        if isinstance(event, LaneStatusChanged) and event.snapshot.lane is LaneName.COMPILE:
            if toolchains is not None and event.snapshot.idle:
                discovery.update_advert(toolchains=toolchains())
            discovery.update_lane(event.snapshot.idle, event.snapshot.idle_since)

    return bus.add_listener(on_event)


def follow_toolchains(
    watch: ToolchainWatch, discovery: Discovery, toolchains: Callable[[], Sequence[str]]
) -> Callable[[], None]:
    """Republish ``tc`` whenever a toolchain is published or swept; returns the unlisten."""
    return watch(lambda: discovery.update_advert(toolchains=toolchains()))
