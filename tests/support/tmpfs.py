"""A real ``meshd serve`` whose data or config directory is a small tmpfs: real ENOSPC.

The daemon runs in a private mount namespace (``unshare --mount --propagation
private``) where ``mount`` is a tmpfs of ``size`` bytes; nothing is mounted in the
test's own namespace, and the tmpfs goes away with the daemon's last process. The test
reads and writes the daemon's files through ``/proc/PID/root`` (``seen``): that is how
``fill`` takes the space away and ``free`` gives it back while the daemon runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Any

from tests.support.daemon import Meshd

_MOUNT = 'mount -t tmpfs -o size="$1",mode=0700 meshd-test "$2" && shift 2 && exec "$@"'


def tmpfs_available() -> str | None:
    """None when a private tmpfs can be mounted here, else why not (a skip reason)."""
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    if os.geteuid() != 0:
        return "mounting a tmpfs in a mount namespace needs root"
    return None


class TmpfsMeshd(Meshd):
    """A daemon with a ``size``-byte tmpfs at ``mount`` (its data dir, or a config dir)."""

    def __init__(self, data_dir: Path, *, mount: Path, size: int, **kwargs: Any) -> None:
        mount.mkdir(parents=True, exist_ok=True)
        wrap = ("unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNT, "sh")
        super().__init__(data_dir, wrap=(*wrap, str(size), str(mount)), **kwargs)
        self.mount = mount

    def seen(self, path: Path) -> Path:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return path
        return Path(f"/proc/{proc.pid}/root") / path.absolute().relative_to("/")

    @property
    def filler(self) -> Path:
        return self.seen(self.mount) / ".filler"

    def free_bytes(self) -> int:
        stat = os.statvfs(self.seen(self.mount))
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Take the tmpfs's free space away, but ``leave`` bytes (rounded to pages)."""
        block = b"\0" * 65536
        with self.filler.open("ab", buffering=0) as handle:
            while (room := self.free_bytes() - leave) > 0:
                try:
                    handle.write(block[: min(room, len(block))])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break

    def free(self) -> None:
        """Give the space back."""
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()
