"""Bundles as hostile input: safe reading, manifest validation, warm materialising."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from meshd.mesh.content import bundle as bundle_mod
from meshd.mesh.content.bundle import (
    BundleFile,
    BundleManifest,
    BundleRejected,
    materialise,
    prune_workdirs,
    read_bundle,
    safe_relative_path,
)
from meshd.mesh.content.store import ContentError, ContentStore

ESPHOME = Path(sys.executable).with_name("esphome")

HOST_YAML = """\
esphome:
  name: bundletest
  includes:
    - custom.h
host:
logger:
"""


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def manifest_member(config: str = "dev.yaml") -> tuple[tarfile.TarInfo, bytes]:
    return file_member("manifest.json", json.dumps({"config_filename": config}).encode())


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "cas")


def test_a_real_esphome_bundle_round_trips(tmp_path: Path, store: ContentStore) -> None:
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "dev.yaml").write_text(HOST_YAML)
    (configs / "custom.h").write_text("#pragma once\n")
    out = tmp_path / "dev.tar.gz"
    # esphome bundle reads only local files; run it without network all the same.
    subprocess.run(
        ["unshare", "-n", str(ESPHOME), "bundle", "dev.yaml", "-o", str(out)],
        cwd=configs,
        check=True,
        capture_output=True,
    )
    manifest = read_bundle(out, store)
    assert manifest.config_filename == "dev.yaml"
    assert {f.path for f in manifest.files} >= {"dev.yaml", "custom.h"}
    workdir = tmp_path / "work"
    config = materialise(manifest, store, workdir)
    assert config == (workdir / "dev.yaml").resolve()
    assert config.read_text() == HOST_YAML
    assert (workdir / "custom.h").read_text() == "#pragma once\n"
    assert BundleManifest.from_wire(manifest.to_wire()) == manifest


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil.yaml", "escapes"),
        ("a/../../evil.yaml", "escapes"),
        ("/etc/passwd", "absolute"),
        ("a\\..\\b", "backslash"),
        (".esphome/storage/dev.yaml.json", "build cache"),
        ("x" * 600, "longer"),
        ("", "bad path"),
    ],
)
def test_unsafe_paths_are_refused_with_a_reason(name: str, why: str) -> None:
    with pytest.raises(BundleRejected, match=why):
        safe_relative_path(name)


def test_tar_with_dotdot_member_is_refused(tmp_path: Path, store: ContentStore) -> None:
    archive = make_tar(
        tmp_path / "b.tar.gz",
        [manifest_member(), file_member("dev.yaml", b"x"), file_member("../../evil", b"boom")],
    )
    with pytest.raises(BundleRejected, match="escapes"):
        read_bundle(archive, store)
    assert not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
)
def test_links_and_special_files_are_refused(
    tmp_path: Path, store: ContentStore, kind: bytes
) -> None:
    special = tarfile.TarInfo("dev.yaml")
    special.type = kind
    special.linkname = "/etc/shadow"
    archive = make_tar(tmp_path / "b.tar.gz", [manifest_member(), (special, None)])
    with pytest.raises(BundleRejected, match=r"link|special"):
        read_bundle(archive, store)


def test_size_and_count_caps(
    tmp_path: Path, store: ContentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundle_mod, "MAX_BUNDLE_BYTES", 1000)
    archive = make_tar(
        tmp_path / "big.tar.gz", [manifest_member(), file_member("dev.yaml", b"x" * 2000)]
    )
    with pytest.raises(BundleRejected, match="exceeds"):
        read_bundle(archive, store)
    monkeypatch.setattr(bundle_mod, "MAX_BUNDLE_FILES", 3)
    many = [manifest_member()] + [file_member(f"f{i}.h", b"") for i in range(5)]
    with pytest.raises(BundleRejected, match="exceeds"):
        read_bundle(make_tar(tmp_path / "many.tar.gz", many), store)


def test_corrupt_or_incomplete_archives(tmp_path: Path, store: ContentStore) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(BundleRejected, match="bundle"):
        read_bundle(garbage, store)
    no_manifest = make_tar(tmp_path / "nm.tar.gz", [file_member("dev.yaml", b"x")])
    with pytest.raises(BundleRejected, match="manifest"):
        read_bundle(no_manifest, store)
    wrong_config = make_tar(
        tmp_path / "wc.tar.gz", [manifest_member("other.yaml"), file_member("dev.yaml", b"x")]
    )
    with pytest.raises(BundleRejected, match="not in the bundle"):
        read_bundle(wrong_config, store)


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        ("nope", "not a map"),
        ({"config": "a.yaml"}, "no file list"),
        ({"config": "a.yaml", "files": ["x"]}, "not a map"),
        ({"config": "a.yaml", "files": [{"path": "a.yaml", "digest": "zz", "size": 1}]}, "SHA-256"),
        (
            {"config": "a.yaml", "files": [{"path": "a.yaml", "digest": "0" * 64, "size": -1}]},
            "bad size",
        ),
        (
            {"config": "a.yaml", "files": [{"path": "a.yaml", "digest": "0" * 64, "size": 1}] * 2},
            "twice",
        ),
        (
            {
                "config": "a.yaml",
                "files": [
                    {"path": "a.yaml", "digest": "0" * 64, "size": 1},
                    {"path": "a.yaml/b", "digest": "0" * 64, "size": 1},
                ],
            },
            "both a file and a directory",
        ),
        ({"config": "../a.yaml", "files": []}, "escapes"),
        (
            {"config": "a.yaml", "files": [{"path": "a.yaml", "digest": "0" * 64, "size": 2**40}]},
            "max",
        ),
    ],
)
def test_hostile_manifests_are_rejected(wire: object, why: str) -> None:
    with pytest.raises(BundleRejected, match=why):
        BundleManifest.from_wire(wire)


def _manifest(store: ContentStore, files: dict[str, bytes]) -> BundleManifest:
    entries = tuple(BundleFile(p, store.put_bytes(d), len(d)) for p, d in files.items())
    return BundleManifest("dev.yaml", entries)


def test_materialise_keeps_unchanged_files_and_build_cache(
    tmp_path: Path, store: ContentStore
) -> None:
    work = tmp_path / "work"
    first = _manifest(store, {"dev.yaml": b"v1", "inc/a.h": b"a", "old.h": b"o"})
    materialise(first, store, work)
    cache = work / ".esphome" / "build" / "dev" / "obj.o"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"object")
    os.utime(work / "inc" / "a.h", (1_000_000, 1_000_000))

    second = _manifest(store, {"dev.yaml": b"v2", "inc/a.h": b"a"})
    materialise(second, store, work)
    assert (work / "dev.yaml").read_bytes() == b"v2"
    assert (work / "inc" / "a.h").stat().st_mtime == 1_000_000, "unchanged file was rewritten"
    assert not (work / "old.h").exists()
    assert cache.read_bytes() == b"object"


def test_materialise_refuses_a_planted_symlink_directory(
    tmp_path: Path, store: ContentStore
) -> None:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    outside.mkdir()
    manifest = _manifest(store, {"dev.yaml": b"v1", "inc/a.h": b"a"})
    materialise(manifest, store, work)
    shutil.rmtree(work / "inc")
    (work / "inc").symlink_to(outside)
    materialise(manifest, store, work)  # the stray link is removed, not followed
    assert not any(outside.iterdir())
    assert (work / "inc" / "a.h").read_bytes() == b"a" and not (work / "inc").is_symlink()


def test_materialise_requires_every_blob(tmp_path: Path, store: ContentStore) -> None:
    absent = BundleManifest("dev.yaml", (BundleFile("dev.yaml", "ab" * 32, 3),))
    with pytest.raises(BundleRejected, match="never received"):
        materialise(absent, store, tmp_path / "work")


def test_content_store_verifies_size_and_digest(store: ContentStore) -> None:
    data = b"firmware" * 1000
    digest = hashlib.sha256(data).hexdigest()
    with (
        pytest.raises(ContentError, match="failed verification"),
        store.writer(digest, len(data)) as w,
    ):
        w.write(data[:-1])
    assert not store.has(digest)
    with pytest.raises(ContentError, match="larger"), store.writer(digest, 4) as w:
        w.write(data)
    tampered = bytearray(data)
    tampered[10] ^= 1
    with (
        pytest.raises(ContentError, match="failed verification"),
        store.writer(digest, len(data)) as w,
    ):
        w.write(bytes(tampered))
    assert not store.has(digest)
    assert not list(store.root.rglob(".incoming-*")), "a failed write left a temp file"
    with store.writer(digest, len(data)) as w:
        w.write(data[:100])
        w.write(memoryview(data)[100:])
    assert store.has(digest) and store.missing([digest, "00" * 32]) == ["00" * 32]
    with pytest.raises(ContentError, match="SHA-256"):
        store.path("../../etc/passwd")


def test_prune_removes_only_stale_workdirs(tmp_path: Path, store: ContentStore) -> None:
    root = tmp_path / "builds"
    manifest = _manifest(store, {"dev.yaml": b"v"})
    materialise(manifest, store, root / "offloader1" / "old")
    materialise(manifest, store, root / "offloader1" / "fresh")
    marker = root / "offloader1" / "old" / bundle_mod.USED_MARKER
    os.utime(marker, (1000.0, 1000.0))
    now = (root / "offloader1" / "fresh" / bundle_mod.USED_MARKER).stat().st_mtime
    removed = prune_workdirs(root, ttl_seconds=3600, now=now)
    assert removed == [root / "offloader1" / "old"]
    assert (root / "offloader1" / "fresh" / "dev.yaml").exists()


def test_content_store_prunes_unused_blobs_and_keeps_used_ones(store: ContentStore) -> None:
    old = store.put_bytes(b"old firmware")
    reused = store.put_bytes(b"still needed")
    asked = store.put_bytes(b"asked about")
    for digest in (old, reused, asked):
        os.utime(store.path(digest), (1000.0, 1000.0))
    now = 1000.0 + 7200
    os.utime(store.root, (now, now))
    store.put_bytes(b"still needed")  # reuse marks it used
    assert store.missing([asked]) == []  # so does a have_query that finds it
    count, size = store.prune(3600, now=now + 10)
    assert (count, size) == (1, len(b"old firmware"))
    assert not store.has(old) and store.has(reused) and store.has(asked)
