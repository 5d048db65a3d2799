"""Advisory file locks (``fcntl.flock``) that an asyncio task can wait for and cancel.

Two daemons on one data directory (or a daemon and ``meshd`` tooling) must not build
the same toolchain at once, and a sweep must not delete one that any process is
using. ``flock`` gives exactly that across processes: an exclusive lock to provision
or sweep, shared locks held by running jobs. Locks belong to the open file, so two
opens in one process conflict like two processes do, and the kernel drops a lock when
its holder dies: a SIGKILLed daemon leaves nothing to clean up.

Waiting is a poll with ``LOCK_NB`` rather than a blocking ``flock`` in a thread: a
thread stuck in ``flock`` cannot be cancelled, and would take the lock after its task
had gone. The interval grows to ``MAX_POLL`` so a long wait (another daemon's pip
run, minutes) costs nothing. Lock files are never deleted: unlinking a lock file that
another process has open is the classic way for two holders to both "own" it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, Self

FIRST_POLL: Final = 0.05
# A lock held by a provisioning elsewhere is held for seconds to minutes; checking
# twice a second is prompt enough and invisible in CPU use.
MAX_POLL: Final = 0.5


class FileLock:
    """One lock file, opened once; ``acquire``/``try_acquire`` then ``release``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def try_acquire(self, *, shared: bool = False) -> bool:
        """Take the lock if nobody conflicting holds it; never waits."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        fd = self._open()
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    async def acquire(
        self, *, shared: bool = False, on_wait: Callable[[], None] | None = None
    ) -> None:
        """Wait (cancellably) until the lock is ours; ``on_wait`` runs once if we must wait."""
        delay = FIRST_POLL
        waited = False
        while not self.try_acquire(shared=shared):
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_POLL)

    def release(self) -> None:
        """Drop the lock (closing the file releases it); a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
