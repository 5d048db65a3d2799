"""What happens to a compile whose receiver was lost: the mesh's re-route policy.

The engine only re-queues a job whose runner raised ``Reroute``; everything else is
decided here, beside the scheduler that reads the result: the lost receiver is
excluded for this job, the attempt is counted, and after ``MAX_REROUTES`` losses the
job may no longer leave this node (the fleet may be flapping, and the user's install
must still end). The scheduler says so with ``ReasonCode.REROUTE_LIMIT``.
"""

from __future__ import annotations

from dataclasses import replace

from meshd.jobs.options import JobOptions
from meshd.jobs.runner import Reroute

MAX_REROUTES = 3
"""Receivers a compile may lose before it is built locally as a last resort."""


class ReceiverLost(Exception):
    """The receiver of a remote compile went away, or declined it: try another one."""

    def __init__(self, reason: str, receiver: str) -> None:
        super().__init__(reason)
        self.receiver = receiver


def after_loss(options: JobOptions, lost: ReceiverLost) -> Reroute:
    """The ``Reroute`` for a job with ``options`` that just lost ``lost.receiver``."""
    attempts = options.reroutes + 1
    notes = [f"re-routing (attempt {attempts}): {lost}"]
    give_up = attempts >= MAX_REROUTES
    if give_up:
        notes.append(f"lost {attempts} receivers; building locally as a last resort")
    excluded = options.excluded_receivers
    if lost.receiver not in excluded:
        excluded = (*excluded, lost.receiver)
    return Reroute(
        str(lost),
        replace(
            options,
            reroutes=attempts,
            excluded_receivers=excluded,
            force_local=options.force_local or give_up,
        ),
        notes,
    )


def gave_up(options: JobOptions) -> bool:
    """Is this job local only because the re-route policy gave up on receivers?"""
    return options.reroutes >= MAX_REROUTES
