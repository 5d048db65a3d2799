"""Build artifacts: collected on the receiver, materialised on the offloader.

The receiver reads ESPHome's own build record (``meshd.toolchain.storage``) to list the
files a flash needs, puts them in its content store, and describes them relative to
its ESPHome data directory. The offloader validates that description as hostile
input, pulls only blobs it lacks, and writes each file to the same place under *its*
data directory. The absolute paths inside ESPHome's JSON records (build path,
firmware path, idedata images) are rewritten from the receiver's data directory to
the local one. ``esphome upload`` then finds everything as after a local compile.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshd.mesh.content.bundle import BundleRejected, safe_relative_path
from meshd.mesh.content.store import ContentError, ContentStore, check_digest
from meshd.toolchain.storage import (
    ArtifactError,
    FlashMethod,
    data_dir,
    flash_plan,
    load_storage,
)

# An ESP32-S3 ELF is 20+ MiB; images are a few MiB. Anything claiming more is refused
# before a byte is pulled.
MAX_ARTIFACT_BYTES = 128 * 1024 * 1024
MAX_ARTIFACT_FILES = 32
# The manifest of MAX_ARTIFACT_FILES entries is a few KiB; a receiver announcing more
# is refused before the offloader pulls it.
MAX_ARTIFACT_MANIFEST_BYTES = 1024 * 1024
# Roles are short words ("app", "storage", ...); a longer one is not a role.
MAX_ROLE_LENGTH = 32

# Files whose JSON holds absolute paths into the data directory.
_JSON_ROLES = frozenset({"storage", "idedata"})
# Written first: esphome trusts idedata only while it is newer than platformio.ini,
# and the validated config only while newer than the YAML.
_WRITE_ORDER = {"platformio_ini": 0, "app": 1, "storage": 2, "idedata": 3, "validated_config": 4}


@dataclass(frozen=True)
class Artifact:
    role: str
    path: str
    """Relative to the ESPHome data directory."""
    digest: str
    size: int


@dataclass(frozen=True)
class ArtifactManifest:
    name: str
    esphome_version: str | None
    data_dir: str
    """The receiver's data directory, as written inside its JSON records."""
    files: tuple[Artifact, ...]

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "esphome_version": self.esphome_version,
            "data_dir": self.data_dir,
            "files": [
                {"role": f.role, "path": f.path, "digest": f.digest, "size": f.size}
                for f in self.files
            ],
        }

    @classmethod
    def from_wire(cls, data: Any) -> ArtifactManifest:
        """Validate an artifact manifest from a peer: paths, digests, sizes, caps."""
        try:
            if not isinstance(data, dict) or not isinstance(data.get("files"), list):
                raise BundleRejected("artifact manifest is not a map with a file list")
            if len(data["files"]) > MAX_ARTIFACT_FILES:
                raise BundleRejected(f"more than {MAX_ARTIFACT_FILES} artifacts")
            files = []
            for raw in data["files"]:
                if not isinstance(raw, dict):
                    raise BundleRejected("artifact entry is not a map")
                size = raw.get("size")
                if not isinstance(size, int) or size < 0:
                    raise BundleRejected("artifact has a bad size")
                if size > MAX_ARTIFACT_BYTES:
                    raise BundleRejected(
                        f"artifact {raw.get('path')!r:.80} claims {size} bytes "
                        f"(max {MAX_ARTIFACT_BYTES})"
                    )
                role = raw.get("role")
                if not isinstance(role, str) or len(role) > MAX_ROLE_LENGTH:
                    raise BundleRejected("artifact has a bad role")
                files.append(
                    Artifact(
                        role=role,
                        path=safe_relative_path(raw.get("path"), allow_cache=True),
                        digest=check_digest(raw.get("digest")),  # type: ignore[arg-type]
                        size=size,
                    )
                )
            name, remote_dir = data.get("name"), data.get("data_dir")
            if not isinstance(name, str) or not isinstance(remote_dir, str):
                raise BundleRejected("artifact manifest lacks name or data_dir")
            version = data.get("esphome_version")
            return cls(
                name, version if isinstance(version, str) else None, remote_dir, tuple(files)
            )
        except ContentError as exc:
            raise BundleRejected(str(exc)) from None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def check_roles(self, method: FlashMethod) -> None:
        """Refuse a manifest that lacks a file ``method`` cannot flash without.

        Every flash needs the build record (``storage``) and an image: ``app``, or for a
        serial flash of an ESP-IDF-toolchain build the merged ``factory`` image.
        """
        roles = {f.role for f in self.files}
        images = {"app"} if method is FlashMethod.OTA else {"app", "factory"}
        missing = [role for role in ("storage",) if role not in roles]
        if not roles & images:
            missing.append(" or ".join(sorted(images)))
        if missing:
            raise BundleRejected(
                f"artifact manifest has no {', '.join(missing)} file for a {method.value} flash"
            )


def collect_artifacts(
    config: Path,
    method: FlashMethod,
    store: ContentStore,
    *,
    include_elf: bool = False,
    env: Mapping[str, str] | None = None,
) -> ArtifactManifest:
    """Put the files needed to flash ``config``'s last build into ``store``."""
    record = load_storage(config, env)
    plan = flash_plan(record, method, config, env)
    missing = plan.missing()
    if missing:
        raise ArtifactError("build finished without " + ", ".join(str(p) for p in missing))
    root = data_dir(config, env).resolve()
    chosen = [(f.role, f.path) for f in plan.files if f.path.is_file()]
    if include_elf and record.firmware_bin_path is not None:
        elf = record.firmware_bin_path.with_name("firmware.elf")
        if elf.is_file():
            chosen.append(("elf", elf))
    files = []
    for role, path in chosen:
        resolved = path.resolve()
        if not resolved.is_relative_to(root):
            raise ArtifactError(
                f"{path} is outside ESPHome's data directory {root}; remote builds need "
                "the build inside it (no custom build_path)"
            )
        files.append(
            Artifact(
                role,
                resolved.relative_to(root).as_posix(),
                store.put_file(resolved),
                resolved.stat().st_size,
            )
        )
    return ArtifactManifest(record.name, record.esphome_version, str(root), tuple(files))


_NAME = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
# ``esphome:`` then, in its block, ``name: literal`` (a substitution is not literal).
_LITERAL_NAME = re.compile(
    r"^esphome:[ \t]*\n(?:[ \t]+.*\n)*?[ \t]+name:[ \t]*['\"]?([A-Za-z0-9_-]+)['\"]?"
    r"[ \t]*(?:#.*)?$",
    re.MULTILINE,
)


def _claimed_names(root: Path, config: Path) -> set[str]:
    """Device names other configurations of this data dir were built as (their records)."""
    names: set[str] = set()
    storage = root / "storage"
    if not storage.is_dir():
        return names
    for record in storage.glob("*.json"):
        if record.name == f"{config.name}.json":
            continue
        try:
            name = json.loads(record.read_bytes()).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(name, str):
            names.add(name)
    return names


def expected_name(manifest: ArtifactManifest, config: Path, root: Path) -> str:
    """The device name the artifacts may land under, checked against what *this* node
    knows: the literal ``esphome: name:`` of the YAML when it has one, and never the
    name another configuration of the same data dir was built as (a receiver trusted
    for one configuration must not replace another's firmware)."""
    name = manifest.name
    if not _NAME.match(name):
        raise BundleRejected(f"receiver's device name {name!r:.80} is not a valid name")
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    literal = _LITERAL_NAME.search(text)
    if literal is not None and literal.group(1) != name:
        raise BundleRejected(
            f"receiver built {name!r}, but {config.name} names the device {literal.group(1)!r}"
        )
    if name in _claimed_names(root, config):
        raise BundleRejected(f"device name {name!r} belongs to another configuration here")
    return name


def allowed_path(role: str, path: str, name: str, config: Path) -> bool:
    """Whether an artifact of ``role`` may land at ``path`` (relative to the data dir)."""
    if role == "storage":
        return path == f"storage/{config.name}.json"
    if role == "validated_config":
        return path == f"storage/{config.name}.validated.yaml"
    if role == "idedata":
        return path == f"idedata/{name}.json"
    return path.startswith(f"build/{name}/")


def _write_private(target: Path, data: bytes, mode: int, root: Path) -> None:
    """Write ``target`` with ``mode`` (whatever the umask), every dir below ``root`` 0700."""
    levels = []
    current = target.parent
    while current != root:
        levels.append(current)
        current = current.parent
    for level in reversed(levels):  # existing ones too: an earlier umask left them open
        level.mkdir(mode=0o700, exist_ok=True)
        level.chmod(0o700)
    tmp = target.with_name(f".{target.name}.meshd-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.chmod(mode)
    tmp.replace(target)


def materialise_artifacts(
    manifest: ArtifactManifest,
    store: ContentStore,
    config: Path,
    env: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write every artifact where a local compile of ``config`` would have left it.

    Only this configuration's own places take artifacts: ``build/<name>/...``,
    ``storage/<config file>.json`` and ``.validated.yaml``, ``idedata/<name>.json``;
    rewritten records must point into that build directory. Files are 0600 (the app
    image 0700), new directories 0700: the validated config holds inline secrets.
    """
    local_root = data_dir(config, env)
    local_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    local_root.chmod(0o700)
    root = local_root.resolve()
    name = expected_name(manifest, config, root)
    build_dir = root / "build" / name
    planned: list[tuple[Artifact, Path, bytes]] = []
    for artifact in manifest.files:
        if not allowed_path(artifact.role, artifact.path, name, config):
            raise BundleRejected(
                f"artifact {artifact.role} at {artifact.path!r:.80} is not this "
                f"configuration's ({config.name}, device {name})"
            )
        target = root / artifact.path
        if not target.resolve().is_relative_to(root):
            raise BundleRejected(f"artifact {artifact.path!r} resolves outside {root}")
        data = store.path(artifact.digest).read_bytes()
        if artifact.role in _JSON_ROLES:
            data = _rewrite_paths(data, manifest.data_dir, str(root))
        if artifact.role == "storage":
            _check_record(data, build_dir)
        planned.append((artifact, target, data))
    written: list[Path] = []
    for artifact, target, data in sorted(planned, key=lambda p: _WRITE_ORDER.get(p[0].role, 1)):
        _write_private(target, data, 0o700 if artifact.role == "app" else 0o600, root)
        written.append(target)
    # Every file is newer than the YAML (and idedata than platformio.ini), as after a
    # local compile, so esphome upload trusts its caches.
    for path in written:
        os.utime(path)
    return written


def _check_record(data: bytes, build_dir: Path) -> None:
    """The rewritten storage record must point into this configuration's build dir."""
    record = json.loads(data)
    if not isinstance(record, dict):
        raise BundleRejected("artifact storage record is not a map")
    for key in ("build_path", "firmware_bin_path"):
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not Path(value).resolve().is_relative_to(build_dir):
            raise BundleRejected(f"storage record's {key} {value!r:.80} is outside {build_dir}")


def _rewrite_paths(data: bytes, remote_root: str, local_root: str) -> bytes:
    """Replace the receiver's data-dir prefix in every string of a JSON document."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleRejected(f"artifact JSON record is malformed: {exc}") from None

    def fix(value: Any) -> Any:
        if isinstance(value, str) and (
            value == remote_root or value.startswith(remote_root.rstrip("/") + "/")
        ):
            return local_root + value[len(remote_root.rstrip("/")) :]
        if isinstance(value, list):
            return [fix(v) for v in value]
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    return json.dumps(fix(document), indent=2).encode()
