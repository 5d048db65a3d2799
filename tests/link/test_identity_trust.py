"""Node identity files and the SQLite trust store."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from meshd.link.handshake import Mode
from meshd.link.server import PeerCandidate
from meshd.mesh.security import identity as identity_mod
from meshd.mesh.security.identity import (
    Identity,
    IdentityError,
    format_fingerprint,
    load_or_create,
    parse_fingerprint,
)
from meshd.mesh.security.trust import MAX_ADDRESSES, Permission, TrustStore


def test_identity_created_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "data")
    path = tmp_path / "data" / identity_mod.IDENTITY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = load_or_create(tmp_path / "data")
    assert first.public_key == second.public_key
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left


def test_concurrent_first_start_yields_one_key(tmp_path: Path) -> None:
    results: list[Identity] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_or_create(tmp_path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.fingerprint for r in results}) == 1


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    load_or_create(tmp_path)
    path = tmp_path / identity_mod.IDENTITY_FILE
    path.chmod(0o644)
    load_or_create(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_garbage_identity_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / identity_mod.IDENTITY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(IdentityError):
        load_or_create(tmp_path)


def test_fingerprint_forms() -> None:
    ident = Identity.from_seed(b"\x01" * 32)
    import hashlib

    assert ident.fingerprint == hashlib.sha256(ident.public_key).digest()
    assert ident.display == format_fingerprint(ident.fingerprint)
    groups = ident.display.split(" ")
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    assert ident.short == ident.fingerprint_hex[:16]
    assert parse_fingerprint(ident.display.upper()) == ident.fingerprint
    assert parse_fingerprint(":".join(groups)) == ident.fingerprint
    with pytest.raises(ValueError):
        parse_fingerprint("abcd")


def test_trust_store_crud(tmp_path: Path) -> None:
    clock = iter(range(100, 200))
    peer = Identity.generate()
    with TrustStore(tmp_path / "meshd.db", clock=lambda: float(next(clock))) as store:
        assert store.list() == [] and store.get(peer.fingerprint) is None
        added = store.add(
            peer.display, name="desktop", addresses=["10.0.0.2:7420"], may_build_for_me=True
        )
        assert added.fingerprint == peer.fingerprint_hex
        assert (added.may_build_for_me, added.may_send_work) == (True, False)
        assert added.added_at == 100.0
        widened = store.add(peer.fingerprint, may_send_work=True, addresses=["10.0.0.3:7420"])
        assert widened.may_send_work and widened.may_build_for_me  # roles are OR-ed
        assert widened.addresses == ("10.0.0.3:7420", "10.0.0.2:7420")
        assert widened.name == "desktop" and widened.added_at == 100.0
        renamed = store.update(peer.fingerprint, name="tower", may_build_for_me=False)
        assert renamed.name == "tower" and not renamed.may_build_for_me
        assert [p.fingerprint for p in store.list()] == [peer.fingerprint_hex]
        assert store.remove(peer.fingerprint) and not store.remove(peer.fingerprint)
        with pytest.raises(KeyError):
            store.update(peer.fingerprint, name="gone")


def test_trust_store_persists_and_shares_the_file(tmp_path: Path) -> None:
    peer = Identity.generate()
    with TrustStore.open(tmp_path) as store:
        store.add(peer.fingerprint, public_key=peer.public_key, may_send_work=True)
    with TrustStore.open(tmp_path) as store:
        got = store.get(peer.fingerprint)
        assert got is not None and got.public_key == peer.public_key
    import sqlite3

    db = sqlite3.connect(tmp_path / "meshd.db")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"trust_peers", "trust_quarantine"}  # only trust_ tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_addresses_are_capped(tmp_path: Path) -> None:
    peer = Identity.generate()
    with TrustStore.open(tmp_path) as store:
        store.add(peer.fingerprint)
        for i in range(MAX_ADDRESSES + 5):
            store.note_address(peer.fingerprint, f"10.0.0.{i}:7420")
        got = store.get(peer.fingerprint)
        assert got is not None and len(got.addresses) == MAX_ADDRESSES
        assert got.addresses[0] == f"10.0.0.{MAX_ADDRESSES + 4}:7420"


def test_wrong_public_key_for_fingerprint_is_refused(tmp_path: Path) -> None:
    a, b = Identity.generate(), Identity.generate()
    with TrustStore.open(tmp_path) as store, pytest.raises(ValueError):
        store.add(a.fingerprint, public_key=b.public_key)


def test_authorizer_checks_roles(tmp_path: Path) -> None:
    peer = Identity.generate()
    candidate = PeerCandidate(peer.public_key, peer.fingerprint, Mode.NORMAL, "", (), None)
    with TrustStore.open(tmp_path) as store:
        assert not store.authorizer()(candidate)
        store.add(peer.fingerprint, may_build_for_me=True)
        assert store.authorizer()(candidate)
        assert store.authorizer(Permission.BUILD_FOR_ME)(candidate)
        assert not store.authorizer(Permission.SEND_WORK)(candidate)
