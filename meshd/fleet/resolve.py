"""The address an OTA upload goes to when no device is named, as ``esphome run`` picks it.

esphome 2026.6.5 (``esphome/__main__.py``, ``choose_upload_log_host`` with
``--device OTA`` and purpose UPLOADING; ``CORE.address`` in ``esphome/core/__init__.py``):

1. ``CORE.address`` is the first of ``wifi``/``ethernet``/``openthread``'s
   ``use_address``, which esphome defaults to ``manual_ip.static_ip`` or
   ``<name><domain>`` (``<name>.local``; openthread always ``<name>.local``).
2. An IP address there is used as is.
3. With ``name_add_mac_suffix`` (and mDNS on), esphome browses for
   ``<name>-<6 hex>`` devices and uploads to those; finding none is an error, never a
   fall-back to the base name (which by definition is not on the network).
4. Otherwise the host name is used, and esphome resolves a ``.local`` name by mDNS.
   The monitor *is* that mDNS resolution, already done: a device it knows under that
   host name gives its current IP (as the dashboard passes ``--mdns-address-cache``).

meshd additions, as issue 11 asks: a configuration without any network block (the
``host`` platform; esphome would fail there) uses the monitor's address for the device
name, else ``<name>.local``. ``--device OTA`` means exactly "resolve"; any other
``--device`` value is used verbatim. Every answer carries a sentence saying how it was
found, for the job log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from meshd.fleet.configs import DeviceConfig, is_ip_address
from meshd.fleet.model import DeviceState

OTA_DEVICE = "OTA"
"""``--device OTA``: resolve the address as esphome would (its magic value)."""


class ResolveError(Exception):
    """No address can be chosen; the message says why and what to do."""


class DeviceDirectory(Protocol):
    """What resolution needs from the monitor (``DeviceMonitor`` implements it)."""

    def get(self, name: str) -> DeviceState | None: ...

    def by_host(self, host: str) -> DeviceState | None: ...

    def mac_suffix_matches(self, base: str) -> list[DeviceState]: ...


@dataclass(frozen=True)
class Resolution:
    address: str
    """Where to upload: an IP address or a host name."""
    how: str
    """One sentence for the job log: where the address came from."""
    device: str | None = None
    """The device name when the monitor supplied the address."""
    candidates: tuple[str, ...] = ()
    """Every address found (several when many devices share a mac-suffixed config)."""


def _monitor_address(device: DeviceState) -> str:
    return device.advert.addresses[0]


def _seen(device: DeviceState) -> str:
    return "online" if device.online else "last seen (offline now)"


def _from_monitor(device: DeviceState, why: str) -> Resolution:
    address = _monitor_address(device)
    return Resolution(
        address=address,
        how=f"{why}: device {device.name} {_seen(device)} on mDNS at {address}",
        device=device.name,
        candidates=(address,),
    )


def resolve_device(
    config: DeviceConfig,
    directory: DeviceDirectory | None,
    device: str | None = None,
) -> Resolution:
    """The upload address for ``config``; ``device`` is the operator's ``--device``.

    Raises ``ResolveError`` when the configuration cannot be uploaded over the air or
    a mac-suffixed configuration has no device on the network.
    """
    if device is not None and device != OTA_DEVICE:
        return Resolution(address=device, how=f"given with --device {device}", candidates=(device,))
    if config.error is not None and config.name is None:
        raise ResolveError(f"cannot resolve a device for {config.path.name}: {config.error}")
    if not config.has_ota:
        raise ResolveError(
            f"{config.path.name} has no ota: with platform esphome or web_server; "
            "it cannot be uploaded over the air"
        )
    name = config.name
    assert name is not None  # error is set whenever name is None
    address = config.address
    net = config.network

    if address is not None and is_ip_address(address):
        source = "use_address" if net and net.use_address else "manual_ip static_ip"
        kind = net.kind if net else "network"
        return Resolution(
            address=address,
            how=f"{kind} {source} {address} from the configuration",
            candidates=(address,),
        )

    if (
        config.name_add_mac_suffix
        and not config.mdns_disabled
        and (address is None or not is_ip_address(address))
    ):
        matches = directory.mac_suffix_matches(name) if directory is not None else []
        if not matches:
            raise ResolveError(
                f"no device matching '{name}-<mac>' has announced itself on mDNS "
                f"(name_add_mac_suffix is on, so '{name}' itself does not exist); "
                "pass --device ADDRESS"
            )
        online = [d for d in matches if d.online] or matches
        first = _from_monitor(online[0], f"name_add_mac_suffix: {len(matches)} device(s) match")
        candidates: Sequence[str] = [_monitor_address(d) for d in online]
        return Resolution(first.address, first.how, first.device, tuple(candidates))

    if address is not None:
        assert net is not None
        if address.endswith(".local") and config.mdns_disabled:
            # has_resolvable_address(): a .local name needs mDNS, which the device lacks.
            raise ResolveError(
                f"{config.path.name} has mdns: disabled and no IP address; set use_address "
                "in its network config or pass --device ADDRESS"
            )
        if directory is not None and not config.mdns_disabled:
            known = directory.by_host(address)
            if known is not None:
                return _from_monitor(known, f"{net.kind} address {address}")
        if net.use_address:
            how = f"{net.kind} use_address {address} from the configuration"
        else:
            how = f"{address}, the default {net.kind} address esphome derives from the name"
        if address.endswith(".local"):
            how += " (not seen on mDNS yet; resolved by mDNS at upload time)"
        return Resolution(address=address, how=how, candidates=(address,))

    # No network block (the host platform): meshd's own rule.
    known = directory.get(name) if directory is not None else None
    if known is not None:
        return _from_monitor(known, f"no wifi/ethernet/openthread in {config.path.name}")
    fallback = f"{name}.local"
    return Resolution(
        address=fallback,
        how=f"no network block in {config.path.name} and {name} not seen on mDNS: {fallback}",
        candidates=(fallback,),
    )
