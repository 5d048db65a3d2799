"""One content store per offloader on a receiver, beside the node's own store.

A trusted offloader must not be able to test for, read or overwrite another
offloader's content (docs/SECURITY.md): a ``have_query`` for a digest someone else
sent answers "missing", a ``blob_request`` serves only what this offloader sent or
what its own builds produced. So everything a receiver stores for a peer lives in
``<root>/<fingerprint[:16]>``; the node's own bundles and the artifacts it pulls as an
offloader live in ``<root>/own``. Each peer store also carries that peer's quota on
what it may make this node keep (bytes and blob count at rest).
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from meshd.mesh.content.store import ContentStore

_LOGGER = logging.getLogger(__name__)

OWN = "own"
_PEER = re.compile(r"^[0-9a-f]{16}$")

# What one offloader may make a receiver keep and have in flight (docs/SECURITY.md).
DEFAULT_MAX_IN_FLIGHT = 256 * 1024 * 1024
DEFAULT_MAX_AT_REST = 2 * 1024 * 1024 * 1024
DEFAULT_MAX_BLOBS = 20_000


@dataclass(frozen=True)
class PeerQuota:
    in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT
    at_rest_bytes: int = DEFAULT_MAX_AT_REST
    at_rest_blobs: int = DEFAULT_MAX_BLOBS


def peer_key(fingerprint_hex: str) -> str:
    """The directory name of a peer's store and build tree."""
    return fingerprint_hex[:16]


class StoreSet:
    def __init__(self, root: Path, *, quota: PeerQuota | None = None) -> None:
        self.root = root
        self.quota = quota or PeerQuota()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        # The layout before per-peer stores kept blobs in two-hex shards right here:
        # they belong to nobody now (they are a cache, fetched again when needed).
        for entry in list(root.iterdir()):
            if entry.name != OWN and not _PEER.match(entry.name):
                _LOGGER.info("content store: removed %s of the old shared layout", entry)
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        self.own = ContentStore(root / OWN)
        self._peers: dict[str, ContentStore] = {}

    def for_peer(self, fingerprint_hex: str) -> ContentStore:
        """The store holding what this peer sent us and what we built for it."""
        key = peer_key(fingerprint_hex)
        store = self._peers.get(key)
        if store is None:
            store = ContentStore(self.root / key)
            self._peers[key] = store
        return store

    def all(self) -> list[ContentStore]:
        """Every store on disk (for pruning): the own one and each peer's."""
        for entry in sorted(self.root.iterdir()):
            if _PEER.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                self._peers.setdefault(entry.name, ContentStore(entry))
        return [self.own, *self._peers.values()]
