"""The current config hash of a YAML, computed by esphome itself and cached by file stamps.

What the firmware publishes as ``config_hash`` (mDNS TXT, the ``version`` text
sensor) is ``CORE.config_hash`` (``esphome/core/__init__.py``): the FNV-1a 32-bit hash
of ``yaml_util.dump(CORE.config, show_secrets=True, sort_keys=True)`` taken *after*
code generation, because ``to_code`` may change the config. ``esphome compile``
writes it into ``build_info_data.cpp`` (``ESPHOME_CONFIG_HASH``) and
``<build>/build_info.json``; ``esphome config-hash CFG`` runs the same
``generate_cpp_contents`` and prints ``0x%08x`` (``command_config_hash`` in
``esphome/__main__.py``). meshd runs that command as a subprocess (it never imports
esphome), so the hash is esphome's own, for esphome's own defaults of its version.

Running esphome costs about a second here and several on a Pi, so results are cached
against the ``(mtime_ns, size)`` of every input: the YAML, the files esphome's
bundler finds it uses (``esphome bundle --list-only``: includes, packages, secrets,
component files; files outside the config directory it names in a warning, which is
parsed too), and the files meshd's cheap reader followed. A changed, added or
removed input, or another esphome version, means a new run. Stamps are taken before
the run and checked after it; a file edited during the run is not cached.

Not tracked (documented in docs/FLEET.md): ``!env_var`` values and remote
packages (``github://``), which can change the hash without any local file changing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meshd.fleet.configs import SECRETS_FILES, read_config
from meshd.fleet.store import FileStamp, FleetStore, StoredHash
from meshd.toolchain.commands import EsphomeFailed, invoke_esphome
from meshd.toolchain.tools import Toolchain, ToolMissing

_LOGGER = logging.getLogger(__name__)

_HASH_LINE_RE: Final = re.compile(r"^0x([0-9a-f]{8})$")
_BUNDLE_OUTSIDE_RE: Final = re.compile(r"skipping file outside config directory: (.+)$")

DEFAULT_CONCURRENCY: Final = 1
"""esphome runs at once: one keeps a Pi's second core for the compile lane."""


class ConfigHashError(Exception):
    """esphome could not compute the hash (invalid YAML, esphome missing...)."""


@dataclass(frozen=True)
class ConfigHash:
    config: Path
    value: str
    """8 lowercase hex digits, as the firmware's mDNS ``config_hash`` TXT spells it."""
    esphome_version: str
    files: tuple[FileStamp, ...]
    computed_at: float
    cached: bool = False
    """Served from the cache (no esphome run)."""


def stamp_files(paths: Iterable[Path]) -> tuple[FileStamp, ...] | None:
    """Stamps of ``paths`` (sorted); None when any of them is missing."""
    stamps = []
    for path in sorted(set(paths)):
        try:
            st = path.stat()
        except OSError:
            return None
        stamps.append(FileStamp(str(path), st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def stamps_current(files: Sequence[FileStamp]) -> bool:
    """Whether every file still has the stamp it had (a missing one does not)."""
    if not files:
        return False
    now = stamp_files(Path(f.path) for f in files)
    return now is not None and now == tuple(sorted(files, key=lambda f: f.path))


def parse_config_hash(lines: Sequence[str]) -> str:
    """The hash from ``esphome config-hash`` output (its stdout line ``0x1234abcd``)."""
    for line in reversed(lines):
        match = _HASH_LINE_RE.match(line.strip())
        if match:
            return match.group(1)
    raise ConfigHashError("esphome config-hash printed no 0x........ line")


def _local_inputs(config: Path) -> tuple[Path, set[Path]]:
    """The config directory, and the inputs meshd's cheap reader sees (the YAML, its
    includes, secrets files beside it)."""
    directory = config.absolute().parent
    found = {config.absolute()}
    for extra in read_config(config).included:
        found.add(extra.absolute())
    for name in SECRETS_FILES:
        if (directory / name).is_file():
            found.add(directory / name)
    return directory, found


def _listed_files(directory: Path, lines: Sequence[str]) -> set[Path]:
    """Files named by ``esphome bundle --list-only``: its two-space indented lines, and
    the files outside the config directory it warns it skipped.

    Only names of existing files count: esphome's multi-line notices (the ESP32
    framework notice's ``  ✨ Smaller firmware binaries``) share the indentation, and
    taking one for a file would make every stamp check fail, so nothing would cache.
    """
    found: set[Path] = set()
    for line in lines:
        outside = _BUNDLE_OUTSIDE_RE.search(line)
        candidate = (
            Path(outside.group(1).strip())
            if outside
            else directory / line.strip()
            if line.startswith("  ") and line.strip()
            else None
        )
        if candidate is not None and candidate.is_file():
            found.add(candidate)
    return found


def _key(config: Path) -> str:
    return str(config.absolute())


class ConfigHasher:
    """Current config hashes for many configurations, one esphome run per change."""

    def __init__(
        self,
        toolchain: Toolchain,
        *,
        esphome_version: str,
        store: FleetStore | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._toolchain = toolchain
        self._version = esphome_version
        self._store = store
        self._clock = clock
        self._log = log or (lambda line: _LOGGER.debug("%s", line))
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._locks: dict[str, asyncio.Lock] = {}
        self._cache: dict[str, StoredHash] = store.load_hashes() if store is not None else {}
        self.runs = 0
        """esphome runs made (cache misses), for tests and metrics."""

    def cached(self, config: Path) -> ConfigHash | None:
        """The cached hash if every input is unchanged; never runs esphome."""
        entry = self._cache.get(_key(config))
        if entry is None or entry.esphome_version != self._version:
            return None
        if not stamps_current(entry.files):
            return None
        return ConfigHash(
            config=config,
            value=entry.config_hash,
            esphome_version=entry.esphome_version,
            files=entry.files,
            computed_at=entry.computed_at,
            cached=True,
        )

    async def current(self, config: Path) -> ConfigHash:
        """The hash of ``config`` as it is now; raises ``ConfigHashError``."""
        hit = self.cached(config)
        if hit is not None:
            return hit
        key = _key(config)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self.cached(config)  # a concurrent caller may have just computed it
            if hit is not None:
                return hit
            async with self._limit:
                return await self._compute(config, key)

    async def current_many(
        self, configs: Iterable[Path]
    ) -> dict[str, ConfigHash | ConfigHashError]:
        """Hashes of many configurations keyed by ``str(path)``; failures as values."""
        paths = list(configs)

        async def one(path: Path) -> ConfigHash | ConfigHashError:
            try:
                return await self.current(path)
            except ConfigHashError as err:
                return err

        results = await asyncio.gather(*(one(p) for p in paths))
        return {str(p): r for p, r in zip(paths, results, strict=True)}

    async def _run(self, args: list[str]) -> list[str]:
        try:
            # Not a job: nothing records the process group; a crash leaves at most a
            # short-lived `esphome config-hash` behind.
            return await invoke_esphome(self._toolchain, args, log=self._log, on_start=None)
        except EsphomeFailed as err:
            raise ConfigHashError(str(err)) from err
        except ToolMissing as err:
            raise ConfigHashError(f"esphome cannot be started: {err}") from err

    async def _inputs(self, config: Path) -> set[Path] | None:
        """Every file the hash depends on, or None if esphome could not list them."""
        directory, found = await asyncio.to_thread(_local_inputs, config)
        try:
            lines = await self._run(["bundle", str(config), "--list-only"])
        except ConfigHashError as err:
            _LOGGER.warning("cannot list the inputs of %s, not caching its hash: %s", config, err)
            return None
        return found | await asyncio.to_thread(_listed_files, directory, lines)

    async def _compute(self, config: Path, key: str) -> ConfigHash:
        inputs = await self._inputs(config)
        before = stamp_files(inputs) if inputs is not None else None
        self.runs += 1
        lines = await self._run(["config-hash", str(config)])
        value = parse_config_hash(lines)
        after = stamp_files(inputs) if inputs is not None else None
        now = self._clock()
        files = before or ()
        result = ConfigHash(config, value, self._version, files, now)
        if before is not None and before == after:
            entry = StoredHash(key, value, self._version, before, now)
            self._cache[key] = entry
            if self._store is not None:
                try:
                    self._store.save_hash(entry)
                except Exception:
                    _LOGGER.exception("could not store the config hash of %s", config)
        else:
            self._cache.pop(key, None)
        return result

    def forget(self, config: Path) -> None:
        """Drop a cached hash (the configuration was deleted)."""
        key = _key(config)
        self._cache.pop(key, None)
        if self._store is not None:
            self._store.delete_hash(key)
