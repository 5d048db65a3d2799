"""The ``_esphomelib._tcp`` TXT parser: the firmware's exact layout, and hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.fleet.advert import (
    MAX_ADDRESSES,
    MAX_TXT_BYTES,
    MAX_TXT_KEYS,
    NOISE_PROTOCOL,
    SERVICE_TYPE,
    AdvertError,
    DeviceAdvert,
    advert_from_dict,
    instance_name,
    mac_suffix_of,
    parse_advert,
)
from tests.support.esphome_advert import firmware_txt


def props(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt.items()}


def parse(txt: dict[str, str], **kw: object) -> tuple[DeviceAdvert, list[str]]:
    args: dict[str, object] = {"addresses": ["192.168.1.20"], "port": 6053}
    args.update(kw)
    return parse_advert(instance_name("living-room"), props(txt), **args)  # type: ignore[arg-type]


def test_every_key_real_firmware_sends_is_read() -> None:
    txt = firmware_txt(
        version="2026.6.5",
        config_hash="0badf00d",
        mac="246f28aabbcc",
        board="esp32dev",
        friendly_name="Living Room",
        platform="ESP32",
        network="wifi",
        api_encryption=False,
        project=("acme.thing", "2.0"),
        package_import_url="github://acme/thing/thing.yaml@main",
    )
    assert list(txt) == [  # compile_records_ order
        "friendly_name", "version", "config_hash", "mac", "platform", "board", "network",
        "api_encryption_supported", "project_name", "project_version", "package_import_url",
    ]  # fmt: skip
    advert, problems = parse(txt, host="living-room.local.")
    assert problems == []
    assert advert.name == "living-room" and advert.host == "living-room.local"
    assert advert.version == "2026.6.5" and advert.config_hash == "0badf00d"
    assert advert.mac == "246f28aabbcc" and advert.platform == "ESP32"
    assert advert.board == "esp32dev" and advert.network == "wifi"
    assert advert.api_encryption is False
    assert advert.txt["api_encryption_supported"] == NOISE_PROTOCOL
    assert advert.project_name == "acme.thing" and advert.project_version == "2.0"


def test_host_platform_and_old_firmware_lack_optional_keys() -> None:
    host = firmware_txt(
        version="2026.6.5", config_hash="12345678", mac="983569abf679", board="host"
    )
    advert, problems = parse(host)
    assert problems == [] and advert.platform is None and advert.network is None
    assert advert.api_encryption is None and advert.friendly_name is None
    old = {"version": "2024.11.0", "mac": "246f28aabbcc", "platform": "ESP8266", "board": "d1"}
    advert, problems = parse(old)
    assert problems == [] and advert.config_hash is None and advert.version == "2024.11.0"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("config_hash", "0x1234abcd", "config_hash is not 8 lowercase hex digits"),
        ("config_hash", "1234ABCD", "config_hash is not 8 lowercase hex digits"),
        ("mac", "24:6f:28:aa:bb:cc", "mac is not 12 lowercase hex digits"),
        ("version", "2026.6.5; rm -rf", "version is not a version string"),
        ("network", "zigbee", "network 'zigbee' is not wifi/ethernet/thread"),
        ("friendly_name", "x" * 121, "friendly_name longer than 120 characters"),
        ("board", "esp\n32", "board contains control characters"),
        ("vendor_key", "bell\x07", "vendor_key contains control characters"),
    ],
)
def test_a_bad_field_is_dropped_with_its_reason(key: str, value: str, reason: str) -> None:
    advert, problems = parse(
        {"version": "2026.6.5", key: value} if key != "version" else {key: value}
    )
    assert problems == [reason]
    assert key not in advert.txt


def test_unknown_printable_keys_are_kept_for_newer_firmware() -> None:
    advert, problems = parse({"version": "2026.9.0", "zwave_home": "42"})
    assert problems == [] and advert.txt["zwave_home"] == "42"


@pytest.mark.parametrize(
    ("instance", "kw", "message"),
    [
        (instance_name("living-room"), {"port": None}, "no usable port"),
        (instance_name("living-room"), {"port": 70000}, "no usable port"),
        (instance_name("living-room"), {"addresses": []}, "no address"),
        (instance_name("living-room"), {"addresses": ["224.0.0.251"]}, "no address"),
        (instance_name("living-room"), {"addresses": ["not-an-ip"]}, "is not an IP address"),
        (instance_name("Living Room!"), {}, "is not an ESPHome device name"),
        (instance_name("x" * 64), {}, "is not an ESPHome device name"),
        (instance_name("living-room"), {"txt_size": MAX_TXT_BYTES + 1}, "TXT record of"),
    ],
)
def test_unusable_adverts_are_refused(instance: str, kw: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"addresses": ["10.0.0.2"], "port": 6053}
    args.update(kw)
    with pytest.raises(AdvertError, match=message):
        parse_advert(instance, {b"version": b"2026.6.5"}, **args)  # type: ignore[arg-type]


def test_too_many_keys_are_refused() -> None:
    many = {f"k{i}".encode(): b"v" for i in range(MAX_TXT_KEYS + 1)}
    with pytest.raises(AdvertError, match="TXT keys"):
        parse_advert(instance_name("a"), many, addresses=["10.0.0.2"], port=6053)


def test_addresses_are_ipv4_first_deduplicated_and_capped() -> None:
    many = ["fe80::1%eth0", "10.0.0.2", "10.0.0.2", "2001:db8::5", "10.0.0.3"]
    many += [f"2001:db8::{i:x}" for i in range(10, 30)]
    advert, _ = parse({}, addresses=many)
    assert advert.addresses[:2] == ("10.0.0.2", "10.0.0.3")
    assert advert.addresses[2] == "fe80::1%eth0"
    assert len(advert.addresses) == MAX_ADDRESSES


def test_the_name_is_lower_case_and_the_service_type_is_esphomes() -> None:
    assert SERVICE_TYPE == "_esphomelib._tcp.local."
    advert, _ = parse_advert(f"Garage-Door.{SERVICE_TYPE}", {}, addresses=["10.0.0.9"], port=1)
    assert advert.name == "garage-door"


def test_mac_suffix_matching_is_esphomes_six_hex_digits() -> None:
    assert mac_suffix_of("bulb", "bulb-a1b2c3") == "a1b2c3"
    assert mac_suffix_of("Bulb", "bulb-a1b2c3") == "a1b2c3"
    for device in (
        "bulb",
        "bulb-a1b2c",
        "bulb-a1b2c3d",
        "bulb-A1B2C3",
        "bulbx-a1b2c3",
        "bulb-g1b2c3",
    ):
        assert mac_suffix_of("bulb", device) is None


def test_stored_adverts_round_trip_and_are_validated_again() -> None:
    txt = firmware_txt(version="2026.6.5", config_hash="0badf00d", mac="246f28aabbcc", board="b")
    advert, _ = parse(txt, host="living-room.local")
    assert advert_from_dict(advert.to_dict()) == advert
    tampered = advert.to_dict()
    tampered["txt"] = {"config_hash": "nope"}
    with pytest.raises(AdvertError, match="config_hash"):
        advert_from_dict(tampered)
    good = advert.to_dict()
    broken_rows = [
        {"name": 5},
        {**good, "port": "6053"},
        {**good, "port": True},
        {**good, "addresses": "10.0.0.1"},
        {**good, "txt": []},
        {**good, "host": 7},
    ]
    for broken in broken_rows:
        with pytest.raises(AdvertError):
            advert_from_dict(broken)


_bytes = st.binary(max_size=80)


@settings(max_examples=400, deadline=None)
@given(
    instance=st.text(max_size=80),
    txt=st.dictionaries(_bytes, st.one_of(st.none(), _bytes), max_size=30),
    addresses=st.lists(st.text(max_size=40), max_size=12),
    port=st.one_of(st.none(), st.integers(-5, 70000)),
    host=st.one_of(st.none(), st.text(max_size=300)),
)
def test_arbitrary_input_gives_an_advert_or_advert_error(
    instance: str,
    txt: dict[bytes, bytes | None],
    addresses: list[str],
    port: int | None,
    host: str | None,
) -> None:
    try:
        advert, problems = parse_advert(instance, txt, addresses=addresses, port=port, host=host)
    except AdvertError:
        return
    assert advert.name and 1 <= advert.port <= 65535 and advert.addresses
    assert all(isinstance(p, str) for p in problems)
    assert advert_from_dict(advert.to_dict()) == advert
