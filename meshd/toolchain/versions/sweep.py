"""Which provisioned toolchains a sweep removes: a pure function over a snapshot.

Rules, in order:

1. a toolchain in use (leased by a running job, in this process or another) is
   never removed, whatever the other rules say;
2. one unused for longer than ``max_idle`` seconds is removed;
3. while the rest together exceed ``disk_budget`` bytes, the least recently used
   one not in use is removed (toolchains in use still count towards the budget:
   they take the disk all the same).

The store takes the snapshot (sizes, last use, leases) and carries the decisions out
under the toolchain's locks, re-checking "in use" at the moment of removal.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DAY: Final = 86400.0
# An esphome venv is ~250 MB (PlatformIO's packages live in its core dir, not here).
DEFAULT_MAX_IDLE: Final = 30 * DAY
DEFAULT_DISK_BUDGET: Final = 4 * 1024**3


@dataclass(frozen=True)
class SweepPolicy:
    """When a provisioned toolchain goes (settings ``toolchain_max_idle``/``_disk_budget``)."""

    max_idle: float | None = DEFAULT_MAX_IDLE
    """Seconds since last use after which a toolchain is removed; None: never for age."""
    disk_budget: int | None = DEFAULT_DISK_BUDGET
    """Bytes all provisioned toolchains may take together; None: no budget."""

    def __post_init__(self) -> None:
        if self.max_idle is not None and self.max_idle < 0:
            raise ValueError("max_idle must be >= 0 seconds")
        if self.disk_budget is not None and self.disk_budget < 0:
            raise ValueError("disk_budget must be >= 0 bytes")


@dataclass(frozen=True)
class Installed:
    """One provisioned toolchain as the sweep sees it."""

    version: str
    last_used: float
    size: int
    in_use: bool


@dataclass(frozen=True)
class SweepDecision:
    version: str
    remove: bool
    reason: str
    size: int = 0


def plan_sweep(
    installed: Sequence[Installed], policy: SweepPolicy, now: float
) -> list[SweepDecision]:
    """One decision per toolchain: remove or keep, and why."""
    decisions: dict[str, SweepDecision] = {}
    kept: list[Installed] = []
    for item in installed:
        idle = now - item.last_used
        if item.in_use:
            decisions[item.version] = SweepDecision(item.version, False, "in use", item.size)
            kept.append(item)
        elif policy.max_idle is not None and idle > policy.max_idle:
            decisions[item.version] = SweepDecision(
                item.version, True, f"unused for {_duration(idle)}", item.size
            )
        else:
            kept.append(item)
    total = sum(item.size for item in kept)
    budget = policy.disk_budget
    for item in sorted(kept, key=lambda i: (i.last_used, i.version)):
        if budget is None or total <= budget:
            break
        if item.in_use:
            continue
        decisions[item.version] = SweepDecision(
            item.version,
            True,
            f"over the disk budget ({_size(total)} > {_size(budget)}); least recently used",
            item.size,
        )
        total -= item.size
    for item in kept:
        decisions.setdefault(item.version, SweepDecision(item.version, False, "kept", item.size))
    return [decisions[item.version] for item in installed]


def disk_usage(root: Path) -> int:
    """Bytes allocated under ``root`` (hard links once, symlinks not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
    return total


def _duration(seconds: float) -> str:
    if seconds >= 2 * DAY:
        return f"{seconds / DAY:.0f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds:.0f} s"


def _size(size: int) -> str:
    return f"{size / 1024**2:.0f} MiB"
