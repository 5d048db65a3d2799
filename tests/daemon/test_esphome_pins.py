"""Per-configuration esphome pins in the fleet settings (``esphome-pins``).

A pinned configuration's compile or install builds with the pinned version unless the
request names its own; the runner then provisions it like ``--esphome-version``
(tests/mesh/test_build_records.py shows that path builds with and records it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshd.api.validation import (
    ConfigRules,
    parse_installs_request,
    parse_job_request,
    resolve_pins,
)
from meshd.config import ConfigError, load_settings, read_config_file
from tests.daemon.conftest import MeshdFactory, host_config

YAML = "esphome:\n  name: {name}\nhost:\n"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    root = tmp_path / "esphome"
    (root / "sub").mkdir(parents=True)
    for name in ("kitchen", "garage"):
        (root / f"{name}.yaml").write_text(YAML.format(name=name))
    (root / "sub" / "kitchen.yaml").write_text(YAML.format(name="attic"))
    return root


def test_the_toml_table_and_the_flag_form_agree(tmp_path: Path, fleet: Path) -> None:
    toml = tmp_path / "meshd.toml"
    toml.write_text(
        f'config-dirs = ["{fleet}"]\n[esphome-pins]\n"kitchen.yaml" = "2026.6.4"\n'
        f'"{fleet / "garage.yaml"}" = "2026.5.1"\n'
    )
    from_file = read_config_file(toml)["esphome_pins"]
    from_flags = load_settings(
        {
            "data_dir": tmp_path / "data",
            "config_dirs": (str(fleet),),
            "esphome_pins": ("kitchen.yaml=2026.6.4", f"{fleet / 'garage.yaml'}=2026.5.1"),
        },
        env={},
    ).esphome_pins
    assert from_file == from_flags
    assert dict(from_file) == {"kitchen.yaml": "2026.6.4", str(fleet / "garage.yaml"): "2026.5.1"}


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"kitchen.yaml": "latest"}, "not an esphome release version"),
        ({"kitchen.yaml": "2026.6.4; rm -rf /"}, "not an esphome release version"),
        ({"kitchen.yaml": 2026}, "is a string"),
        ({"": "2026.6.4"}, "needs a configuration path"),
        ("kitchen.yaml", "not CONFIGURATION=VERSION"),
        ("=2026.6.4", "not CONFIGURATION=VERSION"),
    ],
)
def test_a_bad_pin_stops_the_start_with_its_reason(tmp_path: Path, value: object, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as caught:
        load_settings({"data_dir": tmp_path, "esphome_pins": value}, env={})
    assert "esphome_pins" in str(caught.value)


def test_a_pin_applies_to_its_configuration_only(fleet: Path) -> None:
    rules = ConfigRules(
        config_dirs=(fleet,),
        pins=resolve_pins((("kitchen.yaml", "2026.6.4"),), (fleet,)),
    )

    def version(body: dict[str, object]) -> str | None:
        return parse_job_request(body, rules).options.esphome_version

    kitchen = str(fleet / "kitchen.yaml")
    assert version({"type": "compile", "configuration": kitchen}) == "2026.6.4"
    # The same file by another spelling (relative to the client's directory) is pinned.
    assert version({"type": "compile", "configuration": "kitchen.yaml", "cwd": str(fleet)}) == (
        "2026.6.4"
    )
    # A request's own version wins over the pin.
    assert (
        version({"type": "compile", "configuration": kitchen, "esphome_version": "2026.7.0"})
        == "2026.7.0"
    )
    # Another configuration, one of the same name in a subdirectory, and job kinds that
    # build nothing are not pinned.
    assert version({"type": "compile", "configuration": str(fleet / "garage.yaml")}) is None
    assert (
        version({"type": "compile", "configuration": str(fleet / "sub" / "kitchen.yaml")}) is None
    )
    assert version({"type": "clean", "configuration": kitchen}) is None
    # A fleet install (POST /installs) pins the compile of each entry.
    (kitchen_install, garage_install) = parse_installs_request(
        {
            "installs": [{"configuration": kitchen}, {"configuration": str(fleet / "garage.yaml")}],
            "when_online": True,
        },
        rules,
    )
    assert kitchen_install.options.esphome_version == "2026.6.4"
    assert garage_install.options.esphome_version is None


def test_a_relative_pin_counts_in_every_configuration_directory(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    pins = resolve_pins((("x.yaml", "2026.6.4"), ("/abs/y.yaml", "2026.5.1")), (first, second))
    assert pins == (
        ((first / "x.yaml").resolve(), "2026.6.4"),
        ((second / "x.yaml").resolve(), "2026.6.4"),
        (Path("/abs/y.yaml").resolve(), "2026.5.1"),
    )
    # Without configuration directories a relative pin would name nothing: the settings
    # refuse it rather than pin nothing silently.
    assert resolve_pins((("x.yaml", "2026.6.4"),), ()) == ()
    with pytest.raises(ConfigError, match="relative and no config_dirs"):
        load_settings({"data_dir": tmp_path, "esphome_pins": ("x.yaml=2026.6.4",)}, env={})


def test_a_real_daemon_builds_a_pinned_configuration_with_its_pin(
    meshd: MeshdFactory, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet"
    same = host_config(fleet, "same")
    old = host_config(fleet, "old")
    free = host_config(fleet, "free")
    daemon = meshd(
        args=(
            "--config-dir",
            str(fleet),
            "--esphome-pin",
            "same.yaml=2026.6.5",  # the stand-in's own version: nothing to provision
            "--esphome-pin",
            "old.yaml=2026.1.1",
            "--no-toolchain-provision",
        )
    ).start()
    jobs: dict[str, str] = {}
    for config in (same, old, free):
        jobs[config.stem] = daemon.cli_json("compile", str(config), "--local", "--detach")[
            "compile"
        ]
    waited = daemon.cli("wait", *jobs.values(), "--json")
    assert waited.returncode != 0  # one of them failed, as it must
    ended = {job["id"]: job for job in json.loads(waited.stdout)["jobs"]}
    pinned = ended[jobs["same"]]
    assert pinned["status"] == "completed"
    assert pinned["args"]["esphome_version"] == "2026.6.5"
    assert pinned["build"]["esphome_version"] == "2026.6.5"
    # The pin is really used: this node may not provision, so the old pin cannot build.
    refused = ended[jobs["old"]]
    assert refused["status"] == "failed"
    assert "cannot build with esphome 2026.1.1" in refused["error"]
    unpinned = ended[jobs["free"]]
    assert unpinned["status"] == "completed" and "esphome_version" not in unpinned["args"]
