"""The fleet's SQLite tables: last known device states and cached config hashes.

Both live in the daemon's ``meshd.db`` beside the jobs, opened with the settings every
meshd table relies on (``meshd.jobs.store.connect``: WAL, ``synchronous=FULL``). A
restart loads the devices at once, so ``meshd devices`` knows the fleet before the
first mDNS answer arrives, and a fleet of 100 configurations does not re-run
``esphome config-hash`` 100 times.

Rows are data the daemon wrote, but the file can be edited, restored from an old
backup or damaged: a row that does not parse is skipped with a logged reason, never
a crash, and the next write for that name replaces it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from meshd.db import connect
from meshd.fleet.advert import AdvertError, advert_from_dict
from meshd.fleet.model import DeviceState

_LOGGER = logging.getLogger(__name__)

_HASH_RE = re.compile(r"[0-9a-f]{8}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_devices (
    name           TEXT PRIMARY KEY,
    advert         TEXT NOT NULL,
    online         INTEGER NOT NULL,
    first_seen     REAL NOT NULL,
    last_seen      REAL NOT NULL,
    offline_since  REAL,
    offline_reason TEXT
);
CREATE TABLE IF NOT EXISTS fleet_config_hashes (
    config          TEXT PRIMARY KEY,
    config_hash     TEXT NOT NULL,
    esphome_version TEXT NOT NULL,
    files           TEXT NOT NULL,
    computed_at     REAL NOT NULL
);
"""


@dataclass(frozen=True)
class FileStamp:
    """One input of a configuration, as ``os.stat`` saw it."""

    path: str
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class StoredHash:
    config: str
    config_hash: str
    esphome_version: str
    files: tuple[FileStamp, ...]
    computed_at: float


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} is not a number")
    return float(value)


def _device_from_row(row: tuple[object, ...]) -> DeviceState:
    name, advert_json, online, first_seen, last_seen, offline_since, offline_reason = row
    if not isinstance(advert_json, str):
        raise TypeError("advert is not text")
    data = json.loads(advert_json)
    if not isinstance(data, dict):
        raise TypeError("advert is not an object")
    advert = advert_from_dict(data)
    if advert.name != name:
        raise ValueError(f"advert names {advert.name!r}, row {name!r}")
    if online not in (0, 1):
        raise ValueError("online is not 0 or 1")
    if offline_reason is not None and not isinstance(offline_reason, str):
        raise ValueError("offline_reason is not text")
    return DeviceState(
        advert=advert,
        online=bool(online),
        first_seen=_number(first_seen, "first_seen"),
        last_seen=_number(last_seen, "last_seen"),
        offline_since=None if offline_since is None else _number(offline_since, "offline_since"),
        offline_reason=offline_reason,
    )


def _hash_from_row(row: tuple[object, ...]) -> StoredHash:
    config, config_hash, version, files_json, computed_at = row
    if not isinstance(config, str) or not isinstance(config_hash, str):
        raise TypeError("config or hash is not text")
    if not _HASH_RE.fullmatch(config_hash):
        raise ValueError("config_hash is not 8 lowercase hex digits")
    if not isinstance(version, str) or not isinstance(files_json, str):
        raise TypeError("version or files is not text")
    files = json.loads(files_json)
    if not isinstance(files, list):
        raise TypeError("files is not a list")
    stamps: list[FileStamp] = []
    for item in files:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or not isinstance(item[0], str)
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in item[1:])
        ):
            raise ValueError("a file stamp is not [path, mtime_ns, size]")
        stamps.append(FileStamp(item[0], item[1], item[2]))
    return StoredHash(config, config_hash, version, tuple(stamps), _number(computed_at, "time"))


class FleetStore:
    """Whole-row upserts and loads for the fleet tables; each write commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    # -- devices ----------------------------------------------------------------------

    def save_device(self, device: DeviceState) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO fleet_devices (name, advert, online, first_seen,"
            " last_seen, offline_since, offline_reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                device.name,
                json.dumps(device.advert.to_dict(), sort_keys=True),
                int(device.online),
                device.first_seen,
                device.last_seen,
                device.offline_since,
                device.offline_reason,
            ),
        )

    def delete_device(self, name: str) -> None:
        self._conn.execute("DELETE FROM fleet_devices WHERE name = ?", (name,))

    def load_devices(self) -> list[DeviceState]:
        """Every readable device row; unreadable ones are logged and skipped."""
        rows = self._conn.execute(
            "SELECT name, advert, online, first_seen, last_seen, offline_since,"
            " offline_reason FROM fleet_devices ORDER BY name"
        ).fetchall()
        devices: list[DeviceState] = []
        for row in rows:
            try:
                devices.append(_device_from_row(tuple(row)))
            except (ValueError, AdvertError, TypeError) as err:
                _LOGGER.warning("skipping stored device %r: %s", str(row[0])[:80], err)
        return devices

    # -- config hashes ----------------------------------------------------------------

    def save_hash(self, entry: StoredHash) -> None:
        files = [[f.path, f.mtime_ns, f.size] for f in entry.files]
        self._conn.execute(
            "INSERT OR REPLACE INTO fleet_config_hashes (config, config_hash,"
            " esphome_version, files, computed_at) VALUES (?, ?, ?, ?, ?)",
            (
                entry.config,
                entry.config_hash,
                entry.esphome_version,
                json.dumps(files),
                entry.computed_at,
            ),
        )

    def delete_hash(self, config: str) -> None:
        self._conn.execute("DELETE FROM fleet_config_hashes WHERE config = ?", (config,))

    def load_hashes(self) -> dict[str, StoredHash]:
        rows = self._conn.execute(
            "SELECT config, config_hash, esphome_version, files, computed_at"
            " FROM fleet_config_hashes"
        ).fetchall()
        hashes: dict[str, StoredHash] = {}
        for row in rows:
            try:
                entry = _hash_from_row(tuple(row))
            except (ValueError, TypeError) as err:
                _LOGGER.warning("skipping stored config hash %r: %s", str(row[0])[:200], err)
                continue
            hashes[entry.config] = entry
        return hashes


def open_store(data_dir: Path, filename: str = "meshd.db") -> FleetStore:
    """The fleet tables in the daemon's database file."""
    return FleetStore(data_dir / filename)
