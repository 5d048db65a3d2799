"""Bounded waits on real conditions: the one way tests synchronise with a process or loop.

Timeouts are safety nets against hangs, never assertions about speed: a wait that
runs out raises ``TimeoutError`` (naming what was awaited), which fails the test with
that name instead of hanging it until pytest-timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Generous: CI shares 2 cores between many processes.
DEFAULT_TIMEOUT = 60.0
SYNC_INTERVAL = 0.05
ASYNC_INTERVAL = 0.005


def poll_until(
    check: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    interval: float = SYNC_INTERVAL,
) -> T:
    """Call ``check`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or check}")
        time.sleep(interval)


async def until_async(
    check: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
    interval: float = ASYNC_INTERVAL,
) -> T:
    """:func:`poll_until` inside an event loop: the loop keeps running between checks."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = check()
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or check}") from None


async def until_notified(
    add_listener: Callable[[Callable[[object], None]], Callable[[], None]],
    check: Callable[[], object],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "",
) -> None:
    """Wait for ``check`` to hold, re-checking each time the listener fires (no polling).

    ``add_listener`` registers a callback and returns its remover, as
    ``Registry.add_listener`` and ``EventBus.add_listener`` do.
    """
    changed = asyncio.Event()
    remove = add_listener(lambda _change: changed.set())
    try:
        async with asyncio.timeout(timeout):
            while not check():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or check}") from None
    finally:
        remove()
