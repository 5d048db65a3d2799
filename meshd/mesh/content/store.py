"""A content-addressed blob store: files named by their SHA-256.

Bundles and artifacts travel by digest, so a receiver asks only for content it does
not hold yet (after the first build, usually just the edited YAML), and the offloader
keeps artifacts it already pulled. Writes land in a temporary file and are renamed
into place only once the digest matches, so a truncated or tampered transfer never
becomes a blob.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
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


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

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
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(digest))

    def prune(self, ttl_seconds: float, *, now: float | None = None) -> tuple[int, int]:
        """Remove blobs unused for ``ttl_seconds``; returns (count, bytes) removed."""
        current = time.time() if now is None else now
        count = size = 0
        for blob in self.root.glob("??/*"):
            try:
                stat = blob.stat()
            except FileNotFoundError:
                continue
            if current - stat.st_mtime > ttl_seconds:
                blob.unlink(missing_ok=True)
                count += 1
                size += stat.st_size
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
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
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
        self._tmp.replace(self._store.path(self.digest))

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
