"""Kept builds: the firmware of every successful compile, per configuration, last N.

A fleet is built overnight and flashed later, and a flash must never need a
recompile: after each compile the engine's after-compile hook copies what a flash
needs into the meshd data directory::

    artifacts/<config-key>/<build-id>/manifest.json
    artifacts/<config-key>/<build-id>/files/<path relative to ESPHome's data dir>

``<config-key>`` is the YAML's stem plus 12 hex of the SHA-256 of its absolute path
(two ``living-room.yaml`` in two directories do not collide); ``<build-id>`` is the
compile job's id. Which files: the flash plan of ``meshd.toolchain.storage`` (from
ESPHome's own StorageJSON) for OTA, plus the serial layout when the build has it. The
copies are verbatim (mode 0600: the validated config holds resolved secrets), and the
manifest records each file's size and SHA-256, so a kept build is checked before use.

Flashing a kept build never touches the live build tree (a later ``esphome compile``
must not find an older firmware there): ``stage`` copies it into a scratch ESPHome data
directory, rewriting the absolute paths inside ESPHome's JSON records, and the upload
runs with ``ESPHOME_DATA_DIR`` pointing there, so ``esphome upload`` finds everything
as after a compile. Builds whose files are outside ESPHome's data directory (a custom
``build_path``) are not kept; the compile is not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from meshd.jobs.runner import JobContext
from meshd.toolchain.storage import (
    ArtifactError,
    FlashMethod,
    StorageRecord,
    data_dir,
    flash_plan,
    load_storage,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_KEPT_BUILDS = 3
"""The last build, the one before (to go back to), and one more: a few MB each."""

MANIFEST = "manifest.json"
FORMAT = 1
STAGING = ".staging"
_FILES = "files"
_ID_RE = re.compile(r"^[0-9a-f]{6,64}$")
_STEM_RE = re.compile(r"[^A-Za-z0-9_-]+")
# Files whose JSON holds absolute paths into ESPHome's data directory.
_JSON_ROLES = frozenset({"storage", "idedata"})
# Written (and time-stamped) in this order: esphome trusts idedata only while it is
# newer than platformio.ini, and the validated config only while newer than the YAML.
_WRITE_ORDER = {"platformio_ini": 0, "app": 1, "storage": 2, "idedata": 3, "validated_config": 4}


class ArchiveError(Exception):
    """A build cannot be kept, or a kept build is missing, unknown or damaged."""


@dataclass(frozen=True)
class KeptFile:
    role: str
    path: str
    """Relative to ESPHome's data directory (POSIX)."""
    size: int
    sha256: str


@dataclass(frozen=True)
class KeptBuild:
    """One kept build, as its manifest describes it."""

    build_id: str
    configuration: str
    name: str
    created_at: float
    esphome_version: str | None
    config_hash: str | None
    platform: str
    methods: tuple[str, ...]
    """How it can be flashed: ``ota``, and ``serial`` when the serial layout was built."""
    data_dir: str
    """ESPHome's data directory the files came from (prefix of the JSON records' paths)."""
    files: tuple[KeptFile, ...]
    directory: Path

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``GET /api/v1/artifacts`` (docs/API.md) and of the manifest."""
        return {
            "format": FORMAT,
            "build_id": self.build_id,
            "job_id": self.build_id,
            "configuration": self.configuration,
            "name": self.name,
            "created_at": self.created_at,
            "esphome_version": self.esphome_version,
            "config_hash": self.config_hash,
            "platform": self.platform,
            "methods": list(self.methods),
            "data_dir": self.data_dir,
            "size": self.size,
            "files": [
                {"role": f.role, "path": f.path, "size": f.size, "sha256": f.sha256}
                for f in self.files
            ],
        }

    @classmethod
    def load(cls, directory: Path) -> KeptBuild:
        """Read and check a manifest (it is our own file, but disks and people edit)."""
        try:
            raw = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
            files = tuple(
                KeptFile(str(f["role"]), _relative(f["path"]), int(f["size"]), str(f["sha256"]))
                for f in raw["files"]
            )
            return cls(
                build_id=str(raw["build_id"]),
                configuration=str(raw["configuration"]),
                name=str(raw["name"]),
                created_at=float(raw["created_at"]),
                esphome_version=raw.get("esphome_version"),
                config_hash=raw.get("config_hash"),
                platform=str(raw["platform"]),
                methods=tuple(str(m) for m in raw["methods"]),
                data_dir=str(raw["data_dir"]),
                files=files,
                directory=directory,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"unreadable kept build {directory}: {exc}") from None


def _relative(raw: object) -> str:
    path = PurePosixPath(str(raw))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"bad path {raw!r} in manifest")
    return path.as_posix()


def config_key(configuration: str | Path) -> str:
    """``<stem>-<12 hex>``: readable, and unique per absolute configuration path."""
    path = Path(configuration)
    digest = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:12]
    stem = _STEM_RE.sub("_", path.stem)[:48] or "config"
    return f"{stem}-{digest}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _rewrite_paths(data: bytes, old_root: str, new_root: str) -> bytes:
    """Replace the ``old_root`` prefix in every string of a JSON document."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"kept JSON record is malformed: {exc}") from None
    prefix = old_root.rstrip("/")

    def fix(value: Any) -> Any:
        if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
            return new_root + value[len(prefix) :]
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    return json.dumps(fix(document), indent=2).encode()


class BuildArchive:
    """The kept builds under ``root`` (``<meshd data dir>/artifacts``)."""

    def __init__(
        self, root: Path, *, keep: int = DEFAULT_KEPT_BUILDS, env: Mapping[str, str] | None = None
    ) -> None:
        if keep < 0:
            raise ValueError(f"kept builds must be >= 0, got {keep}")
        self.root = root
        self.limit = keep
        """How many builds are kept per configuration (0: none)."""
        self._env = env
        # Keeping, pruning and staging run in worker threads; one at a time, so a prune
        # never deletes a build while it is being staged.
        self._lock = threading.Lock()

    def clean_leftovers(self) -> None:
        """Remove what a crashed daemon left half-done: staged uploads, partial copies.

        Call once at start, before any job runs (nothing else writes there then).
        """
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        for partial in self.root.glob("*/.partial-*"):
            shutil.rmtree(partial, ignore_errors=True)

    # -- reading ------------------------------------------------------------------

    def builds(self, configuration: str | Path) -> list[KeptBuild]:
        """The kept builds of a configuration, newest first (unreadable ones skipped)."""
        directory = self.root / config_key(configuration)
        found = []
        for child in directory.iterdir() if directory.is_dir() else ():
            if not _ID_RE.match(child.name) or not (child / MANIFEST).is_file():
                continue
            try:
                found.append(KeptBuild.load(child))
            except ArchiveError as exc:
                _LOGGER.warning("%s", exc)
        return sorted(found, key=lambda b: (b.created_at, b.build_id), reverse=True)

    def get(self, configuration: str | Path, build_id: str) -> KeptBuild:
        for build in self.builds(configuration):
            if build.build_id == build_id:
                return build
        raise ArchiveError(f"no kept build {build_id!r} of {configuration}")

    def verify(self, build: KeptBuild) -> None:
        """Every file present with its recorded size and digest, else ``ArchiveError``."""
        for kept in build.files:
            path = build.directory / _FILES / kept.path
            try:
                size = path.stat().st_size
            except OSError:
                raise ArchiveError(f"kept build {build.build_id} lost {kept.path}") from None
            if size != kept.size or _sha256(path) != kept.sha256:
                raise ArchiveError(f"kept build {build.build_id}: {kept.path} is damaged")

    # -- keeping ------------------------------------------------------------------

    def keep_build(
        self,
        configuration: Path,
        build_id: str,
        *,
        config_hash: str | None = None,
        created_at: float | None = None,
    ) -> KeptBuild:
        """Copy the last build of ``configuration`` in as ``build_id``; prune to ``limit``."""
        if not _ID_RE.match(build_id):
            raise ArchiveError(f"not a build id: {build_id!r}")
        with self._lock:
            build = self._copy_in(configuration, build_id, config_hash, created_at or time.time())
            self._prune(configuration)
        return build

    def _chosen_files(
        self, configuration: Path
    ) -> tuple[StorageRecord, list[tuple[str, Path]], list[str]]:
        record = load_storage(configuration, self._env)
        ota = flash_plan(record, FlashMethod.OTA, configuration, self._env)
        missing = ota.missing()
        if missing:
            raise ArchiveError("the build lacks " + ", ".join(str(p) for p in missing))
        chosen = {f.path: f.role for f in ota.files if f.path.is_file()}
        methods = [FlashMethod.OTA.value]
        with contextlib.suppress(ArtifactError):
            serial = flash_plan(record, FlashMethod.SERIAL, configuration, self._env)
            if not serial.missing():
                methods.append(FlashMethod.SERIAL.value)
                for f in serial.files:
                    if f.path.is_file():
                        chosen.setdefault(f.path, f.role)
        return record, [(role, path) for path, role in chosen.items()], methods

    def _copy_in(
        self, configuration: Path, build_id: str, config_hash: str | None, created_at: float
    ) -> KeptBuild:
        try:
            record, chosen, methods = self._chosen_files(configuration)
        except ArtifactError as exc:
            raise ArchiveError(str(exc)) from None
        root = data_dir(configuration, self._env).resolve()
        key_dir = self.root / config_key(configuration)
        final = key_dir / build_id
        partial = key_dir / f".partial-{build_id}-{secrets.token_hex(4)}"
        sources = []
        for role, path in chosen:
            resolved = path.resolve()
            if not resolved.is_relative_to(root):
                raise ArchiveError(
                    f"{path} is outside ESPHome's data directory {root}; builds with a "
                    "custom build_path are not kept"
                )
            sources.append((role, resolved, resolved.relative_to(root).as_posix()))
        files = []
        try:
            for role, resolved, relative in sources:
                target = partial / _FILES / relative
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.copyfile(resolved, target)
                target.chmod(0o600)
                files.append(KeptFile(role, relative, target.stat().st_size, _sha256(target)))
            build = KeptBuild(
                build_id=build_id,
                configuration=str(configuration.absolute()),
                name=record.name,
                created_at=created_at,
                esphome_version=record.esphome_version,
                config_hash=config_hash or _text(record.raw.get("config_hash")),
                platform=record.target_platform,
                methods=tuple(methods),
                data_dir=str(root),
                files=tuple(files),
                directory=final,
            )
            (partial / MANIFEST).write_text(json.dumps(build.to_dict(), indent=2) + "\n")
            if final.exists():  # the same job kept twice (a re-run after restart)
                shutil.rmtree(final)
            partial.rename(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return build

    def _prune(self, configuration: Path) -> list[str]:
        removed = []
        for old in self.builds(configuration)[self.limit :]:
            shutil.rmtree(old.directory, ignore_errors=True)
            removed.append(old.build_id)
        return removed

    def forget(self, configuration: str | Path, build_id: str) -> None:
        """Delete one kept build (a compile that was cancelled while it was being kept)."""
        with self._lock:
            target = self.root / config_key(configuration) / build_id
            if _ID_RE.match(build_id) and target.is_dir():
                shutil.rmtree(target, ignore_errors=True)

    async def after_compile(self, ctx: JobContext) -> None:
        """The engine's after-compile hook: keep this compile's firmware, log the result.

        A receiver's copy of an offloaded compile is not kept (the offloader keeps its
        own), and nothing is kept when the cap is 0. A compile cancelled while its
        build is copied keeps nothing.
        """
        job = ctx.job
        if self.limit == 0 or job.options.offloader is not None:
            return
        config = Path(job.configuration)
        work = asyncio.ensure_future(asyncio.to_thread(self.keep_build, config, job.id))
        try:
            build = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The copy runs on in its thread; wait for it, then drop what it kept.
            with contextlib.suppress(Exception):
                await work
            await asyncio.to_thread(self.forget, config, job.id)
            raise
        count = len(await asyncio.to_thread(self.builds, config))
        ctx.log(
            f"[meshd] kept build {build.build_id} ({len(build.files)} files, "
            f"{build.size} bytes; {count} kept for this configuration)"
        )

    # -- flashing a kept build ------------------------------------------------------

    def stage(self, configuration: Path, build_id: str, job_id: str) -> Path:
        """A scratch ESPHome data directory holding ``build_id``, checked and ready for
        ``ESPHOME_DATA_DIR``; remove it with ``unstage`` after the upload."""
        if not _ID_RE.match(job_id):
            raise ArchiveError(f"not a job id: {job_id!r}")
        with self._lock:
            build = self.get(configuration, build_id)
            self.verify(build)
            staging = self.root / STAGING / job_id
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True, mode=0o700)
            new_root = str(staging.resolve())
            written = []
            for kept in sorted(build.files, key=lambda f: _WRITE_ORDER.get(f.role, 1)):
                data = (build.directory / _FILES / kept.path).read_bytes()
                if kept.role in _JSON_ROLES:
                    data = _rewrite_paths(data, build.data_dir, new_root)
                target = staging / kept.path
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                target.write_bytes(data)
                target.chmod(0o600)
                written.append(target)
            # Strictly increasing times in write order, all newer than any YAML edit
            # made before this upload (see _WRITE_ORDER).
            base = time.time()
            for index, path in enumerate(written):
                stamp = base + index * 0.001
                os.utime(path, (stamp, stamp))
            try:
                _check_staged(configuration, staging, build)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return staging

    def unstage(self, staging: Path) -> None:
        if staging.parent == self.root / STAGING:
            shutil.rmtree(staging, ignore_errors=True)


def _check_staged(configuration: Path, staging: Path, build: KeptBuild) -> None:
    """The staged record must name the staged firmware, byte for byte the kept one: a
    path the rewrite missed would otherwise flash the live build tree's firmware."""
    try:
        record = load_storage(configuration, {"ESPHOME_DATA_DIR": str(staging)})
    except ArtifactError as exc:
        raise ArchiveError(f"kept build {build.build_id}: {exc}") from None
    firmware = record.firmware_bin_path
    app = next((f for f in build.files if f.role == "app"), None)
    if firmware is None or app is None or not firmware.resolve().is_relative_to(staging.resolve()):
        raise ArchiveError(
            f"kept build {build.build_id}: its build record does not point into the staged copy"
        )
    if not firmware.is_file() or _sha256(firmware) != app.sha256:
        raise ArchiveError(f"kept build {build.build_id}: staged firmware does not match")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
