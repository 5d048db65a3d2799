"""The compile cache's settings: on by default, a size with binary units, off by flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import DEFAULT_COMPILE_CACHE_SIZE, ConfigError, load_settings


def test_defaults_and_flags(tmp_path: Path) -> None:
    env = {"MESHD_DATA_DIR": str(tmp_path)}
    base = load_settings({}, env=env)
    assert base.compile_cache is True and base.compile_cache_size == DEFAULT_COMPILE_CACHE_SIZE
    off = load_settings({"compile_cache": False, "compile_cache_size": "500M"}, env=env)
    assert off.compile_cache is False and off.compile_cache_size == 500 * 1024**2
    from_env = load_settings({}, env={**env, "MESHD_COMPILE_CACHE_SIZE": "5GiB"})
    assert from_env.compile_cache_size == 5 * 1024**3


@pytest.mark.parametrize("bad", ["", "lots", "-1G", "10K", "inf", "1.5X"])
def test_bad_sizes_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError):
        load_settings({"compile_cache_size": bad}, env={"MESHD_DATA_DIR": str(tmp_path)})
