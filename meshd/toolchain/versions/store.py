"""The toolchain store: one venv per esphome version, provisioned on first need.

Layout under the data directory::

    toolchains/
      esphome-2026.6.4 -> .builds/esphome-2026.6.4.3f9a1c2e    published (ready) toolchain
      .builds/esphome-2026.6.4.3f9a1c2e/                       the venv, never moved
        bin/esphome, bin/python, ...
        .meshd-toolchain.json                                  ready marker, written last
        .meshd-last-used                                       mtime = last lease start/end
      .locks/esphome-2026.6.4.lock                             exclusive: provision, sweep
      .locks/esphome-2026.6.4.use                              shared: running jobs

Why a symlink rather than a directory renamed into place: a venv is not relocatable.
pip writes the venv's absolute interpreter path into every console script's shebang,
so a venv built in a temporary directory and renamed has a ``bin/esphome`` that
cannot start. The venv is therefore built at its permanent path under ``.builds``
(a fresh name per attempt) and *published* by atomically replacing the
``esphome-<version>`` symlink, after ``esphome version`` answered the right version
and the ready marker was written. Readers never see a half-built toolchain under the
published name; a crashed or cancelled attempt leaves at most an unpublished build
directory, which the next provisioning of that version or the next sweep removes.

Concurrency: per version, an ``asyncio.Lock`` makes coroutines of one process wait
for each other without polling, and an exclusive ``flock`` on the ``.lock`` file does
the same across processes; whoever gets both re-checks readiness, so two jobs (or two
daemons) asking for one new version run pip once. A running job holds a *lease*
(:meth:`ToolchainStore.use`): a shared ``flock`` on the ``.use`` file, which the sweep
must take exclusively (without waiting) before it removes anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from meshd.release_version import check_version, is_version
from meshd.toolchain.process import DEFAULT_KILL_GRACE, ProcessResult, run_process
from meshd.toolchain.versions.locks import FileLock
from meshd.toolchain.versions.pip import (
    PipOptions,
    default_python,
    host_pip_usable,
    install_argv,
)
from meshd.toolchain.versions.sweep import (
    Installed,
    SweepDecision,
    SweepPolicy,
    disk_usage,
    plan_sweep,
)

log = logging.getLogger(__name__)

TOOLCHAINS_DIR: Final = "toolchains"
BUILDS_DIR: Final = ".builds"
LOCKS_DIR: Final = ".locks"
PREFIX: Final = "esphome-"
READY_MARKER: Final = ".meshd-toolchain.json"
LAST_USED: Final = ".meshd-last-used"
MARKER_FORMAT: Final = 1

# `esphome version` prints "Version: 2026.6.5" (esphome/__main__.py, command_version).
_VERSION_LINE: Final = re.compile(r"^Version:\s*(\S+)\s*$")
# Environment that would make a venv's python or pip look elsewhere than the venv:
# PYTHONPATH could even put another esphome in front of the one just installed, and
# PIP_TARGET/PIP_PREFIX would install it somewhere else entirely.
_LEAKY_ENV: Final = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "VIRTUAL_ENV",
    "PIP_TARGET",
    "PIP_PREFIX",
    "PIP_ROOT",
    "PIP_USER",
    "PIP_REQUIRE_VIRTUALENV",
)
# The same, as ``Toolchain.unset``: what a command run from a provisioned venv drops.
HERMETIC_UNSET: Final = frozenset(_LEAKY_ENV)
_PROVISION_ENV: Final = {
    "PYTHONUNBUFFERED": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "PIP_NO_INPUT": "1",
}
# `esphome version` imports esphome and answers in 1-2 s on a desktop, ~10 s on a Pi;
# a package that hangs there is broken, not slow.
CHECK_TIMEOUT: Final = 120.0
# How many of pip's last lines explain a failure when it printed no "ERROR:" line.
_TAIL_FOR_ERRORS: Final = 6

LineSink = Callable[[str], None]


def _ignore(_line: str) -> None:
    return None


class ProvisionError(Exception):
    """Provisioning a toolchain failed; ``stage`` says where, the message says why."""

    def __init__(self, version: str, stage: str, message: str) -> None:
        super().__init__(message)
        self.version = version
        self.stage = stage
        """``venv``, ``pip`` or ``check`` (the ``esphome version`` answer)."""


@dataclass(frozen=True)
class ProvisionedToolchain:
    """A ready toolchain: the published venv and the esphome command in it."""

    version: str
    path: Path
    """``toolchains/esphome-<version>`` (the published name; stable while leased)."""

    @property
    def esphome(self) -> tuple[str, ...]:
        """The argv prefix that runs this toolchain's esphome (``Toolchain.esphome``).

        Through the build directory the published name points at, not the name itself:
        that is where the venv lives (its scripts' shebangs name it), it never moves
        while leased, and it is the tree the build sandbox lends read-only, so a peer's
        sandboxed compile finds the program (the ``toolchains/`` link is not in there).
        """
        return (str(self.path.resolve() / "bin" / "esphome"),)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass(frozen=True)
class SweepReport:
    decisions: tuple[SweepDecision, ...]
    """One per published toolchain: removed or kept, and why."""
    leftovers: tuple[str, ...] = ()
    """Unpublished build directories (interrupted provisionings) that were removed."""

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(d.version for d in self.decisions if d.remove)


class ToolchainStore:
    """Provision, lease and sweep esphome toolchains under ``<data_dir>/toolchains``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        pip: PipOptions | None = None,
        python: str | None = None,
        use_host_pip: bool | None = None,
        env: Mapping[str, str] | None = None,
        kill_grace: float = DEFAULT_KILL_GRACE,
        check_timeout: float = CHECK_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = data_dir / TOOLCHAINS_DIR
        self.pip = pip or PipOptions()
        self.python = python or default_python()
        self.use_host_pip = host_pip_usable() if use_host_pip is None else use_host_pip
        self._env = dict(env or {})
        self._kill_grace = kill_grace
        self._check_timeout = check_timeout
        self._clock = clock
        self._provision_locks: dict[str, asyncio.Lock] = {}
        self._leases: Counter[str] = Counter()
        self._watchers: list[Callable[[], None]] = []

    # -- change notifications ----------------------------------------------------------

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (in the event loop) whenever the ready set changed in this
        process: a toolchain was published, or a sweep removed one. Returns the remover.

        The mesh republishes its mDNS advert from it (``tc``, docs/DISCOVERY.md).
        """
        self._watchers.append(callback)

        def remove() -> None:
            if callback in self._watchers:
                self._watchers.remove(callback)

        return remove

    def _changed(self) -> None:
        for callback in list(self._watchers):
            try:
                callback()
            except Exception:
                # A broken watcher must not fail the job that provisioned.
                log.exception("toolchain store watcher failed")

    # -- paths and state ---------------------------------------------------------------

    def path(self, version: str) -> Path:
        """The published path of ``version`` (whether or not it exists)."""
        return self.root / f"{PREFIX}{check_version(version)}"

    def _lock_path(self, version: str) -> Path:
        return self.root / LOCKS_DIR / f"{PREFIX}{version}.lock"

    def _use_path(self, version: str) -> Path:
        return self.root / LOCKS_DIR / f"{PREFIX}{version}.use"

    def _ready_target(self, version: str) -> Path | None:
        """The build directory ``version`` is published as, if it is complete."""
        try:
            target = self.path(version).resolve(strict=True)
        except OSError:
            return None
        marker = _read_marker(target)
        if marker is None or marker.get("esphome_version") != version:
            return None
        if not (target / "bin" / "esphome").is_file():
            return None
        return target

    def is_ready(self, version: str) -> bool:
        """Whether ``version`` is provisioned and checked (safe to run right now)."""
        return self._ready_target(check_version(version)) is not None

    def ready_versions(self) -> list[str]:
        """Every ready version, oldest release first (for node_info and mDNS)."""
        return sorted((v for v in self._published() if self.is_ready(v)), key=_sort_key)

    def recent_versions(self) -> list[str]:
        """Every ready version, most recently used (or provisioned) first, the newer
        release first on a tie: what a bounded advert keeps when it cannot name all."""
        ready: list[tuple[float, str]] = []
        for version in self._published():
            target = self._ready_target(version)
            if target is not None:
                ready.append((self._last_used(target), version))
        ready.sort(key=lambda item: (item[0], _sort_key(item[1])), reverse=True)
        return [version for _, version in ready]

    def in_use(self, version: str) -> bool:
        """Whether a job in *this* process holds a lease on ``version``."""
        return self._leases[check_version(version)] > 0

    def _published(self) -> list[str]:
        try:
            names = [entry.name for entry in os.scandir(self.root)]
        except OSError:
            return []
        versions = [n[len(PREFIX) :] for n in names if n.startswith(PREFIX)]
        return [v for v in versions if is_version(v)]

    # -- provisioning --------------------------------------------------------------------

    async def ensure(
        self,
        version: str,
        *,
        on_line: LineSink = _ignore,
        on_process: Callable[[int], None] | None = None,
    ) -> ProvisionedToolchain:
        """Return ``version`` ready, provisioning it first if needed.

        ``on_line`` gets every log line (pip's output and meshd's steps); ``on_process``
        the process group of each child (``JobContext.on_process``, for crash cleanup).

        A running job should hold :meth:`use` instead, which also keeps a sweep off it.
        Raises ``ToolchainVersionError`` for a bad version string, ``ProvisionError``
        when venv, pip or the version check fail; a cancel kills pip's process group
        and removes the half-built venv before ``CancelledError`` propagates.
        """
        version = check_version(version)
        if self.is_ready(version):
            return ProvisionedToolchain(version, self.path(version))
        lock = self._provision_locks.setdefault(version, asyncio.Lock())
        if lock.locked():
            on_line(f"[meshd] esphome {version} is being provisioned for another job; waiting")
        async with lock:
            if not self.is_ready(version):
                file_lock = FileLock(self._lock_path(version))
                await file_lock.acquire(
                    on_wait=lambda: on_line(
                        f"[meshd] another meshd process is provisioning esphome {version}; waiting"
                    )
                )
                try:
                    if not self.is_ready(version):
                        await self._provision(version, on_line, on_process)
                finally:
                    file_lock.release()
        return ProvisionedToolchain(version, self.path(version))

    async def _provision(
        self, version: str, on_line: LineSink, on_process: Callable[[int], None] | None
    ) -> None:
        """Build, check and publish ``version``; caller holds both provisioning locks."""
        started = time.monotonic()
        await _settle(self._clear_leftovers, version)
        token = secrets.token_hex(4)
        build = self.root / BUILDS_DIR / f"{PREFIX}{version}.{token}"
        build.parent.mkdir(parents=True, exist_ok=True)
        on_line(
            f"[meshd] provisioning esphome {version} in {self.path(version)} "
            f"(from {self.pip.describe()})"
        )
        try:
            venv_argv = [self.python, "-m", "venv"]
            if self.use_host_pip:
                venv_argv.append("--without-pip")
            await self._run(version, "venv", [*venv_argv, str(build)], on_line, on_process)
            host_python = self.python if self.use_host_pip else None
            argv = install_argv(
                build / "bin" / "python", version, self.pip, host_python=host_python
            )
            on_line(f"[meshd] pip install esphome=={version}")
            await self._run(version, "pip", argv, on_line, on_process)
            await self._check(version, build, on_line, on_process)
            await _settle(self._publish, version, build, token, time.monotonic() - started)
        except BaseException:
            # Also on cancel: run_process has already killed pip's process group. The
            # removal finishes before the locks go, so no other provisioning sees it.
            await _settle(_remove_tree, build)
            raise
        on_line(f"[meshd] esphome {version} ready ({time.monotonic() - started:.1f} s)")
        log.info("provisioned esphome %s in %.1f s", version, time.monotonic() - started)
        self._changed()

    def _environ(self) -> dict[str, str]:
        env = hermetic_environ(os.environ)
        env.update(_PROVISION_ENV)
        env.update(self._env)
        return env

    async def _run(
        self,
        version: str,
        stage: str,
        argv: Sequence[str],
        on_line: LineSink,
        on_process: Callable[[int], None] | None,
    ) -> ProcessResult:
        try:
            result = await run_process(
                argv,
                on_line=on_line,
                env=self._environ(),
                kill_grace=self._kill_grace,
                on_start=on_process,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise ProvisionError(
                version, stage, f"cannot run {argv[0]!r}: {exc.strerror or exc}"
            ) from exc
        if result.returncode != 0:
            what = {"venv": "python -m venv", "pip": f"pip install esphome=={version}"}.get(
                stage, argv[0]
            )
            raise ProvisionError(
                version,
                stage,
                f"{what} failed (exit {result.returncode}): {_explain(result.tail)}",
            )
        return result

    async def _check(
        self,
        version: str,
        build: Path,
        on_line: LineSink,
        on_process: Callable[[int], None] | None,
    ) -> None:
        """``<venv>/bin/esphome version`` must answer exactly ``version``."""
        esphome = build / "bin" / "esphome"
        on_line(f"[meshd] checking that `esphome version` answers {version}")
        try:
            async with asyncio.timeout(self._check_timeout):
                result = await self._run(
                    version, "check", [str(esphome), "version"], on_line, on_process
                )
        except TimeoutError:
            raise ProvisionError(
                version,
                "check",
                f"`esphome version` did not answer within {self._check_timeout:g} s",
            ) from None
        answers = [m.group(1) for line in result.tail if (m := _VERSION_LINE.match(line))]
        if not answers:
            raise ProvisionError(
                version,
                "check",
                f"`esphome version` printed no version line: {_explain(result.tail)}",
            )
        if answers[-1] != version:
            raise ProvisionError(
                version,
                "check",
                f"the installed esphome reports version {answers[-1]!r}, not {version!r}",
            )

    def _publish(self, version: str, build: Path, token: str, seconds: float) -> None:
        """Write the ready marker, then point ``esphome-<version>`` at ``build``."""
        now = self._clock()
        marker = {
            "format": MARKER_FORMAT,
            "esphome_version": version,
            "ready_at": now,
            "provision_seconds": round(seconds, 3),
            "python": self.python,
            "source": self.pip.describe(),
        }
        _write_atomic(build / READY_MARKER, json.dumps(marker, indent=2).encode())
        (build / LAST_USED).touch()
        link_tmp = self.root / f".{PREFIX}{version}.{token}.link"
        link_tmp.symlink_to(build.relative_to(self.root))
        link_tmp.replace(self.root / f"{PREFIX}{version}")
        _fsync_dir(self.root)

    def _clear_leftovers(self, version: str) -> None:
        """Remove what an interrupted attempt at ``version`` left (caller holds its lock)."""
        published = self.root / f"{PREFIX}{version}"
        if published.is_symlink():
            if self._ready_target(version) is None:
                target = published.resolve()
                published.unlink()
                if target.parent == (self.root / BUILDS_DIR).resolve():
                    _remove_tree(target)
        elif published.exists():
            # Not ours (no symlink): a directory cannot be published over; remove it.
            _remove_tree(published)
        current = self._ready_target(version)
        for entry in self._build_dirs():
            if _build_version(entry.name) == version and entry.resolve() != current:
                _remove_tree(entry)
        for entry in self._stale_links():
            if entry.name.startswith(f".{PREFIX}{version}."):
                entry.unlink(missing_ok=True)

    def _build_dirs(self) -> list[Path]:
        try:
            return [Path(e.path) for e in os.scandir(self.root / BUILDS_DIR)]
        except OSError:
            return []

    def _stale_links(self) -> list[Path]:
        try:
            return [
                Path(e.path)
                for e in os.scandir(self.root)
                if e.name.startswith(f".{PREFIX}") and e.name.endswith(".link")
            ]
        except OSError:
            return []

    # -- leases --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(
        self,
        version: str,
        *,
        on_line: LineSink = _ignore,
        on_process: Callable[[int], None] | None = None,
    ) -> AsyncIterator[ProvisionedToolchain]:
        """Hold ``version`` for a job: provisioned if needed, never swept while held."""
        version = check_version(version)
        lease = FileLock(self._use_path(version))
        await lease.acquire(
            shared=True,
            on_wait=lambda: on_line(f"[meshd] waiting for a sweep of esphome {version}"),
        )
        self._leases[version] += 1
        try:
            toolchain = await self.ensure(version, on_line=on_line, on_process=on_process)
            self._touch(version)
            yield toolchain
        finally:
            self._leases[version] -= 1
            if self._leases[version] <= 0:
                del self._leases[version]
            with contextlib.suppress(OSError):
                self._touch(version)
            lease.release()

    def _touch(self, version: str) -> None:
        target = self._ready_target(version)
        if target is not None:
            (target / LAST_USED).touch()

    def _last_used(self, target: Path) -> float:
        for name in (LAST_USED, READY_MARKER):
            with contextlib.suppress(OSError):
                return (target / name).stat().st_mtime
        return 0.0

    # -- sweep ---------------------------------------------------------------------------

    async def sweep(self, policy: SweepPolicy, *, now: float | None = None) -> SweepReport:
        """Remove toolchains unused too long or over the disk budget; never one in use."""
        report = await asyncio.to_thread(self._sweep, policy, self._clock() if now is None else now)
        if report.removed:
            self._changed()
        return report

    def _sweep(self, policy: SweepPolicy, now: float) -> SweepReport:
        installed: list[Installed] = []
        for version in self._published():
            target = self._ready_target(version)
            if target is None:
                continue  # incomplete: cleared with the leftovers below
            in_use = self._leases[version] > 0 or not self._probe_free(version)
            installed.append(
                Installed(version, self._last_used(target), disk_usage(target), in_use)
            )
        decisions = []
        for decision in plan_sweep(installed, policy, now):
            if decision.remove:
                refused = self._remove(decision.version)
                if refused is not None:
                    decision = SweepDecision(decision.version, False, refused, decision.size)
                else:
                    log.info("swept esphome %s: %s", decision.version, decision.reason)
            decisions.append(decision)
        return SweepReport(tuple(decisions), tuple(self._sweep_leftovers()))

    def _probe_free(self, version: str) -> bool:
        """Nobody holds a lease on ``version`` right now (in any process)."""
        probe = FileLock(self._use_path(version))
        free = probe.try_acquire()
        probe.release()
        return free

    def _remove(self, version: str) -> str | None:
        """Unpublish and delete ``version``; the reason it was kept if that is unsafe."""
        with FileLock(self._lock_path(version)) as provision:
            if not provision.try_acquire():
                return "being provisioned"
            with FileLock(self._use_path(version)) as use:
                if not use.try_acquire() or self._leases[version] > 0:
                    return "in use"
                published = self.root / f"{PREFIX}{version}"
                target = published.resolve()
                is_link = published.is_symlink()
                _remove_tree(published)  # unpublish first: readers then see it gone
                _fsync_dir(self.root)
                if is_link and target.parent == (self.root / BUILDS_DIR).resolve():
                    _remove_tree(target)
        return None

    def _sweep_leftovers(self) -> list[str]:
        """Remove build dirs and links no published toolchain uses (nobody building)."""
        removed = []
        current = {t for v in self._published() if (t := self._ready_target(v)) is not None}
        for entry in self._build_dirs():
            version = _build_version(entry.name)
            if entry.resolve() in current:
                continue
            if version is None or self._unlocked(version, partial(_remove_tree, entry)):
                if version is None:
                    _remove_tree(entry)  # not a name meshd makes: nobody is building it
                removed.append(entry.name)
        for version in self._published():
            published = self.root / f"{PREFIX}{version}"
            if self._ready_target(version) is None and self._unlocked(
                version, partial(_remove_tree, published)
            ):
                removed.append(published.name)
        for link in self._stale_links():
            version = _build_version(link.name[1 : -len(".link")])
            if version is None:
                link.unlink(missing_ok=True)
            else:
                self._unlocked(version, partial(link.unlink, missing_ok=True))
        return removed

    def _unlocked(self, version: str, action: Callable[[], None]) -> bool:
        """Run ``action`` under ``version``'s provisioning lock if it is free right now."""
        with FileLock(self._lock_path(version)) as lock:
            if not lock.try_acquire():
                return False  # a provisioning of that version is under way
            action()
        return True


# -- helpers ---------------------------------------------------------------------------


def hermetic_environ(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without what would make a venv's python or pip look outside the venv.

    Use it for every command run with a provisioned toolchain, not only for pip: a
    daemon started with PYTHONPATH would otherwise hand its own packages to esphome.
    """
    return {k: v for k, v in base.items() if k not in _LEAKY_ENV}


async def _settle(func: Callable[..., object], *args: object) -> None:
    """Run ``func`` in a thread and wait for it to finish even if cancelled meanwhile.

    Leftover removal and publishing run under the provisioning locks; a cancel must not
    release the locks while the thread still changes the directory (then re-raised).
    """
    future = asyncio.ensure_future(asyncio.to_thread(func, *args))
    cancelled = False
    while True:
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError


def _build_version(name: str) -> str | None:
    """``esphome-2026.6.4.3f9a1c2e`` → ``2026.6.4``; None for anything else."""
    if not name.startswith(PREFIX):
        return None
    version, _, token = name[len(PREFIX) :].rpartition(".")
    if not token or not version or not is_version(version):
        return None
    return version


def _read_marker(target: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((target / READY_MARKER).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _explain(tail: Sequence[str]) -> str:
    """pip's ``ERROR:`` lines (what it says went wrong), else its last few lines."""
    errors = [line.strip() for line in tail if line.lstrip().lower().startswith("error")]
    chosen = errors or [line.strip() for line in tail[-_TAIL_FOR_ERRORS:] if line.strip()]
    return " / ".join(chosen) if chosen else "no output"


def _sort_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"[0-9]+", version))


def _remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
