"""A receiver's artifacts land only in the job's own configuration, with private modes.

A receiver trusted to build ``kitchen.yaml`` must not replace the firmware or records
of ``garage.yaml`` in the same directory (docs/SECURITY.md, "Paired receiver"), and the
offloader's copies of esphome's records (the validated config holds inline secrets)
are 0600 in 0700 directories whatever the umask.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.mesh.content.artifacts import (
    Artifact,
    ArtifactManifest,
    collect_artifacts,
    materialise_artifacts,
)
from meshd.mesh.content.bundle import BundleRejected
from meshd.mesh.content.store import ContentStore
from meshd.toolchain.storage import FlashMethod, load_storage
from tests.mesh.test_artifacts import PROGRAM, fake_host_build


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def received(tmp_path: Path, name: str = "meshd-host") -> tuple[ArtifactManifest, ContentStore]:
    """What an honest receiver built for ``host.yaml`` (device ``name``), in our store."""
    receiver_store = ContentStore(tmp_path / "recv-cas")
    remote = fake_host_build(tmp_path / "receiver" / "work", name)
    manifest = collect_artifacts(remote, FlashMethod.OTA, receiver_store, include_elf=True)
    local = ContentStore(tmp_path / "local-cas")
    for f in manifest.files:
        local.put_bytes(receiver_store.path(f.digest).read_bytes())
    return ArtifactManifest.from_wire(json.loads(json.dumps(manifest.to_wire()))), local


def offloader_dir(tmp_path: Path) -> tuple[Path, Path]:
    """Our config dir: host.yaml (being built remotely) and garage.yaml (built here)."""
    garage = fake_host_build(tmp_path / "offloader", "garage")
    garage = garage.rename(garage.with_name("garage.yaml"))
    storage = garage.parent / ".esphome" / "storage"
    (storage / "host.yaml.json").rename(storage / "garage.yaml.json")
    (storage / "host.yaml.validated.yaml").unlink()
    host = garage.with_name("host.yaml")
    host.write_text("esphome:\n  name: meshd-host\nhost:\n")
    return host, garage


def test_artifacts_under_another_configurations_name_are_refused(tmp_path: Path) -> None:
    host, _garage = offloader_dir(tmp_path)
    host.write_text("esphome:\n  name: ${dev}\nsubstitutions:\n  dev: garage\nhost:\n")
    manifest, store = received(tmp_path, "garage")  # the receiver says: device "garage"
    garage_program = host.parent / ".esphome/build/garage/.pioenvs/garage/program"
    before = garage_program.read_bytes()
    with pytest.raises(BundleRejected, match="belongs to another configuration"):
        materialise_artifacts(manifest, store, host)
    assert garage_program.read_bytes() == before


def test_a_name_other_than_the_yamls_literal_one_is_refused(tmp_path: Path) -> None:
    host, _ = offloader_dir(tmp_path)
    manifest, store = received(tmp_path, "elsewhere")
    with pytest.raises(BundleRejected, match="names the device 'meshd-host'"):
        materialise_artifacts(manifest, store, host)


@pytest.mark.parametrize(
    ("role", "path"),
    [
        ("storage", "storage/garage.yaml.json"),
        ("validated_config", "storage/garage.yaml.validated.yaml"),
        ("idedata", "idedata/garage.json"),
        ("app", "build/garage/.pioenvs/garage/program"),
        ("app", "storage/host.yaml.json"),
        ("bootloader", "other/bootloader.bin"),
    ],
)
def test_each_role_lands_only_in_its_own_place(tmp_path: Path, role: str, path: str) -> None:
    host, garage = offloader_dir(tmp_path)
    manifest, store = received(tmp_path)
    evil = Artifact(role, path, manifest.files[0].digest, manifest.files[0].size)
    manifest = replace(manifest, files=(*manifest.files, evil))
    with pytest.raises(BundleRejected, match="is not this configuration's"):
        materialise_artifacts(manifest, store, host)
    assert load_storage(garage).name == "garage"
    assert not (host.parent / ".esphome/storage/host.yaml.json").exists(), "nothing written"


def test_a_record_pointing_outside_its_build_dir_is_refused(tmp_path: Path) -> None:
    host, _ = offloader_dir(tmp_path)
    manifest, store = received(tmp_path)
    [record] = [f for f in manifest.files if f.role == "storage"]
    data = json.loads(store.path(record.digest).read_bytes())
    data["firmware_bin_path"] = str(host.parent / ".esphome/build/garage/.pioenvs/garage/program")
    forged = store.put_bytes(json.dumps(data).encode())
    files = tuple(
        replace(f, digest=forged, size=len(json.dumps(data))) if f.role == "storage" else f
        for f in manifest.files
    )
    # The forged record names no receiver path, so the rewrite leaves the garage path.
    with pytest.raises(BundleRejected, match="firmware_bin_path"):
        materialise_artifacts(replace(manifest, files=files), store, host)


def test_landed_files_are_private_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    host, _ = offloader_dir(tmp_path)
    data = host.parent / ".esphome"
    data.chmod(0o755)  # a pre-existing, loose data dir
    manifest, store = received(tmp_path)
    written = materialise_artifacts(manifest, store, host)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    modes = {p.relative_to(data).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in written}
    assert modes["storage/host.yaml.validated.yaml"] == 0o600
    assert modes["storage/host.yaml.json"] == 0o600
    assert modes["build/meshd-host/.pioenvs/meshd-host/program"] == 0o700
    assert modes["build/meshd-host/.pioenvs/meshd-host/firmware.elf"] == 0o600
    for directory in (
        data / "build",
        data / "build/meshd-host",
        data / "build/meshd-host/.pioenvs",
    ):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    record = load_storage(host)
    assert record.firmware_bin_path is not None
    assert record.firmware_bin_path.read_bytes() == PROGRAM
