"""Configurations as a fleet: listing like esphome's dashboard, the cheap tolerant read."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.fleet.configs import (
    MAX_CONFIG_BYTES,
    MAX_INCLUDE_DEPTH,
    list_yaml_files,
    read_config,
    scan_config_dirs,
)
from meshd.toolchain.commands import validate_config
from meshd.toolchain.tools import Toolchain


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_listing_skips_secrets_hidden_and_other_files(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "secrets.yaml", "secrets.yml", ".hidden.yaml", "notes.txt"):
        write(tmp_path / name, "esphome:\n  name: x\n")
    (tmp_path / "dir.yaml").mkdir()
    write(tmp_path / "sub" / "deep.yaml", "esphome:\n  name: deep\n")
    assert [p.name for p in list_yaml_files(tmp_path)] == ["a.yml", "b.yaml"]


def test_a_typical_config_with_esphome_tags(tmp_path: Path) -> None:
    write(
        tmp_path / "secrets.yaml",
        "wifi_pw: hunter2\napi_key: c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA==\n",
    )
    write(tmp_path / "common" / "base.yaml", """\
        logger:
          level: ${log_level}
        ota:
          - platform: esphome
            password: !secret wifi_pw
        """)  # fmt: skip
    config = write(tmp_path / "kitchen.yaml", """\
        substitutions:
          devicename: kitchen
          upper: Kitchen
          log_level: DEBUG
          full: ${devicename}-sensor
        esphome:
          name: ${full}
          friendly_name: $upper Sensor
          on_boot:
            then:
              - lambda: !lambda 'ESP_LOGD("x", "y");'
        esp32:
          board: esp32dev
        wifi:
          ssid: home
          password: !secret wifi_pw
        api:
          encryption:
            key: !secret api_key
        sensor:
          - platform: template
            lambda: !lambda return 1.0;
            name: !env_var SENSOR_NAME
        <<: !include common/base.yaml
        """)  # fmt: skip
    cfg = read_config(config)
    assert cfg.error is None, cfg.error
    assert cfg.name == "kitchen-sensor" and cfg.friendly_name == "Kitchen Sensor"
    assert cfg.has_api and cfg.api_encryption_key == "c2VjcmV0a2V5c2VjcmV0a2V5c2VjcmV0a2V5MTIzNA=="
    assert cfg.has_ota  # from the merged include
    assert cfg.network is not None and cfg.network.kind == "wifi"
    assert cfg.address == "kitchen-sensor.local"
    assert set(cfg.included) == {tmp_path / "common" / "base.yaml", tmp_path / "secrets.yaml"}


def test_packages_and_include_vars(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "device.yaml", """\
        esphome:
          name: ${prefix}-${room}
          name_add_mac_suffix: "yes"
        ethernet:
          type: LAN8720
          manual_ip:
            static_ip: 10.1.2.3
        ota:
          - platform: web_server
        """)  # fmt: skip
    config = write(tmp_path / "hall.yaml", """\
        substitutions:
          prefix: home
        packages:
          device: !include
            file: pkg/device.yaml
            vars:
              room: hall
          remote: github://acme/pkgs/base.yaml@main
        """)  # fmt: skip
    cfg = read_config(config)
    assert cfg.name == "home-hall" and cfg.name_add_mac_suffix
    assert cfg.has_ota and not cfg.has_api
    assert cfg.network is not None and cfg.network.kind == "ethernet"
    assert cfg.address == "10.1.2.3"
    assert "a remote or unreadable package was not followed" in cfg.problems


@pytest.mark.parametrize(
    ("block", "address"),
    [
        ("wifi:\n  use_address: 192.168.5.5\n", "192.168.5.5"),
        ("wifi:\n  use_address: kitchen.lan\n", "kitchen.lan"),
        ("wifi:\n  domain: .home.arpa\n", "dev.home.arpa"),
        ("wifi:\n  manual_ip:\n    static_ip: 10.0.0.9\n", "10.0.0.9"),
        ("wifi:\n  networks:\n    - ssid: a\n      manual_ip:\n        static_ip: 10.0.0.8\n"
         "    - ssid: b\n", "10.0.0.8"),
        ("wifi:\n", "dev.local"),
        ("ethernet:\n  type: W5500\n", "dev.local"),
        ("openthread:\n  tlv: abc\n", "dev.local"),
        ("openthread:\n  use_address: fd00::5\n", "fd00::5"),
        ("host:\n", None),
    ],
)  # fmt: skip
def test_the_address_is_derived_as_esphome_derives_it(
    tmp_path: Path, block: str, address: str | None
) -> None:
    cfg = read_config(write(tmp_path / "dev.yaml", "esphome:\n  name: dev\n" + block))
    assert cfg.address == address


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("esphome:\n  name: ${nope}\n", "cannot evaluate"),
        ("substitutions:\n  a: 2\nesphome:\n  name: dev-${ a * 2 }\n", "cannot evaluate"),
        ("esphome:\n  friendly_name: x\n", "esphome: name is missing"),
        ("esphome:\n  name: Bad Name\n", "is not a valid ESPHome name"),
        ("logger:\n", "no esphome: block"),
        ("- a\n- b\n", "is not a YAML map"),
        ("esphome: [\n", "is not valid YAML"),
        ("esphome:\n  name: !include self.yaml\n", "includes itself"),
    ],
)
def test_unreadable_names_are_errors_not_guesses(tmp_path: Path, text: str, error: str) -> None:
    cfg = read_config(write(tmp_path / "self.yaml", text))
    assert cfg.name is None
    assert cfg.error is not None and error in (cfg.error + " ".join(cfg.problems))


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    assert "does not exist" in (read_config(tmp_path / "gone.yaml").error or "")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"esphome:\n  name: big\n#" + b"x" * MAX_CONFIG_BYTES)
    assert "bytes (limit" in (read_config(big).error or "")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"esphome:\n  name: \xff\xfe\n")
    assert "not UTF-8" in (read_config(binary).error or "")


def test_special_files_are_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    cfg = read_config(
        write(tmp_path / "dev.yaml", "esphome:\n  name: dev\nx: !include pipe.yaml\n")
    )
    assert cfg.name == "dev"
    assert any("is not a regular file" in p for p in cfg.problems)
    assert "is not a regular file" in (read_config(fifo).error or "")
    assert "is not a regular file" in (read_config(Path("/dev/zero")).error or "")


def test_an_anchored_map_with_an_include_merge_keeps_it_through_aliases(tmp_path: Path) -> None:
    write(tmp_path / "inc.yaml", "ota:\n  - platform: esphome\n")
    cfg = read_config(
        write(
            tmp_path / "dev.yaml",
            """\
        base: &base
          <<: !include inc.yaml
          extra: 1
        copy: *base
        esphome:
          name: dev
        <<: *base
        """,
        )
    )
    assert cfg.has_ota
    write(tmp_path / "api.yaml", "api:\n  port: 6111\n")
    listed_yaml = """\
        base: &base
          logger:
        esphome:
          name: listed
        <<: [*base, !include api.yaml, !include inc.yaml]
        """
    listed = read_config(write(tmp_path / "list.yaml", listed_yaml))
    assert listed.has_api and listed.api_port == 6111 and listed.has_ota


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400))
def test_arbitrary_text_never_raises(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_text(text, encoding="utf-8")
        cfg = read_config(path)
    assert cfg.name is None or cfg.error is None


def test_include_chains_are_bounded(tmp_path: Path) -> None:
    for i in range(MAX_INCLUDE_DEPTH + 3):
        write(tmp_path / f"inc{i}.yaml", f"next: !include inc{i + 1}.yaml\n")
    write(tmp_path / f"inc{MAX_INCLUDE_DEPTH + 3}.yaml", "end: true\n")
    cfg = read_config(
        write(tmp_path / "top.yaml", "esphome:\n  name: top\nx: !include inc0.yaml\n")
    )
    assert cfg.name == "top"
    assert any("nested deeper than" in p for p in cfg.problems)


def test_a_missing_include_or_secret_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    cfg = read_config(write(tmp_path / "dev.yaml", """\
        esphome:
          name: dev
        wifi:
          password: !secret nothere
        <<: !include missing.yaml
        """))  # fmt: skip
    assert cfg.name == "dev" and cfg.error is None
    assert "secret 'nothere' is not defined" in cfg.problems
    assert any("missing.yaml does not exist" in p for p in cfg.problems)


def test_mdns_disabled_and_mac_suffix_flags(tmp_path: Path) -> None:
    cfg = read_config(write(tmp_path / "dev.yaml", """\
        esphome:
          name: dev
          name_add_mac_suffix: maybe
        mdns:
          disabled: true
        """))  # fmt: skip
    assert cfg.mdns_disabled and not cfg.name_add_mac_suffix
    assert "name_add_mac_suffix is not a boolean" in cfg.problems


def test_scanning_reports_duplicates_and_unlistable_dirs(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write(one / "a.yaml", "esphome:\n  name: same\n")
    write(two / "b.yaml", "esphome:\n  name: same\n")
    write(two / "c.yaml", "esphome:\n  name: other\n")
    scan = scan_config_dirs([one, two, one, tmp_path / "nowhere"])
    assert [c.name for c in scan.configs] == ["same", "same", "other"]
    assert any("name 'same' is used by" in p for p in scan.problems)
    assert any("cannot list" in p and "nowhere" in p for p in scan.problems)


def test_hostile_yaml_does_not_escape_the_loader(tmp_path: Path) -> None:
    """Python tags are not constructed; alias bombs stay shared references."""
    cfg = read_config(write(tmp_path / "evil.yaml", """\
        esphome:
          name: evil
        x: !!python/object/apply:os.system ["touch pwned"]
        a: &a [1, 2, 3]
        b: &b [*a, *a, *a, *a, *a, *a, *a, *a]
        c: &c [*b, *b, *b, *b, *b, *b, *b, *b]
        d: [*c, *c, *c, *c, *c, *c, *c, *c]
        """))  # fmt: skip
    assert cfg.name is None and "not valid YAML" in (cfg.error or "")
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load("!!python/name:os.system")


# -- against the real esphome --------------------------------------------------------------


REAL_CONFIGS = {
    "subs.yaml": """\
        substitutions:
          base: probe
        esphome:
          name: ${base}-one
        host:
        logger:
        """,
    "wifi.yaml": """\
        esphome:
          name: wifi-probe
        esp32:
          board: esp32dev
          framework:
            type: esp-idf
        wifi:
          ssid: x
          password: !secret pw
          manual_ip:
            static_ip: 192.168.7.7
            gateway: 192.168.7.1
            subnet: 255.255.255.0
        """,
    "pkg.yaml": """\
        substitutions:
          room: attic
        packages:
          base: !include inc/base.yaml
        esp8266:
          board: d1_mini
        wifi:
          ssid: x
          password: !secret pw
          domain: .lan
        """,
}


class _AnyTagLoader(yaml.SafeLoader):
    pass


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


async def test_name_and_address_agree_with_esphome_config(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    """The cheap read gives the validated config's name and use_address."""
    write(tmp_path / "secrets.yaml", "pw: a-long-password\n")
    write(tmp_path / "inc" / "base.yaml", "esphome:\n  name: ${room}-probe\n")
    for filename, text in REAL_CONFIGS.items():
        config = write(tmp_path / filename, text)
        cfg = read_config(config)
        text = await validate_config(
            offline_toolchain, config, log=lambda _line: None, on_start=None
        )
        validated = yaml.load(text, Loader=_AnyTagLoader)
        assert cfg.name == validated["esphome"]["name"], filename
        network = validated.get("wifi") or {}
        assert cfg.address == network.get("use_address"), filename
