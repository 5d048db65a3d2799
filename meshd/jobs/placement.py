"""Where the compile lane runs a job: the seam between the engine and the mesh.

The engine only knows "local slot" and "somewhere else, named by a runner id". A
``Placer`` decides, for the FIFO queue as it stands, what each job does now. Without
a mesh the ``LocalPlacer`` runs everything in the local slot, one at a time. The mesh
provides a placer backed by its scheduler and a ``Runner`` for remote compiles.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meshd.jobs.model import LOCAL_RUNNER, Job


class Where(enum.StrEnum):
    LOCAL = "local"
    REMOTE = "remote"
    WAIT = "wait"
    FAIL = "fail"


@dataclass(frozen=True)
class Placement:
    where: Where
    reason: str
    runner: str = LOCAL_RUNNER
    """``local``, or the fingerprint of the receiver for a remote compile."""


class Placer(Protocol):
    def place(self, queued: Sequence[Job], local_free: bool) -> Sequence[Placement]:
        """One placement per queued job, in queue order. Must not block or do I/O."""
        ...


class Reroute(Exception):
    """A remote runner lost its receiver: put the job back in the queue elsewhere."""

    def __init__(self, reason: str, exclude: str | None = None) -> None:
        super().__init__(reason)
        self.exclude = exclude


class LocalPlacer:
    """No mesh: the oldest job takes the local slot when it is free."""

    def place(self, queued: Sequence[Job], local_free: bool) -> Sequence[Placement]:
        placements = []
        for _job in queued:
            if local_free:
                placements.append(Placement(Where.LOCAL, "local compile lane"))
                local_free = False
            else:
                placements.append(Placement(Where.WAIT, "waiting for the local compile slot"))
        return placements
