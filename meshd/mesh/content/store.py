"""A content-addressed blob store: files named by their SHA-256.

Bundles and artifacts travel by digest, so a receiver asks only for content it does
not hold yet (after the first build, usually just the edited YAML), and the offloader
keeps artifacts it already pulled. Writes land in a temporary file and are renamed
into place only once the digest matches, so a truncated or tampered transfer never
becomes a blob.

What is on disk is not trusted either: a blob is re-hashed before the store first
vouches for it (``has``/``missing``, and so before it is served or built from), and one
whose content no longer matches its name is removed and reported missing, so it is
fetched again instead of used. Until the file changes (inode, size, mtime) the check is
not repeated. Opening the store sweeps away whatever is not a blob: stray files, links
and directories, and temporary files an interrupted write left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Final

_LOGGER = logging.getLogger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_SHARD = re.compile(r"^[0-9a-f]{2}$")
TEMP_PREFIX: Final = ".incoming-"
# A temporary file this old belongs to no write in progress (a blob of the largest
# allowed size lands in well under this on any link meshd runs on).
STALE_TEMP_SECONDS: Final = 3600.0
# Files are copied into the store in pieces of this size: memory stays flat for a 20 MiB ELF.
COPY_CHUNK = 1024 * 1024


class ContentError(Exception):
    """A blob did not match its digest or size, or a digest is malformed."""


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ContentError(f"not a SHA-256 hex digest: {digest!r:.80}")
    return digest


def file_digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        # digest -> (inode, size, mtime_ns) of the file last hashed and found right.
        self._verified: dict[str, tuple[int, int, int]] = {}
        # What the store holds, for quotas: counted at open, kept up to date by every
        # commit and removal (a blob written twice at once is counted once).
        self.bytes = 0
        self.count = 0
        self.sweep()
        self._recount()

    def _recount(self) -> None:
        size = count = 0
        for blob in self.root.glob("??/*"):
            if blob.name.startswith(TEMP_PREFIX):
                continue
            try:
                size += blob.stat().st_size
            except FileNotFoundError:
                continue
            count += 1
        self.bytes, self.count = size, count

    def _forget(self, size: int) -> None:
        self.bytes = max(0, self.bytes - size)
        self.count = max(0, self.count - 1)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        """Whether the store holds this blob *with the right content* (see the module)."""
        path = self.path(digest)
        try:
            info = path.lstat()
        except FileNotFoundError:
            self._verified.pop(digest, None)
            return False
        if not stat.S_ISREG(info.st_mode):
            _LOGGER.warning("content store: %s is not a regular file; removed it", path)
            _remove(path)
            return False
        key = (info.st_ino, info.st_size, info.st_mtime_ns)
        if self._verified.get(digest) == key:
            return True
        try:
            actual = file_digest(path)
        except FileNotFoundError:
            return False
        if actual != digest:
            _LOGGER.warning(
                "content store: blob %s holds other content (digest %s); removed it, it "
                "will be fetched again",
                digest[:12],
                actual[:12],
            )
            self._verified.pop(digest, None)
            path.unlink(missing_ok=True)
            self._forget(info.st_size)
            return False
        self._verified[digest] = key
        return True

    def sweep(self, *, now: float | None = None) -> int:
        """Remove everything under the root that is not a blob; returns how many entries.

        Temporary files of writes are removed only once STALE_TEMP_SECONDS old, so a
        write in progress is never disturbed.
        """
        current = time.time() if now is None else now
        removed = 0
        for entry in list(self.root.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and _SHARD.match(entry.name):
                for item in list(entry.iterdir()):
                    if item.name.startswith(TEMP_PREFIX) and not item.is_symlink():
                        try:
                            age = current - item.stat().st_mtime
                        except FileNotFoundError:
                            continue
                        if age < STALE_TEMP_SECONDS:
                            continue
                    elif (
                        item.is_file()
                        and not item.is_symlink()
                        and _DIGEST.match(item.name)
                        and item.name[:2] == entry.name
                    ):
                        continue
                    _LOGGER.warning("content store: removed stray %s", item)
                    _remove(item)
                    removed += 1
                continue
            _LOGGER.warning("content store: removed stray %s", entry)
            _remove(entry)
            removed += 1
        return removed

    def missing(self, digests: list[str]) -> list[str]:
        """The digests not held yet, in the order asked, without duplicates.

        Blobs reported as held are marked used: the asker is about to rely on them, so
        pruning must not take them away in between.
        """
        seen: set[str] = set()
        result = []
        for digest in digests:
            if digest not in seen:
                if self.has(digest):
                    self.touch(digest)
                else:
                    result.append(digest)
            seen.add(digest)
        return result

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.has(digest):
            self.touch(digest)
        else:
            with self.writer(digest, len(data)) as out:
                out.write(data)
        return digest

    def put_file(self, source: Path) -> str:
        digest = file_digest(source)
        if self.has(digest):
            self.touch(digest)
        else:
            with source.open("rb") as src, self.writer(digest, source.stat().st_size) as out:
                while chunk := src.read(COPY_CHUNK):
                    out.write(chunk)
        return digest

    def writer(self, digest: str, size: int) -> BlobWriter:
        return BlobWriter(self, check_digest(digest), size)

    def touch(self, digest: str) -> None:
        """Mark a blob as used (TTL pruning keeps what builds still need)."""
        path = self.path(digest)
        with contextlib.suppress(FileNotFoundError):
            was = self._verified.get(digest)
            os.utime(path)
            if was is not None:
                self._remember(digest, path)

    def _remember(self, digest: str, path: Path) -> None:
        """Note that ``path`` as it is now holds exactly ``digest``."""
        info = path.stat()
        self._verified[digest] = (info.st_ino, info.st_size, info.st_mtime_ns)

    def prune(self, ttl_seconds: float, *, now: float | None = None) -> tuple[int, int]:
        """Remove blobs unused for ``ttl_seconds``; returns (count, bytes) removed."""
        current = time.time() if now is None else now
        count = size = 0
        for blob in self.root.glob("??/*"):
            if blob.name.startswith(TEMP_PREFIX):
                continue  # the sweep below decides about temporary files
            try:
                info = blob.stat()
            except FileNotFoundError:
                continue
            if current - info.st_mtime > ttl_seconds:
                blob.unlink(missing_ok=True)
                self._verified.pop(blob.name, None)
                count += 1
                size += info.st_size
        self.sweep(now=current)
        self._recount()
        return count, size


class BlobWriter:
    """Write a blob in chunks; it becomes visible only if size and digest match."""

    def __init__(self, store: ContentStore, digest: str, size: int) -> None:
        self._store = store
        self.digest = digest
        self.size = size
        self._hash = hashlib.sha256()
        self._written = 0
        target = store.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.parent.chmod(0o700)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)
        self._tmp = Path(tmp)
        self._file: BinaryIO = os.fdopen(fd, "wb")

    def write(self, chunk: bytes | memoryview) -> None:
        self._written += len(chunk)
        if self._written > self.size:
            raise ContentError(f"blob {self.digest[:12]} is larger than announced {self.size}")
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> None:
        self._file.close()
        actual = self._hash.hexdigest()
        if self._written != self.size or actual != self.digest:
            self._tmp.unlink(missing_ok=True)
            raise ContentError(
                f"blob {self.digest[:12]} failed verification "
                f"({self._written}/{self.size} bytes, digest {actual[:12]})"
            )
        target = self._store.path(self.digest)
        existed = target.exists()
        self._tmp.replace(target)
        self._store._remember(self.digest, target)
        if not existed:
            self._store.bytes += self._written
            self._store.count += 1

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
