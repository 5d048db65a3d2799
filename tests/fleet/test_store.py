"""The fleet tables: round trips, sharing meshd.db with the jobs, and rows that do not parse."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from meshd.fleet.advert import instance_name, parse_advert
from meshd.fleet.model import DeviceState
from meshd.fleet.monitor import OFFLINE_RESTORED
from meshd.fleet.store import FileStamp, FleetStore, StoredHash
from meshd.jobs.store import JobStore
from tests.fleet.conftest import MonitorFactory
from tests.support.esphome_advert import esp32_txt


def device(name: str, *, online: bool = True, config_hash: str = "0badf00d") -> DeviceState:
    txt = esp32_txt(name, version="2026.6.5", config_hash=config_hash)
    advert, problems = parse_advert(
        instance_name(name),
        {k.encode(): v.encode() for k, v in txt.items()},
        addresses=["192.168.1.7", "fe80::7%eth0"],
        port=6053,
        host=f"{name}.local.",
    )
    assert problems == []
    return DeviceState(
        advert=advert,
        online=online,
        first_seen=1000.0,
        last_seen=2000.0,
        offline_since=None if online else 2100.0,
        offline_reason=None if online else "left mDNS (goodbye)",
    )


def test_devices_round_trip_beside_the_jobs_table(tmp_path: Path) -> None:
    db = tmp_path / "meshd.db"
    jobs = JobStore(db)  # the same file the daemon's engine uses
    store = FleetStore(db)
    try:
        a, b = device("alpha"), device("bravo", online=False)
        store.save_device(a)
        store.save_device(b)
        store.save_device(device("alpha", config_hash="12345678"))  # replaces
        loaded = {d.name: d for d in FleetStore(db).load_devices()}
        assert loaded["bravo"] == b
        assert loaded["alpha"].advert.config_hash == "12345678"
        assert jobs.load_all() == []
        store.delete_device("bravo")
        assert [d.name for d in store.load_devices()] == ["alpha"]
    finally:
        store.close()
        jobs.close()


def test_config_hashes_round_trip(tmp_path: Path) -> None:
    store = FleetStore(tmp_path / "meshd.db")
    try:
        entry = StoredHash("/cfg/a.yaml", "0badf00d", "2026.6.5",
                           (FileStamp("/cfg/a.yaml", 123456789, 42),), 99.5)  # fmt: skip
        store.save_hash(entry)
        assert store.load_hashes() == {"/cfg/a.yaml": entry}
        store.delete_hash("/cfg/a.yaml")
        assert store.load_hashes() == {}
    finally:
        store.close()


def _insert_raw(db: Path, table: str, row: tuple[object, ...]) -> None:
    conn = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(row))
        conn.execute(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", row)
        conn.commit()
    finally:
        conn.close()


BAD_DEVICE_ROWS = [
    (("junk", "{not json", 1, 1.0, 2.0, None, None), "junk"),
    (("list", "[1, 2]", 1, 1.0, 2.0, None, None), "advert is not an object"),
    (("blob", b"\x00\x01", 1, 1.0, 2.0, None, None), "advert is not text"),
    (("other", json.dumps(device("elsewhere").advert.to_dict()), 1, 1.0, 2.0, None, None),
     "advert names 'elsewhere'"),
    (("flag", json.dumps(device("flag").advert.to_dict()), 7, 1.0, 2.0, None, None),
     "online is not 0 or 1"),
    (("when", json.dumps(device("when").advert.to_dict()), 1, "yesterday", 2.0, None, None),
     "first_seen is not a number"),
    (("hash", json.dumps({**device("hash").advert.to_dict(),
                          "txt": {"config_hash": "0xZZ"}}), 1, 1.0, 2.0, None, None),
     "config_hash is not 8 lowercase hex digits"),
]  # fmt: skip


def test_bad_device_rows_are_skipped_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "meshd.db"
    store = FleetStore(db)
    try:
        store.save_device(device("good"))
        for row, _ in BAD_DEVICE_ROWS:
            _insert_raw(db, "fleet_devices", row)
        caplog.set_level(logging.WARNING, logger="meshd.fleet.store")
        assert [d.name for d in store.load_devices()] == ["good"]
        for row, reason in BAD_DEVICE_ROWS:
            assert f"skipping stored device {row[0]!r}" in caplog.text
            assert reason in caplog.text or row[0] == "junk"
        # The next write for a bad name replaces it.
        store.save_device(device("flag"))
        assert sorted(d.name for d in store.load_devices()) == ["flag", "good"]
    finally:
        store.close()


def test_bad_hash_rows_are_skipped_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "meshd.db"
    store = FleetStore(db)
    try:
        rows = [
            ("/a.yaml", "0badf00d", "2026.6.5", "not json", 1.0),
            ("/b.yaml", "0xbadf00d", "2026.6.5", "[]", 1.0),
            ("/c.yaml", "0badf00d", "2026.6.5", '[["/c.yaml", "x", 1]]', 1.0),
            ("/d.yaml", "0badf00d", "2026.6.5", '{"a": 1}', 1.0),
            ("/e.yaml", "0badf00d", "2026.6.5", '[["/e.yaml", 1, 2]]', 1.0),
        ]
        for row in rows:
            _insert_raw(db, "fleet_config_hashes", row)
        caplog.set_level(logging.WARNING, logger="meshd.fleet.store")
        assert list(store.load_hashes()) == ["/e.yaml"]
        for config in ("/a.yaml", "/b.yaml", "/c.yaml", "/d.yaml"):
            assert f"skipping stored config hash {config!r}" in caplog.text
    finally:
        store.close()


async def test_the_monitor_restores_good_rows_past_bad_ones(
    tmp_path: Path, monitors: MonitorFactory
) -> None:
    db = tmp_path / "meshd.db"
    store = FleetStore(db)
    try:
        store.save_device(device("survivor"))
        _insert_raw(db, "fleet_devices", BAD_DEVICE_ROWS[0][0])
        monitor = await monitors(store=store)
        restored = monitor.get("survivor")
        assert restored is not None and not restored.online
        assert restored.offline_reason == OFFLINE_RESTORED
        assert restored.offline_since == restored.last_seen == 2000.0
        assert monitor.get("junk") is None
    finally:
        store.close()
