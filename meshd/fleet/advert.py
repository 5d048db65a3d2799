"""What an ESPHome device says about itself on mDNS, parsed defensively.

ESPHome firmware with ``api:`` registers ``<name>._esphomelib._tcp.local.`` (instance
and host name are both ``App.get_name()``, with the MAC suffix when
``name_add_mac_suffix`` is on) on the native API port. The TXT layout, from
esphome 2026.6.5 ``components/mdns/mdns_component.cpp`` (``compile_records_``), in
the order the firmware sends it:

=========================== ===============================================================
``friendly_name``           only when not empty
``version``                 ``ESPHOME_VERSION`` the firmware was built with
``config_hash``             ``App.get_config_hash()`` as 8 lowercase hex digits
                            (``format_hex_to``), the FNV-1a of the validated config
``mac``                     12 lowercase hex digits, no separators
``platform``                ``ESP8266``, ``ESP32``, ``RP2040`` or the LibreTiny model;
                            absent on ``host`` and nRF52
``board``                   ``ESPHOME_BOARD`` (``host`` on the host platform)
``network``                 ``wifi``, ``ethernet`` or ``thread``; absent without any
``api_encryption``          ``Noise_NNpsk0_25519_ChaChaPoly_SHA256`` when a key is set,
``api_encryption_supported`` the same value under this key when noise is compiled in
                            without a key
``project_name``            with ``esphome: project:``, both or neither
``project_version``
``package_import_url``      with ``dashboard_import:``
=========================== ===============================================================

Firmware before the 2026.1 series sends no ``config_hash`` (esphome's 2024.11 tree has
none), so it is optional here. The parser never raises for a bad field: a field that is
malformed is dropped with a reason (a newer firmware may change a format) and the
device still counts; only an advert with no usable name, port or address, or one past
the size caps, is refused (``AdvertError``). mDNS is unauthenticated LAN input.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

SERVICE_TYPE: Final = "_esphomelib._tcp.local."

NOISE_PROTOCOL: Final = "Noise_NNpsk0_25519_ChaChaPoly_SHA256"
"""The value ESPHome publishes under ``api_encryption``/``api_encryption_supported``."""

MAX_TXT_BYTES: Final = 1300
"""RFC 6763 §6.2: a TXT record should fit one packet (~1300 bytes). Real firmware sends
~150-400 bytes (a long ``package_import_url`` is the largest part)."""

MAX_TXT_KEYS: Final = 24
"""Real firmware sends at most 12 keys; twice that leaves room for future fields."""

MAX_VALUE_LEN: Final = 255
"""One TXT string is at most 255 bytes (RFC 6763 §6.1), key and ``=`` included."""

MAX_NAME_LEN: Final = 63
"""ESPHome names are DNS labels (``cv.hostname``: at most 63 characters)."""

MAX_VERSION_LEN: Final = 32
"""``2026.6.5``, ``2026.7.0b1``, ``2024.11.0-dev``: far shorter."""

MAX_ADDRESSES: Final = 8
"""A device has one IPv4 and a few IPv6 addresses; more is noise (or hostile)."""

_NAME_RE: Final = re.compile(r"[a-z0-9_-]{1,63}")
_HASH_RE: Final = re.compile(r"[0-9a-f]{8}")
_MAC_RE: Final = re.compile(r"[0-9a-f]{12}")
_VERSION_RE: Final = re.compile(r"[0-9A-Za-z.+_-]{1,32}")
_NETWORKS: Final = frozenset({"wifi", "ethernet", "thread"})

# Keys whose value is free text (shown to people) and their length cap.
_TEXT_KEYS: Final = {
    "friendly_name": 120,
    "platform": 32,
    "board": 64,
    "project_name": 128,
    "project_version": 64,
    "package_import_url": MAX_VALUE_LEN,
}


class AdvertError(ValueError):
    """An advert that cannot stand for a device (no name/port/address, or oversized)."""


@dataclass(frozen=True)
class DeviceAdvert:
    """One device's ``_esphomelib._tcp`` service, validated."""

    name: str
    """The instance label, lower case: the device's ``App.get_name()``."""
    port: int
    """The native API port (the service's SRV port)."""
    addresses: tuple[str, ...]
    """IP addresses, IPv4 first (OTA and the API prefer them), at most ``MAX_ADDRESSES``."""
    host: str | None = None
    """The SRV target without the trailing dot (``living-room.local``)."""
    txt: Mapping[str, str] = field(default_factory=dict)
    """Every accepted TXT field (valid ones only), as the device sent it."""

    def _get(self, key: str) -> str | None:
        return self.txt.get(key)

    @property
    def version(self) -> str | None:
        return self._get("version")

    @property
    def config_hash(self) -> str | None:
        return self._get("config_hash")

    @property
    def mac(self) -> str | None:
        return self._get("mac")

    @property
    def platform(self) -> str | None:
        return self._get("platform")

    @property
    def board(self) -> str | None:
        return self._get("board")

    @property
    def network(self) -> str | None:
        return self._get("network")

    @property
    def friendly_name(self) -> str | None:
        return self._get("friendly_name")

    @property
    def project_name(self) -> str | None:
        return self._get("project_name")

    @property
    def project_version(self) -> str | None:
        return self._get("project_version")

    @property
    def api_encryption(self) -> bool | None:
        """True: the device requires a key; False: noise supported but no key; None: no noise."""
        if "api_encryption" in self.txt:
            return True
        if "api_encryption_supported" in self.txt:
            return False
        return None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "port": self.port,
            "addresses": list(self.addresses),
            "host": self.host,
            "txt": dict(self.txt),
        }


def _printable(text: str) -> bool:
    return not any(unicodedata.category(ch).startswith("C") for ch in text)


def _check_value(key: str, value: str) -> str | None:
    """The reason ``value`` is not acceptable for ``key``, or None when it is."""
    if key == "config_hash":
        return None if _HASH_RE.fullmatch(value) else "config_hash is not 8 lowercase hex digits"
    if key == "mac":
        return None if _MAC_RE.fullmatch(value) else "mac is not 12 lowercase hex digits"
    if key == "version":
        return None if _VERSION_RE.fullmatch(value) else "version is not a version string"
    if key == "network":
        return None if value in _NETWORKS else f"network {value!r} is not wifi/ethernet/thread"
    if key in ("api_encryption", "api_encryption_supported"):
        return None if _printable(value) and len(value) <= 64 else f"{key} is not a protocol name"
    limit = _TEXT_KEYS.get(key)
    if limit is None:
        return None  # unknown keys are kept only if printable (below)
    if len(value) > limit:
        return f"{key} longer than {limit} characters"
    if not _printable(value):
        return f"{key} contains control characters"
    return None


def normalise_name(label: str) -> str | None:
    """``Living-Room`` → ``living-room``; None for anything that is not an ESPHome name."""
    name = label.lower()
    return name if _NAME_RE.fullmatch(name) else None


MAC_SUFFIX_LEN: Final = 6
"""``name_add_mac_suffix`` appends ``-`` and the last 6 hex digits of the MAC
(``Application::pre_setup``); esphome's own discovery matches exactly that
(``esphome/zeroconf.py``: ``_is_mac_suffix_match``)."""

_SUFFIX_RE: Final = re.compile(r"[0-9a-f]{6}")


def mac_suffix_of(base: str, device: str) -> str | None:
    """The 6-hex MAC suffix when ``device`` is ``<base>-<suffix>``, else None."""
    prefix = f"{base.lower()}-"
    if not device.startswith(prefix):
        return None
    suffix = device[len(prefix) :]
    return suffix if _SUFFIX_RE.fullmatch(suffix) else None


def instance_name(name: str) -> str:
    """The full service instance name of device ``name``."""
    return f"{name}.{SERVICE_TYPE}"


def _ordered_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    v4: list[str] = []
    v6: list[str] = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError as err:
            raise AdvertError(f"address {address!r} is not an IP address") from err
        if ip.is_unspecified or ip.is_multicast:
            continue
        target = v4 if ip.version == 4 else v6
        if address not in target:
            target.append(address)
    return tuple([*v4, *v6][:MAX_ADDRESSES])


def parse_advert(
    instance: str,
    props: Mapping[bytes, bytes | None],
    *,
    addresses: Sequence[str],
    port: int | None,
    host: str | None = None,
    txt_size: int = 0,
) -> tuple[DeviceAdvert, list[str]]:
    """Validate one resolved ``_esphomelib._tcp`` instance.

    Returns the advert and the reasons for every field that was dropped. Raises
    ``AdvertError`` when the whole advert is unusable.
    """
    if txt_size > MAX_TXT_BYTES:
        raise AdvertError(f"TXT record of {txt_size} bytes (limit {MAX_TXT_BYTES})")
    if len(props) > MAX_TXT_KEYS:
        raise AdvertError(f"{len(props)} TXT keys (limit {MAX_TXT_KEYS})")
    label = instance.split(".", 1)[0]
    name = normalise_name(label)
    if name is None:
        raise AdvertError(f"instance {label[:80]!r} is not an ESPHome device name")
    if port is None or not 1 <= port <= 65535:
        raise AdvertError("no usable port")
    ordered = _ordered_addresses(addresses)
    if not ordered:
        raise AdvertError("no address")
    problems: list[str] = []
    txt: dict[str, str] = {}
    for raw_key, raw_value in props.items():
        try:
            key = raw_key.decode("ascii").lower()
            value = (raw_value or b"").decode("utf-8")
        except UnicodeDecodeError:
            problems.append("a TXT key or value is not text")
            continue
        if not key or not _printable(key) or len(key) > 64:
            problems.append("a TXT key is not printable")
            continue
        if raw_value is None:
            continue  # a key without "=": ESPHome never sends one
        reason = _check_value(key, value)
        if reason is None and key not in _TEXT_KEYS and not _printable(value):
            reason = f"{key} contains control characters"
        if reason is not None:
            problems.append(reason)
            continue
        txt[key] = value
    clean_host = None
    if host:
        candidate = host.rstrip(".").lower()
        if len(candidate) <= 253 and _printable(candidate):
            clean_host = candidate
    return (
        DeviceAdvert(name=name, port=port, addresses=ordered, host=clean_host, txt=txt),
        problems,
    )


def advert_from_dict(data: Mapping[str, object]) -> DeviceAdvert:
    """Rebuild an advert from ``DeviceAdvert.to_dict`` (a stored row), validating it again."""
    name = data.get("name")
    port = data.get("port")
    addresses = data.get("addresses")
    host = data.get("host")
    txt = data.get("txt")
    if not isinstance(name, str):
        raise AdvertError("name is not a string")
    if not isinstance(port, int) or isinstance(port, bool):
        raise AdvertError("port is not an integer")
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise AdvertError("addresses is not a list of strings")
    if host is not None and not isinstance(host, str):
        raise AdvertError("host is not a string")
    if not isinstance(txt, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in txt.items()
    ):
        raise AdvertError("txt is not a map of strings")
    props = {k.encode(): v.encode() for k, v in txt.items()}
    advert, problems = parse_advert(
        instance_name(name), props, addresses=addresses, port=port, host=host
    )
    if problems:
        raise AdvertError("; ".join(problems))
    return advert
