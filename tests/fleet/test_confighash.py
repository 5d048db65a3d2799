"""The current config hash: esphome's own, cached by the stamps of every input."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from meshd.fleet.confighash import (
    ConfigHasher,
    ConfigHashError,
    parse_config_hash,
    stamp_files,
    stamps_current,
)
from meshd.fleet.store import FleetStore
from meshd.toolchain.commands import invoke_esphome
from meshd.toolchain.tools import Toolchain


def test_the_hash_line_is_found_among_log_lines() -> None:
    lines = ["INFO ESPHome 2026.6.5", "INFO Reading configuration a.yaml...", "0xbc2f0b31",
             "INFO Generating C++ source..."]  # fmt: skip
    assert parse_config_hash(lines) == "bc2f0b31"
    with pytest.raises(ConfigHashError, match="no 0x"):
        parse_config_hash(["INFO nothing", "0x123", "0xBC2F0B31"])


def test_stamps_see_content_time_and_deletion(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("x")
    b.write_text("y")
    stamps = stamp_files([b, a, a])
    assert stamps is not None and [Path(s.path).name for s in stamps] == ["a.yaml", "b.yaml"]
    assert stamps_current(stamps)
    os.utime(a, ns=(1, 1))
    assert not stamps_current(stamps)
    stamps = stamp_files([a, b])
    assert stamps is not None
    b.unlink()
    assert not stamps_current(stamps) and stamp_files([a, b]) is None
    assert not stamps_current(())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def project(root: Path) -> Path:
    write(
        root / "shared.yaml", "interval:\n  - interval: 10s\n    then:\n      - logger.log: tick\n"
    )
    write(root / "cfg" / "secrets.yaml", "comment_text: first\n")
    write(
        root / "cfg" / "inc.yaml", 'globals:\n  - id: g1\n    type: int\n    initial_value: "1"\n'
    )
    return write(root / "cfg" / "dev.yaml", """\
        esphome:
          name: hash-probe
          comment: !secret comment_text
        host:
        logger:
        packages:
          outside: !include ../shared.yaml
        <<: !include inc.yaml
        """)  # fmt: skip


async def esphome_hash(toolchain: Toolchain, config: Path) -> str:
    lines = await invoke_esphome(toolchain, ["config-hash", str(config)], log=lambda _l: None)
    return parse_config_hash(lines)


@pytest.mark.slow  # eight esphome runs: ~7 s idle, 18 s on a loaded machine
async def test_the_cache_follows_the_yaml_and_everything_it_uses(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    config = project(tmp_path)
    store = FleetStore(tmp_path / "meshd.db")
    try:
        hasher = ConfigHasher(offline_toolchain, esphome_version="2026.6.5", store=store)
        first = await hasher.current(config)
        assert first.value == await esphome_hash(offline_toolchain, config)
        assert not first.cached and hasher.runs == 1
        names = {Path(f.path).name for f in first.files}
        assert names == {"dev.yaml", "inc.yaml", "secrets.yaml", "shared.yaml"}

        again = await hasher.current(config)
        assert again.cached and again.value == first.value and hasher.runs == 1

        os.utime(config)  # touched, not changed: recomputed, same hash
        assert (await hasher.current(config)).value == first.value and hasher.runs == 2

        values = {first.value}
        edits = [
            (config.parent / "inc.yaml", '"1"', '"2"'),
            (config.parent / "secrets.yaml", "first", "second"),
            (tmp_path / "shared.yaml", "10s", "20s"),  # outside the config directory
        ]
        for path, old, new in edits:
            path.write_text(path.read_text().replace(old, new))
            runs = hasher.runs
            result = await hasher.current(config)
            assert not result.cached and hasher.runs == runs + 1, path
            assert result.value == await esphome_hash(offline_toolchain, config)
            assert result.value not in values, f"editing {path.name} must change the hash"
            values.add(result.value)

        # A restart: a new hasher on the same store knows it without running esphome.
        restarted = ConfigHasher(
            offline_toolchain, esphome_version="2026.6.5", store=FleetStore(store.path)
        )
        hit = await restarted.current(config)
        assert hit.cached and restarted.runs == 0 and hit.value in values
        # Another esphome version may validate with other defaults: recomputed.
        upgraded = ConfigHasher(offline_toolchain, esphome_version="2026.7.0", store=store)
        assert upgraded.cached(config) is None
        assert not (await upgraded.current(config)).cached and upgraded.runs == 1
    finally:
        store.close()


async def test_failures_are_errors_and_never_cached(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    config = project(tmp_path)
    broken = write(tmp_path / "cfg" / "broken.yaml", "esphome:\n  name: Bad Name!\nhost:\n")
    hasher = ConfigHasher(offline_toolchain, esphome_version="2026.6.5")
    results = await hasher.current_many([config, broken])
    good = results[str(config)]
    bad = results[str(broken)]
    assert not isinstance(good, ConfigHashError)
    assert isinstance(bad, ConfigHashError) and "esphome config-hash failed" in str(bad)
    assert "Bad Name!" in str(bad)  # esphome's own explanation travels with the error
    assert hasher.cached(broken) is None
    (config.parent / "inc.yaml").unlink()  # an input disappears
    assert hasher.cached(config) is None
    with pytest.raises(ConfigHashError, match="config-hash failed"):
        await hasher.current(config)


async def test_concurrent_requests_for_one_config_run_esphome_once(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    config = project(tmp_path)
    hasher = ConfigHasher(offline_toolchain, esphome_version="2026.6.5", concurrency=2)
    results = await asyncio.gather(*(hasher.current(config) for _ in range(4)))
    assert len({r.value for r in results}) == 1
    assert hasher.runs == 1


async def test_an_esp32_config_with_esphomes_framework_notice_is_cached(
    tmp_path: Path, offline_toolchain: Toolchain
) -> None:
    """esphome prints a multi-line notice (indented like the file list) for an ESP32
    without a framework; it must not be taken for an input, or nothing would cache."""
    write(tmp_path / "secrets.yaml", "pw: a-long-password\n")
    config = write(
        tmp_path / "e32.yaml",
        """\
        esphome:
          name: e32
        esp32:
          board: esp32dev
        wifi:
          ssid: x
          password: !secret pw
        api:
        """,
    )
    hasher = ConfigHasher(offline_toolchain, esphome_version="2026.6.5")
    first = await hasher.current(config)
    assert {Path(f.path).name for f in first.files} == {"e32.yaml", "secrets.yaml"}
    assert (await hasher.current(config)).cached and hasher.runs == 1
