"""The systemd notify protocol (``sd_notify(3)``) without a dependency.

A ``Type=notify`` service tells systemd ``READY=1`` when it serves, ``WATCHDOG=1``
at least every ``WatchdogSec`` and ``STOPPING=1`` when it shuts down, each as one
datagram to the unix socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). Outside systemd the variable is unset and every call is a no-op,
so the daemon calls these unconditionally.

Watchdog pings are sent from a task on the daemon's event loop: if the loop wedges,
pings stop and systemd restarts the service, which is the point of the watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

_LOGGER = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET``; silent when there is none."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        raw = environ.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if raw.startswith("@"):
            self.address = "\0" + raw[1:]
        elif raw.startswith("/"):
            self.address = raw
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        """Send one message (e.g. ``READY=1``); False if there is no socket or it failed."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message.encode())
        except OSError as exc:
            # systemd gone or a wrong socket: the daemon keeps serving regardless.
            _LOGGER.warning("sd_notify %r failed: %s", message, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` every half watchdog interval until cancelled."""
        if self.watchdog_interval is None or self.address is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Start the ping task, or return None when systemd asked for no watchdog."""
        if self.watchdog_interval is None or self.address is None:
            return None
        return asyncio.create_task(self.watchdog(), name="meshd-watchdog")


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if the watchdog is meant for this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    with contextlib.suppress(ValueError):
        value = int(usec)
        if value > 0:
            # Half the timeout, as sd_watchdog_enabled(3) recommends: one late ping
            # (a GC pause, a slow disk) never costs a restart.
            return value / 2 / 1_000_000
    return None
