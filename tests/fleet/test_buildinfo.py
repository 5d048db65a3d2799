"""Reading what a build will report from esphome's own build_info.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshd.fleet.buildinfo import build_identity, identity_from_build_info, read_build_info
from meshd.toolchain.storage import ArtifactError

# As esphome 2026.6.5's writer.py writes it (copy_src_tree).
REAL = {
    "config_hash": 3157199665,
    "build_time": 1796159205,
    "build_time_str": "2026-12-01 21:06:45 +0000",
    "esphome_version": "2026.6.5",
}


def test_the_hash_is_formatted_as_the_firmware_publishes_it() -> None:
    identity = identity_from_build_info(REAL, "probe")
    assert identity.config_hash == "bc2f0b31"
    assert identity.build_time_str == "2026-12-01 21:06:45 +0000"
    assert identity.esphome_version == "2026.6.5" and identity.name == "probe"
    assert identity_from_build_info({**REAL, "config_hash": 5}).config_hash == "00000005"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config_hash": "bc2f0b31"}, "32-bit integer"),
        ({"config_hash": True}, "32-bit integer"),
        ({"config_hash": 2**32}, "32-bit integer"),
        ({"esphome_version": ""}, "esphome_version is missing"),
        ({"build_time_str": 5}, "build_time_str is not text"),
    ],
)
def test_a_damaged_record_is_an_artifact_error(change: dict[str, object], message: str) -> None:
    with pytest.raises(ArtifactError, match=message):
        identity_from_build_info({**REAL, **change})


def test_reading_from_the_build_path_and_via_the_storage_json(tmp_path: Path) -> None:
    build = tmp_path / ".esphome" / "build" / "probe"
    build.mkdir(parents=True)
    with pytest.raises(ArtifactError, match="compile first"):
        read_build_info(build)
    (build / "build_info.json").write_text("[1]")
    with pytest.raises(ArtifactError, match="not a JSON object"):
        read_build_info(build)
    (build / "build_info.json").write_text(json.dumps(REAL))
    config = tmp_path / "probe.yaml"
    config.write_text("esphome:\n  name: probe\nhost:\n")
    with pytest.raises(ArtifactError, match="compile it first"):
        build_identity(config, env={})
    storage = tmp_path / ".esphome" / "storage" / "probe.yaml.json"
    storage.parent.mkdir(parents=True)
    storage.write_text(
        json.dumps({"name": "probe", "esp_platform": "HOST", "build_path": str(build)})
    )
    assert build_identity(config, env={}).config_hash == "bc2f0b31"
