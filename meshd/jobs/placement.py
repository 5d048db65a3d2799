"""Where the compile lane runs a job: the seam between the engine and the mesh.

The engine only knows "the local slot" and "a receiver, named by its fingerprint". A
``Placer`` decides, for the FIFO queue as it stands, what each job does now, and says
why twice: a ``ReasonCode`` for programs and tests, and a sentence for people. Both
are stored on the job (``reason_code``, ``reason``). The lane tells the placer which
receivers its running remote jobs occupy, so the placer needs no way back into the
lane. Without a mesh the ``LocalPlacer`` runs everything in the local slot, one at a
time; the mesh provides a placer backed by its scheduler and a ``Runner`` for remote
compiles, which reads the chosen receiver from the placement.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meshd.jobs.model import LOCAL_RUNNER, Job


class Where(enum.StrEnum):
    """What the lane does with a queued job now."""

    LOCAL = "local"  # run it in the local slot
    REMOTE = "remote"  # run it on the placement's receiver (no local slot used)
    WAIT = "wait"  # leave it queued; the lane asks again on the next change
    FAIL = "fail"  # end it failed with the placement's reason (it can never be placed)


class ReasonCode(enum.StrEnum):
    """Why a job was placed where it was; stable values, listed in docs/API.md."""

    NO_MESH = "no_mesh"
    """This node does not offload: the local slot, or wait for it."""
    UPLOAD_LOCAL = "upload_local"
    """Uploads always run on the node that reaches the device."""
    MESH_STARTING = "mesh_starting"
    """The mesh has not started yet: only forced-local jobs run."""
    FORCED_LOCAL = "forced_local"
    """The job may not leave this node (``local: true``, or a receiver's copy)."""
    REROUTE_LIMIT = "reroute_limit"
    """Too many receivers were lost while building it: built locally as a last resort."""
    RECEIVERS_CONNECTING = "receivers_connecting"
    """No receiver is eligible yet, but a trusted one is still on its first connect."""
    NO_EXACT_RECEIVER = "no_exact_receiver"
    """Policy ``exact_required`` and no receiver runs our esphome version exactly."""
    NO_ELIGIBLE_RECEIVER = "no_eligible_receiver"
    """No receiver may take it (untrusted, offline, other version...): built locally."""
    IDLE_RECEIVER = "idle_receiver"
    """Sent to the eligible receiver idle the longest (under ``provision``: the one idle
    the longest of those that have the esphome version ready)."""
    IDLE_PROVISIONING_RECEIVER = "idle_provisioning_receiver"
    """Policy ``provision``: no idle receiver has the version ready, so it went to the
    idle one idle the longest that provisions it first."""
    RECEIVERS_BUSY = "receivers_busy"
    """Every eligible receiver is busy: the local slot, or wait for either."""
    RECEIVERS_BUSY_NO_LOCAL = "receivers_busy_no_local"
    """Every eligible receiver is busy and include-local is off: wait for one."""
    WAITING_FOR_DEVICE = "waiting_for_device"
    """An armed upload: it waits for its device to announce itself (not a placement;
    recorded on the job while it waits)."""
    DEVICE_NOT_SEEN = "device_not_seen"
    """An armed upload expired: its device did not come online before the deadline."""


@dataclass(frozen=True)
class Placement:
    """One decision for one job: what, why (code and sentence), and on which receiver."""

    where: Where
    code: ReasonCode
    reason: str
    receiver: str | None = None
    """The fingerprint of the chosen receiver; set exactly when ``where`` is REMOTE."""

    def __post_init__(self) -> None:
        if (self.where is Where.REMOTE) != (self.receiver is not None):
            raise ValueError(f"a {self.where.value} placement with receiver {self.receiver!r}")

    @property
    def runner(self) -> str:
        """What the job's ``runner`` field shows: ``local`` or the receiver's fingerprint."""
        return self.receiver if self.receiver is not None else LOCAL_RUNNER


class Placer(Protocol):
    def place(
        self, queued: Sequence[Job], *, local_free: bool, busy_receivers: frozenset[str]
    ) -> Sequence[Placement]:
        """One placement per queued job, in queue order. Must not block or do I/O.

        ``busy_receivers`` are the receivers the lane's running remote jobs occupy.
        """
        ...


class LocalPlacer:
    """No mesh: the oldest job takes the local slot when it is free."""

    def place(
        self, queued: Sequence[Job], *, local_free: bool, busy_receivers: frozenset[str]
    ) -> Sequence[Placement]:
        placements = []
        for _job in queued:
            if local_free:
                placements.append(Placement(Where.LOCAL, ReasonCode.NO_MESH, "local compile lane"))
                local_free = False
            else:
                placements.append(
                    Placement(Where.WAIT, ReasonCode.NO_MESH, "waiting for the local compile slot")
                )
        return placements
