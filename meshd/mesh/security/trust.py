"""Trusted peers, in the node's SQLite database (``<data_dir>/meshd.db``, WAL).

Trust is explicit and per direction, because what travels differs: a receiver runs
what it is sent, so it needs ``may_send_work`` for an offloader; an offloader sends
configurations holding Wi-Fi and API secrets, so it needs ``may_build_for_me`` for a
receiver. A peer is identified by its fingerprint (SHA-256 of its Ed25519 key); the
key itself is remembered once a handshake has shown it.

The job store shares the database file through its own connection (both opened by
:func:`meshd.db.connect`), so this module creates only ``trust_``-prefixed tables,
with ``CREATE TABLE IF NOT EXISTS``.
Calls are short indexed statements; the daemon may run them on the loop or in a thread
(the connection is guarded by a lock and not tied to one thread).

A row that cannot be read strictly (a malformed fingerprint, a public key that does
not match it, addresses that are not a JSON list of strings, a permission that is not
exactly 0 or 1, a missing timestamp) is moved to ``trust_quarantine`` with the reason
and logged. That fails closed: the peer is simply no longer trusted until the operator
trusts or pairs it again, and a value like ``'false'`` can never grant a permission.
"""

from __future__ import annotations

import builtins
import enum
import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from meshd.db import connect, database_path
from meshd.link.crypto import fingerprint as key_fingerprint
from meshd.link.server import PeerCandidate
from meshd.mesh.security.identity import parse_fingerprint

_LOGGER = logging.getLogger(__name__)

_FINGERPRINT: Final = re.compile(r"[0-9a-f]{64}")

# Addresses remembered per peer: enough for a couple of interfaces and static entries,
# few enough that a peer moving around DHCP leases does not grow the row without end.
MAX_ADDRESSES: Final = 8

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS trust_peers (
    fingerprint      TEXT PRIMARY KEY,
    public_key       BLOB,
    name             TEXT NOT NULL DEFAULT '',
    addresses        TEXT NOT NULL DEFAULT '[]',
    may_send_work    INTEGER NOT NULL DEFAULT 0,
    may_build_for_me INTEGER NOT NULL DEFAULT 0,
    added_at         REAL NOT NULL,
    updated_at       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trust_quarantine (
    fingerprint    TEXT,
    row            TEXT NOT NULL,
    reason         TEXT NOT NULL,
    quarantined_at REAL NOT NULL
)
"""


class Permission(enum.Enum):
    """A permission a trusted peer can hold (not the link's ``Role``: initiator/responder)."""

    SEND_WORK = "may_send_work"
    """It may send me compiles (I am its receiver)."""
    BUILD_FOR_ME = "may_build_for_me"
    """I may send it configurations (it is my receiver)."""


@dataclass(frozen=True)
class TrustedPeer:
    """One row of the trust store."""

    fingerprint: str
    name: str
    addresses: tuple[str, ...]
    may_send_work: bool
    may_build_for_me: bool
    added_at: float
    updated_at: float
    public_key: bytes | None = None

    def allows(self, permission: Permission) -> bool:
        return self.may_send_work if permission is Permission.SEND_WORK else self.may_build_for_me

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> Self:
        """Decode strictly; BadTrustRow says what is wrong (the caller quarantines)."""
        keys = row.keys()
        missing = {"fingerprint", "public_key", "name", "addresses"} - set(keys)
        missing |= {r.value for r in Permission} - set(keys)
        missing |= {"added_at", "updated_at"} - set(keys)
        if missing:
            raise BadTrustRow(f"columns missing: {', '.join(sorted(missing))}")
        fingerprint = row["fingerprint"]
        if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
            raise BadTrustRow(f"fingerprint {fingerprint!r:.80} is not 64 lower-case hex digits")
        public_key = row["public_key"]
        if public_key is not None and (
            not isinstance(public_key, bytes)
            or len(public_key) != 32
            or key_fingerprint(public_key).hex() != fingerprint
        ):
            raise BadTrustRow("public key does not match the fingerprint")
        name = row["name"]
        if not isinstance(name, str):
            raise BadTrustRow(f"name is {name!r:.60}, not text")
        try:
            addresses = json.loads(row["addresses"])
        except (TypeError, ValueError) as exc:
            raise BadTrustRow(f"addresses are not JSON ({exc})") from None
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise BadTrustRow("addresses are not a list of text")
        flags = {}
        for role in Permission:
            value = row[role.value]
            if isinstance(value, bool) or value not in (0, 1) or not isinstance(value, int):
                raise BadTrustRow(f"{role.value} is {value!r:.60}, not 0 or 1")
            flags[role.value] = value == 1
        stamps = {}
        for key in ("added_at", "updated_at"):
            value = row[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise BadTrustRow(f"{key} is {value!r:.60}, not a time")
            stamps[key] = float(value)
        return cls(
            fingerprint=fingerprint,
            name=name,
            addresses=tuple(addresses),
            may_send_work=flags[Permission.SEND_WORK.value],
            may_build_for_me=flags[Permission.BUILD_FOR_ME.value],
            added_at=stamps["added_at"],
            updated_at=stamps["updated_at"],
            public_key=public_key,
        )


class BadTrustRow(ValueError):
    """A trust row this version cannot read safely; the message says why."""


def _jsonable(value: object) -> object:
    """A stored value as JSON can keep it (blobs as hex, the rest as their repr)."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return repr(value)


def _normalise(fingerprint: str | bytes) -> str:
    if isinstance(fingerprint, bytes):
        if len(fingerprint) != 32:
            raise ValueError("a fingerprint is 32 bytes")
        return fingerprint.hex()
    return parse_fingerprint(fingerprint).hex()


def _merge_addresses(old: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    """Newest first, no duplicates, at most MAX_ADDRESSES."""
    merged: list[str] = []
    for address in [*new, *old]:
        if address and address not in merged:
            merged.append(address)
    return tuple(merged[:MAX_ADDRESSES])


class TrustStore:
    """Add, update, remove, list and look up trusted peers."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._db = connect(path)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.executescript(_SCHEMA)

    @classmethod
    def open(cls, data_dir: Path) -> Self:
        """The store in ``data_dir/meshd.db`` (directory created if missing)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(database_path(data_dir))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- queries ----------------------------------------------------------------------

    def get(self, fingerprint: str | bytes) -> TrustedPeer | None:
        """The trusted peer, or None (also when its row had to be quarantined)."""
        fp = _normalise(fingerprint)
        with self._lock:
            row = self._db.execute(
                "SELECT rowid, * FROM trust_peers WHERE fingerprint = ?", (fp,)
            ).fetchone()
            return None if row is None else self._decode(row)

    def list(self) -> list[TrustedPeer]:
        """Every readable trusted peer; unreadable rows are quarantined and left out."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, * FROM trust_peers ORDER BY added_at, fingerprint"
            ).fetchall()
            decoded = [self._decode(row) for row in rows]
        return [peer for peer in decoded if peer is not None]

    def quarantined(self) -> builtins.list[tuple[str | None, str]]:
        """(fingerprint, reason) of every quarantined trust row, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint, reason FROM trust_quarantine ORDER BY quarantined_at, rowid"
            ).fetchall()
        return [(fp, str(reason)) for fp, reason in rows]

    def _decode(self, row: sqlite3.Row) -> TrustedPeer | None:
        """Decode one row, or move it to ``trust_quarantine`` (the lock is held)."""
        try:
            return TrustedPeer._from_row(row)
        except BadTrustRow as exc:
            reason = str(exc)
        fingerprint = row["fingerprint"] if isinstance(row["fingerprint"], str) else None
        raw = {key: _jsonable(row[key]) for key in row.keys() if key != "rowid"}  # noqa: SIM118 - sqlite3.Row
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO trust_quarantine (fingerprint, row, reason, quarantined_at)"
                " VALUES (?, ?, ?, ?)",
                (fingerprint, json.dumps(raw, sort_keys=True), reason, time.time()),
            )
            self._db.execute("DELETE FROM trust_peers WHERE rowid = ?", (row["rowid"],))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        _LOGGER.warning(
            "trusted peer %s cannot be read (%s); moved it to the trust_quarantine table of "
            "%s: it is no longer trusted until you trust or pair it again",
            (fingerprint or "?")[:16],
            reason,
            self.path,
        )
        return None

    def is_trusted(self, public_key: bytes, role: Permission | None = None) -> bool:
        """Whether this key is trusted at all (``role=None``) or for ``role``."""
        peer = self.get(key_fingerprint(public_key))
        if peer is None:
            return False
        if peer.public_key is not None and peer.public_key != public_key:
            return False  # cannot happen short of a SHA-256 collision; refuse anyway
        return True if role is None else peer.allows(role)

    # -- changes ----------------------------------------------------------------------

    def add(
        self,
        fingerprint: str | bytes,
        *,
        name: str = "",
        addresses: Iterable[str] = (),
        may_send_work: bool = False,
        may_build_for_me: bool = False,
        public_key: bytes | None = None,
    ) -> TrustedPeer:
        """Trust a peer, or widen an existing entry: roles are OR-ed, addresses merged."""
        fp = _normalise(fingerprint)
        if public_key is not None and key_fingerprint(public_key).hex() != fp:
            raise ValueError("public key does not match the fingerprint")
        now = self._clock()
        existing = self.get(fp)
        if existing is None:
            with self._lock:
                self._db.execute(
                    "INSERT INTO trust_peers (fingerprint, public_key, name, addresses,"
                    " may_send_work, may_build_for_me, added_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        fp,
                        public_key,
                        name,
                        json.dumps(list(_merge_addresses((), addresses))),
                        int(may_send_work),
                        int(may_build_for_me),
                        now,
                        now,
                    ),
                )
        else:
            self.update(
                fp,
                name=name or None,
                addresses=_merge_addresses(existing.addresses, addresses),
                may_send_work=existing.may_send_work or may_send_work,
                may_build_for_me=existing.may_build_for_me or may_build_for_me,
                public_key=public_key,
            )
        result = self.get(fp)
        assert result is not None
        return result

    def update(
        self,
        fingerprint: str | bytes,
        *,
        name: str | None = None,
        addresses: Iterable[str] | None = None,
        may_send_work: bool | None = None,
        may_build_for_me: bool | None = None,
        public_key: bytes | None = None,
    ) -> TrustedPeer:
        """Change the given fields of a trusted peer; KeyError if it is not trusted."""
        fp = _normalise(fingerprint)
        if public_key is not None and key_fingerprint(public_key).hex() != fp:
            raise ValueError("public key does not match the fingerprint")
        sets: list[str] = ["updated_at = ?"]
        values: list[object] = [self._clock()]
        if name is not None:
            sets.append("name = ?")
            values.append(name)
        if addresses is not None:
            sets.append("addresses = ?")
            values.append(json.dumps(list(_merge_addresses((), addresses))))
        if may_send_work is not None:
            sets.append("may_send_work = ?")
            values.append(int(may_send_work))
        if may_build_for_me is not None:
            sets.append("may_build_for_me = ?")
            values.append(int(may_build_for_me))
        if public_key is not None:
            sets.append("public_key = ?")
            values.append(public_key)
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE trust_peers SET {', '.join(sets)} WHERE fingerprint = ?",  # noqa: S608 - column names are fixed above
                (*values, fp),
            )
        if cursor.rowcount == 0:
            raise KeyError(fp)
        result = self.get(fp)
        assert result is not None
        return result

    def note_address(self, fingerprint: str | bytes, address: str) -> None:
        """Remember where a trusted peer was last reached (most recent first)."""
        peer = self.get(fingerprint)
        if peer is not None and (not peer.addresses or peer.addresses[0] != address):
            self.update(peer.fingerprint, addresses=_merge_addresses(peer.addresses, [address]))

    def remove(self, fingerprint: str | bytes) -> bool:
        """Stop trusting a peer; False if it was not trusted. Open sessions are the
        caller's to close."""
        fp = _normalise(fingerprint)
        with self._lock:
            cursor = self._db.execute("DELETE FROM trust_peers WHERE fingerprint = ?", (fp,))
        return cursor.rowcount > 0

    # -- link integration -------------------------------------------------------------

    def authorizer(self, role: Permission | None = None) -> Callable[[PeerCandidate], bool]:
        """A link ``Authorizer``: accept peers in the store (holding ``role`` if given).

        A session is shared by both directions, so the daemon normally accepts any
        trusted peer here and checks the role per request (compile_request needs
        SEND_WORK; sending a configuration needs BUILD_FOR_ME).
        """

        def check(candidate: PeerCandidate) -> bool:
            return self.is_trusted(candidate.public_key, role)

        return check
