"""Log each bad thing a peer or a device sends once, and a bounded number of them.

Hostile or broken adverts arrive as fast as a LAN can send them; logging each would let
anyone on the network fill the disk. One warning per (subject, reason), at most ``limit``
of them, then a single line saying the rest are no longer logged.
"""

from __future__ import annotations

import logging
from typing import Final

MAX_LOGGED: Final = 256


class LogOnce:
    """Warn once per ``(subject, reason)``; ``what`` names the kind of thing in the log."""

    def __init__(self, logger: logging.Logger, what: str, limit: int = MAX_LOGGED) -> None:
        self._logger = logger
        self._what = what
        self._seen: set[tuple[str, str]] = set()
        self._limit = limit
        self._silenced = False

    def warn(self, subject: str, reason: str) -> None:
        key = (subject, reason)
        if key in self._seen:
            return
        if len(self._seen) >= self._limit:
            if not self._silenced:
                self._silenced = True
                self._logger.warning("too many bad %ss; no longer logging them", self._what)
            return
        self._seen.add(key)
        self._logger.warning("ignoring %s %r: %s", self._what, subject[:120], reason)
