"""The fleet's view of one device, and the events the monitor announces.

Kept apart from the monitor so the store, the fleet state and the verifier can use
them without importing zeroconf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshd.fleet.advert import DeviceAdvert


@dataclass(frozen=True)
class DeviceState:
    """What the fleet knows about one device name (the last advert, even when offline)."""

    advert: DeviceAdvert
    online: bool
    first_seen: float
    """Epoch seconds of the first advert ever seen for this name."""
    last_seen: float
    """Epoch seconds of the last advert or answer from the device."""
    offline_since: float | None = None
    offline_reason: str | None = None
    """Why it counts as offline: ``goodbye``, records expired without an answer, or
    ``not seen since the daemon started`` for a device restored from the store."""

    @property
    def name(self) -> str:
        return self.advert.name

    def to_dict(self) -> dict[str, object]:
        """The JSON shape for the API (``meshd devices --json``)."""
        advert = self.advert
        return {
            "name": advert.name,
            "online": self.online,
            "addresses": list(advert.addresses),
            "port": advert.port,
            "host": advert.host,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "offline_since": self.offline_since,
            "offline_reason": self.offline_reason,
            "version": advert.version,
            "config_hash": advert.config_hash,
            "mac": advert.mac,
            "platform": advert.platform,
            "board": advert.board,
            "network": advert.network,
            "friendly_name": advert.friendly_name,
            "project_name": advert.project_name,
            "project_version": advert.project_version,
            "api_encryption": advert.api_encryption,
            "txt": dict(advert.txt),
        }


class DeviceEventKind(enum.StrEnum):
    ONLINE = "online"
    """The device announced itself after being offline or unknown."""
    UPDATED = "updated"
    """An online device's advert changed (new build, new address)."""
    OFFLINE = "offline"
    """Goodbye, or its records expired and it did not answer a query."""


@dataclass(frozen=True)
class DeviceEvent:
    kind: DeviceEventKind
    device: DeviceState
    previous: DeviceState | None

    @property
    def announced(self) -> bool:
        """The device is reachable now (what an armed upload waits for)."""
        return self.kind is not DeviceEventKind.OFFLINE
