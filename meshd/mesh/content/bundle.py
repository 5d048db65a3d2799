"""Configuration bundles: read safely, describe by digest, materialise for a build.

The offloader turns ``esphome bundle`` output (a tar.gz with ``manifest.json``) into
a ``BundleManifest``: relative paths, sizes and SHA-256 digests, with the bytes put in
its content store. The receiver validates that manifest as hostile input, fetches
the blobs it lacks, and materialises a stable work directory per offloader and
configuration. Files whose content did not change keep their mtime, and build caches
(``.esphome``, ``.pioenvs``, ``.pio``) survive, so PlatformIO rebuilds incrementally.

Everything about paths is checked on both sides: no absolute paths, no ``..``, no
links, devices or FIFOs, caps on file count and total size.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from meshd.mesh.content.store import ContentError, ContentStore, check_digest, file_digest

# A config, its includes, fonts and images: a few MiB at most in practice. The caps
# bound what a hostile offloader can make a receiver store or unpack.
MAX_BUNDLE_FILES = 2000
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_PATH_LENGTH = 512
MANIFEST_NAME = "manifest.json"
# Directories a build leaves in the work dir that must survive re-materialising.
PRESERVED = frozenset({".esphome", ".pioenvs", ".pio", ".meshd-used"})
USED_MARKER = ".meshd-used"


class BundleRejected(Exception):
    """The bundle (or its manifest) is unsafe or too large; the message says why."""


@dataclass(frozen=True)
class BundleFile:
    path: str
    digest: str
    size: int
    executable: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size, "x": self.executable}


@dataclass(frozen=True)
class BundleManifest:
    config_filename: str
    files: tuple[BundleFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_wire(self) -> dict[str, Any]:
        return {
            "config": self.config_filename,
            "files": [f.to_wire() for f in self.files],
        }

    @classmethod
    def from_wire(cls, data: Any) -> BundleManifest:
        """Parse and validate a manifest received from a peer (hostile input)."""
        if not isinstance(data, dict):
            raise BundleRejected("manifest is not a map")
        files_raw = data.get("files")
        if not isinstance(files_raw, list):
            raise BundleRejected("manifest has no file list")
        if len(files_raw) > MAX_BUNDLE_FILES:
            raise BundleRejected(f"bundle has {len(files_raw)} files (max {MAX_BUNDLE_FILES})")
        files = []
        for raw in files_raw:
            if not isinstance(raw, dict):
                raise BundleRejected("manifest entry is not a map")
            size = raw.get("size")
            if not isinstance(size, int) or size < 0:
                raise BundleRejected(f"bad size for {raw.get('path')!r:.80}")
            try:
                digest = check_digest(raw.get("digest"))  # type: ignore[arg-type]
            except ContentError as exc:
                raise BundleRejected(str(exc)) from None
            files.append(
                BundleFile(
                    path=safe_relative_path(raw.get("path")),
                    digest=digest,
                    size=size,
                    executable=bool(raw.get("x", False)),
                )
            )
        manifest = cls(safe_relative_path(data.get("config")), tuple(files))
        _check_totals(manifest)
        return manifest


def safe_relative_path(name: object, *, allow_cache: bool = False) -> str:
    """A normalised relative POSIX path, or BundleRejected naming the problem.

    ``allow_cache`` admits paths into build-cache directories (artifacts live there;
    bundle files never may).
    """
    if not isinstance(name, str) or not name:
        raise BundleRejected(f"bad path {name!r:.80}")
    if len(name) > MAX_PATH_LENGTH:
        raise BundleRejected(f"path longer than {MAX_PATH_LENGTH} characters")
    if "\0" in name or "\\" in name:
        raise BundleRejected(f"path {name!r:.80} contains NUL or a backslash")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise BundleRejected(f"absolute path {name!r:.80} in bundle")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise BundleRejected(f"empty path {name!r:.80}")
    if ".." in parts:
        raise BundleRejected(f"path {name!r:.80} escapes the bundle with '..'")
    if parts[0] in PRESERVED and not allow_cache:
        raise BundleRejected(f"path {name!r:.80} would overwrite the build cache")
    return "/".join(parts)


def _check_totals(manifest: BundleManifest) -> None:
    if manifest.total_size > MAX_BUNDLE_BYTES:
        raise BundleRejected(f"bundle is {manifest.total_size} bytes (max {MAX_BUNDLE_BYTES})")
    paths = [f.path for f in manifest.files]
    if len(set(paths)) != len(paths):
        raise BundleRejected("bundle lists a path twice")
    as_dirs = {p + "/" for p in paths}
    for p in paths:
        if any(p.startswith(d) for d in as_dirs):
            raise BundleRejected(f"path {p!r:.80} is both a file and a directory")
    if manifest.config_filename not in set(paths):
        raise BundleRejected(f"configuration {manifest.config_filename!r:.80} is not in the bundle")


def read_bundle(archive: Path, store: ContentStore) -> BundleManifest:
    """Read an ``esphome bundle`` archive into ``store``; reject anything unsafe."""
    try:
        tar = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed below, errors mapped
    except (tarfile.TarError, OSError) as exc:
        raise BundleRejected(f"not a readable bundle archive: {exc}") from None
    files: list[BundleFile] = []
    config_filename: str | None = None
    total = 0
    with tar:
        try:
            for member in tar:
                if member.isdir():
                    safe_relative_path(member.name)
                    continue
                if not member.isfile():
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise BundleRejected(f"bundle member {member.name!r:.80} is a {kind}")
                path = safe_relative_path(member.name)
                total += member.size
                if total > MAX_BUNDLE_BYTES or len(files) >= MAX_BUNDLE_FILES:
                    raise BundleRejected(
                        f"bundle exceeds {MAX_BUNDLE_FILES} files or {MAX_BUNDLE_BYTES} bytes"
                    )
                extracted = tar.extractfile(member)
                if extracted is None:
                    raise BundleRejected(f"cannot read bundle member {member.name!r:.80}")
                data = extracted.read()
                if path == MANIFEST_NAME:
                    config_filename = _config_from_manifest(data)
                    continue
                files.append(
                    BundleFile(path, store.put_bytes(data), len(data), bool(member.mode & 0o111))
                )
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleRejected(f"corrupt bundle archive: {exc}") from None
    if config_filename is None:
        raise BundleRejected("bundle has no manifest.json naming its configuration")
    manifest = BundleManifest(safe_relative_path(config_filename), tuple(files))
    _check_totals(manifest)
    return manifest


def _config_from_manifest(data: bytes) -> str:
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleRejected(f"malformed bundle manifest.json: {exc}") from None
    name = parsed.get("config_filename") if isinstance(parsed, dict) else None
    if not isinstance(name, str):
        raise BundleRejected("bundle manifest.json names no config_filename")
    return name


def materialise(manifest: BundleManifest, store: ContentStore, workdir: Path) -> Path:
    """Make ``workdir`` hold exactly the bundle (plus build caches); returns the config path.

    All blobs must be in ``store``. Unchanged files are left untouched (their mtimes
    drive incremental builds); files no longer in the bundle are removed.
    """
    missing = store.missing([f.digest for f in manifest.files])
    if missing:
        raise BundleRejected(f"{len(missing)} bundle files were never received")
    # The bytes actually written count, not the manifest's declared sizes (a blob's
    # digest fixes its content, so its stored size is what lands in the work dir).
    real = 0
    for entry in manifest.files:
        real += store.path(entry.digest).stat().st_size
        if real > MAX_BUNDLE_BYTES:
            raise BundleRejected(f"bundle unpacks to more than {MAX_BUNDLE_BYTES} bytes")
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The tree holds the offloader's secrets: only the meshd user may read it, whatever
    # the umask or an earlier directory's mode.
    workdir.parent.chmod(0o700)
    workdir.chmod(0o700)
    root = workdir.resolve()
    wanted = {f.path: f for f in manifest.files}
    for existing in sorted(root.rglob("*"), reverse=True):
        rel = existing.relative_to(root).as_posix()
        if rel.split("/", 1)[0] in PRESERVED:
            continue
        if existing.is_symlink() or (existing.is_file() and rel not in wanted):
            existing.unlink()
        elif existing.is_dir() and not any(w.startswith(rel + "/") for w in wanted):
            shutil.rmtree(existing)
    for entry in manifest.files:
        target = root / entry.path
        # safe_relative_path already refuses '..'; this guards against a directory
        # component that is a symlink planted outside the preserved set.
        if not target.resolve().is_relative_to(root):
            raise BundleRejected(f"path {entry.path!r:.80} resolves outside the work dir")
        unchanged = (
            target.is_file()
            and target.stat().st_size == entry.size
            and file_digest(target) == entry.digest
        )
        if unchanged:
            continue
        _make_private_dirs(root, target.parent)
        tmp = target.with_name(f".{target.name}.meshd-tmp")
        shutil.copyfile(store.path(entry.digest), tmp)
        tmp.chmod(0o700 if entry.executable else 0o600)
        tmp.replace(target)
    (root / USED_MARKER).touch()
    return root / manifest.config_filename


def _make_private_dirs(root: Path, directory: Path) -> None:
    """Create ``directory`` below ``root`` with every new level 0700."""
    missing = []
    current = directory
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for level in reversed(missing):
        level.mkdir(mode=0o700)
        level.chmod(0o700)


def prune_workdirs(root: Path, ttl_seconds: float, *, now: float | None = None) -> list[Path]:
    """Remove work directories (``root/<offloader>/<config>``) unused for ``ttl_seconds``."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    current = time.time() if now is None else now
    for offloader in root.iterdir():
        if not offloader.is_dir():
            continue
        for workdir in offloader.iterdir():
            marker = workdir / USED_MARKER
            last = marker.stat().st_mtime if marker.exists() else workdir.stat().st_mtime
            if current - last > ttl_seconds:
                shutil.rmtree(workdir, ignore_errors=True)
                removed.append(workdir)
        if not any(offloader.iterdir()):
            offloader.rmdir()
    return removed
