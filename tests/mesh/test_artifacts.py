"""Artifacts: collected from ESPHome's build record, materialised under local paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshd.fleet.buildinfo import read_build_info
from meshd.mesh.content.artifacts import (
    MAX_ARTIFACT_BYTES,
    ArtifactManifest,
    collect_artifacts,
    materialise_artifacts,
)
from meshd.mesh.content.bundle import BundleRejected
from meshd.mesh.content.store import ContentStore
from meshd.toolchain.storage import ArtifactError, FlashMethod, flash_plan, load_storage

PROGRAM = b"\x7fELF host program" * 100
BUILD_INFO = {
    "config_hash": 0x1A2B3C4D,
    "esphome_version": "2026.6.5",
    "build_time_str": "2026-12-02 00:00:00 +0000",
}


def fake_host_build(config_dir: Path, name: str = "meshd-host") -> Path:
    """A host build laid out exactly as esphome 2026.6.5 leaves it (see storage JSON)."""
    config = config_dir / "host.yaml"
    config_dir.mkdir(parents=True, exist_ok=True)
    config.write_text(f"esphome:\n  name: {name}\nhost:\n")
    data = config_dir / ".esphome"
    build = data / "build" / name
    program = build / ".pioenvs" / name / "program"
    program.parent.mkdir(parents=True)
    program.write_bytes(PROGRAM)
    (program.parent / "firmware.elf").write_bytes(b"elf" * 10)
    storage = {
        "storage_version": 1,
        "name": name,
        "esphome_version": "2026.6.5",
        "esp_platform": "HOST",
        "build_path": str(build),
        "firmware_bin_path": str(program),
        "core_platform": "host",
        "toolchain": "platformio",
        "framework": "host",
    }
    (build / "build_info.json").write_text(json.dumps(BUILD_INFO))
    (data / "storage").mkdir(parents=True)
    (data / "storage" / "host.yaml.json").write_text(json.dumps(storage))
    (data / "storage" / "host.yaml.validated.yaml").write_text("esphome:\n  name: x\n")
    return config


def test_collect_then_materialise_gives_a_flashable_local_build(tmp_path: Path) -> None:
    receiver_store = ContentStore(tmp_path / "recv-cas")
    remote_config = fake_host_build(tmp_path / "receiver" / "work")
    manifest = collect_artifacts(remote_config, FlashMethod.OTA, receiver_store)
    roles = {f.role for f in manifest.files}
    assert roles == {"app", "storage", "validated_config", "build_info"}, "no ELF unless asked"
    assert manifest.name == "meshd-host"

    # The offloader receives the manifest over the wire and the blobs into its store.
    wire = json.loads(json.dumps(manifest.to_wire()))
    received = ArtifactManifest.from_wire(wire)
    local_store = ContentStore(tmp_path / "local-cas")
    for f in received.files:
        local_store.put_bytes(receiver_store.path(f.digest).read_bytes())

    local_config = tmp_path / "offloader" / "configs" / "host.yaml"
    local_config.parent.mkdir(parents=True)
    local_config.write_text("esphome:\n  name: meshd-host\nhost:\n")
    materialise_artifacts(received, local_store, local_config)

    record = load_storage(local_config)
    local_data = (local_config.parent / ".esphome").resolve()
    assert record.firmware_bin_path == local_data / "build/meshd-host/.pioenvs/meshd-host/program"
    assert record.build_path == local_data / "build/meshd-host"
    assert record.firmware_bin_path.read_bytes() == PROGRAM
    # What the firmware will report lands too, so the offloader can verify the flash.
    assert read_build_info(record.build_path).config_hash == f"{BUILD_INFO['config_hash']:08x}"
    plan = flash_plan(record, FlashMethod.OTA, local_config)
    assert plan.missing() == []
    assert str(tmp_path / "receiver") not in (local_data / "storage/host.yaml.json").read_text()


def test_elf_is_included_only_when_asked(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "cas")
    config = fake_host_build(tmp_path / "work")
    manifest = collect_artifacts(config, FlashMethod.OTA, store, include_elf=True)
    assert "elf" in {f.role for f in manifest.files}


def test_missing_build_record_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "dev.yaml"
    config.write_text("esphome:\n  name: dev\n")
    with pytest.raises(ArtifactError, match="compile it first"):
        collect_artifacts(config, FlashMethod.OTA, ContentStore(tmp_path / "cas"))


def test_build_outside_the_data_dir_is_refused(tmp_path: Path) -> None:
    config = fake_host_build(tmp_path / "work")
    storage = config.parent / ".esphome" / "storage" / "host.yaml.json"
    record = json.loads(storage.read_text())
    elsewhere = tmp_path / "elsewhere" / "program"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(PROGRAM)
    record["firmware_bin_path"] = str(elsewhere)
    storage.write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match="outside ESPHome's data directory"):
        collect_artifacts(config, FlashMethod.OTA, ContentStore(tmp_path / "cas"))


def _wire(**file_overrides: object) -> dict[str, object]:
    entry = {"role": "app", "path": "build/x/program", "digest": "a" * 64, "size": 10}
    entry.update(file_overrides)
    return {"name": "x", "esphome_version": "2026.6.5", "data_dir": "/r", "files": [entry]}


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (_wire(size=MAX_ARTIFACT_BYTES + 1), "claims"),
        (_wire(path="../../etc/cron.d/x"), "escapes"),
        (_wire(path="/etc/passwd"), "absolute"),
        (_wire(digest="not-a-digest"), "SHA-256"),
        (_wire(size="10"), "bad size"),
        (_wire(role=None), "bad role"),
        ({"files": "x"}, "file list"),
        ({"files": []}, "lacks name"),
    ],
)
def test_hostile_artifact_manifests_are_refused(wire: dict[str, object], why: str) -> None:
    with pytest.raises(BundleRejected, match=why):
        ArtifactManifest.from_wire(wire)
