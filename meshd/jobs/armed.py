"""Armed uploads: the pieces of waiting for a device that are not queue rules.

An upload with ``JobOptions.when_online`` does not join the upload lane when its
prerequisite completes: the engine *arms* it (``Job.waiting = "device"``, a deadline
in ``Job.waiting_until``, both persisted) and parks it on the upload lane, until
``Engine.device_seen(name, address)`` releases it or the deadline passes. The rules
themselves (arm, release, expire, cancel) are the engine's, in one place with the
others; this module holds the timer that wakes the engine at the next deadline, the
hooks' defaults, and the wording of an expiry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

DEFAULT_ARMED_UPLOAD_TTL = 7 * 24 * 3600.0
"""A week: long enough for a device that wakes once a day (or is off over a weekend),
short enough that a forgotten armed upload does not flash a stale build months later."""

# Deadlines are wall-clock (they survive restarts), the loop's timers are monotonic. A
# Pi without a real-time clock jumps forward when NTP syncs after boot; re-checking at
# least this often bounds how late an expiry can be after such a jump.
EXPIRY_RECHECK = 3600.0


def no_device_online(_name: str) -> str | None:
    """Default ``devices_online`` hook: no device monitor, so no device is known online."""
    return None


def no_device_name(_configuration: str) -> str | None:
    """Default ``device_name_of`` hook: without a build record reader no name is known."""
    return None


def describe_duration(seconds: float) -> str:
    """``7 days``, ``1 hour``, ``90 seconds``: the largest unit that divides evenly-ish."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            if abs(count * size - seconds) <= size / 20 or count >= 10:
                return f"{count} {unit}{'s' if count != 1 else ''}"
    count = max(1, round(seconds))
    return f"{count} second{'s' if count != 1 else ''}"


class ExpiryTimer:
    """Calls ``on_due`` at (or shortly after) the earliest of the deadlines it is given."""

    def __init__(self, on_due: Callable[[], None]) -> None:
        self._on_due = on_due
        self._handle: asyncio.TimerHandle | None = None

    def schedule(self, deadlines: Iterable[float]) -> None:
        """Replace any pending wake-up with one at ``min(deadlines)`` (none if empty)."""
        self.cancel()
        earliest = min(deadlines, default=None)
        if earliest is None:
            return
        delay = min(max(0.0, earliest - time.time()), EXPIRY_RECHECK)
        self._handle = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._on_due()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
