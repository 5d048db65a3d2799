"""Who may hold a connection to the peer port before proving who they are.

Anyone on the LAN can open TCP connections to a receiver. Until the handshake ends a
connection is only a stranger's, so strangers must not be able to use up what trusted
peers need. ``Admission`` keeps the books for handshaking connections (no sockets, no
clock of its own; ``LinkServer`` asks it on every accept):

* at most ``per_source`` handshaking connections per source address: a ninth idle
  socket from one host is refused at once;
* at most ``total`` handshaking connections overall, well below the server's overall
  connection cap, so established sessions always have room. When all are taken, a
  newcomer from a source holding fewer of them than the busiest source displaces that
  source's oldest connection: a flood from a few hosts can delay a trusted peer by one
  reconnect at most, never lock it out;
* every handshaking connection is bounded in time by the handshake timeout (the
  server's job), so even a flood from many addresses drains by itself.

``LogLimiter`` keeps a flood from flooding the log as well: one line per key per
interval, with a count of what it kept quiet.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

# Handshaking connections one source address may hold. A node keeps one session per
# peer and dials again only after a failure; even several nodes behind one NAT
# address need far fewer than this.
MAX_HANDSHAKING_PER_SOURCE: Final = 8

# Handshaking connections overall. A quarter of the server's connection cap
# (server.MAX_CONNECTIONS = 256): the rest is always free for established sessions.
MAX_HANDSHAKING: Final = 64

# One log line per reason and source per minute is enough to see an attack without
# letting it grow the journal.
LOG_INTERVAL: Final = 60.0

# Keys the log limiter remembers; beyond this the oldest are forgotten (a flood from
# many addresses must not grow memory either).
MAX_LOG_KEYS: Final = 1024

C = TypeVar("C", bound=Hashable)


@dataclass
class _SourceBook(Generic[C]):
    """The handshaking connections of one source, oldest first."""

    connections: dict[C, None] = field(default_factory=dict)


class Admission(Generic[C]):
    """Per-source and total caps on handshaking connections (``C`` names a connection)."""

    def __init__(
        self, *, per_source: int = MAX_HANDSHAKING_PER_SOURCE, total: int = MAX_HANDSHAKING
    ) -> None:
        if not 1 <= per_source <= total:
            raise ValueError("need 1 <= per_source <= total")
        self.per_source = per_source
        self.total = total
        self._sources: dict[str, _SourceBook[C]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def connections(self) -> list[C]:
        """Every handshaking connection, oldest source first."""
        return [c for book in self._sources.values() for c in book.connections]

    def held_by(self, source: str) -> int:
        book = self._sources.get(source)
        return len(book.connections) if book is not None else 0

    def admit(self, connection: C, source: str) -> tuple[bool, C | None]:
        """Whether ``connection`` from ``source`` may start its handshake, and which
        handshaking connection (if any) must be dropped to make room for it."""
        held = self.held_by(source)
        if held >= self.per_source:
            return False, None
        victim: C | None = None
        if self._count >= self.total:
            busiest, book = max(self._sources.items(), key=lambda item: len(item[1].connections))
            if len(book.connections) <= held:
                return False, None  # the newcomer's source is (one of) the busiest itself
            victim = next(iter(book.connections))
            self.release(victim, busiest)
        self._sources.setdefault(source, _SourceBook()).connections[connection] = None
        self._count += 1
        return True, victim

    def release(self, connection: C, source: str) -> None:
        """The handshake of ``connection`` ended (either way); idempotent."""
        book = self._sources.get(source)
        if book is None or connection not in book.connections:
            return
        del book.connections[connection]
        self._count -= 1
        if not book.connections:
            del self._sources[source]


class LogLimiter:
    """Say something once per ``interval`` per key; count what was kept quiet."""

    def __init__(
        self,
        interval: float = LOG_INTERVAL,
        *,
        max_keys: int = MAX_LOG_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._last: collections.OrderedDict[Hashable, tuple[float, int]] = collections.OrderedDict()

    def allow(self, key: Hashable) -> int | None:
        """None to stay quiet; else how many events since the last line (0 = none)."""
        now = self._clock()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.interval:
            self._last[key] = (entry[0], entry[1] + 1)
            return None
        suppressed = entry[1] if entry is not None else 0
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        while len(self._last) > self.max_keys:
            self._last.popitem(last=False)
        return suppressed
