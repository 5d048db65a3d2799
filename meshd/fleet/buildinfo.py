"""What a finished build will report once it runs: esphome's own ``build_info.json``.

``esphome compile`` writes ``<build_path>/build_info.json`` (``esphome/writer.py``,
``copy_src_tree``) with the values it compiles into ``build_info_data.cpp``:

* ``config_hash``: ``ESPHOME_CONFIG_HASH``, an integer; the firmware publishes it as
  8 lowercase hex digits in its mDNS TXT and its ``version`` text sensor;
* ``build_time_str``: ``ESPHOME_BUILD_TIME_STR`` (``%Y-%m-%d %H:%M:%S %z``), which the
  native API returns as ``DeviceInfo.compilation_time``;
* ``esphome_version``: the firmware's ``ESPHOME_VERSION`` (TXT ``version``).

The file is rewritten only when the sources changed, exactly when the firmware is
relinked, so it always describes the program next to it. The build path comes from
the StorageJSON (``meshd.toolchain.storage``), never from a guessed layout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from meshd.toolchain.storage import ArtifactError, load_storage

BUILD_INFO_FILENAME = "build_info.json"


@dataclass(frozen=True)
class BuildIdentity:
    """The facts a running firmware reports that identify its build."""

    config_hash: str
    """8 lowercase hex digits."""
    esphome_version: str
    build_time_str: str | None = None
    name: str | None = None
    """The configuration's ``esphome: name`` (without any MAC suffix)."""

    def to_dict(self) -> dict[str, object]:
        return {
            "config_hash": self.config_hash,
            "esphome_version": self.esphome_version,
            "build_time_str": self.build_time_str,
            "name": self.name,
        }


def identity_from_build_info(data: Mapping[str, object], name: str | None = None) -> BuildIdentity:
    """Validate a parsed ``build_info.json``; raises ``ArtifactError``."""
    raw_hash = data.get("config_hash")
    version = data.get("esphome_version")
    build_time = data.get("build_time_str")
    if isinstance(raw_hash, bool) or not isinstance(raw_hash, int) or not 0 <= raw_hash < 2**32:
        raise ArtifactError("build_info.json: config_hash is not a 32-bit integer")
    if not isinstance(version, str) or not version:
        raise ArtifactError("build_info.json: esphome_version is missing")
    if build_time is not None and not isinstance(build_time, str):
        raise ArtifactError("build_info.json: build_time_str is not text")
    return BuildIdentity(f"{raw_hash:08x}", version, build_time, name)


def read_build_info(build_path: Path, name: str | None = None) -> BuildIdentity:
    """The identity of the build in ``build_path``; raises ``ArtifactError``."""
    path = build_path / BUILD_INFO_FILENAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"no {BUILD_INFO_FILENAME} in {build_path}; compile first") from None
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    return identity_from_build_info(data, name)


def build_identity(config: Path, env: Mapping[str, str] | None = None) -> BuildIdentity:
    """The identity of the last build of ``config`` (StorageJSON → build_info.json)."""
    record = load_storage(config, env)
    if record.build_path is None:
        raise ArtifactError(f"{record.path}: the build record names no build path")
    return read_build_info(record.build_path, record.name)
