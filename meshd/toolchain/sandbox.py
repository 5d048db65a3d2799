"""Run one esphome process for a peer inside a bubblewrap sandbox.

An ESPHome configuration is code: ``external_components``, ``includes``, lambdas and
PlatformIO ``extra_scripts`` run as whoever runs esphome, already during
``esphome config``. A receiver must therefore give a peer's build only what a build
needs (docs/SECURITY.md). :class:`Sandbox` turns an esphome argv prefix into a
``bwrap ... -- prlimit ... -- esphome`` prefix, so it slots into :class:`Toolchain`
(``Sandbox.wrap``) and every runner keeps working unchanged.

What the sandboxed process sees (``Sandbox.argv``):

* a tmpfs root with, read-only: ``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin``
  links or directories), a short list of ``/etc`` files a compiler, git and Python's
  resolver read (:data:`ETC_ENTRIES`; no shadow, no ssh keys), the esphome
  installation (its venv and the Python prefix it was made from) and any
  ``readonly`` extras;
* writable: the job's work directory (one configuration of one offloader), that
  offloader's HOME and its private PlatformIO core dir (:class:`SandboxArea`);
* the shared PlatformIO core's installed ``packages/*`` and ``platforms/*``, each
  bound read-only *into* the private core dir: a build uses the toolchains this node
  already has but cannot change them for the node's own builds or other peers, and
  what it installs on top lands in its private core dir only;
* a private ``/tmp`` and ``/dev/shm`` (size-capped tmpfs), a new ``/proc`` of its own
  PID namespace (no other process, so no ``/proc/<daemon>/environ``), a minimal
  ``/dev``; the root itself (a tmpfs of mount points) and ``/dev`` are read-only;
* a new user, PID, IPC, UTS and cgroup namespace, no capabilities, no way to make
  further user namespaces (``--disable-userns``), no controlling terminal
  (``--new-session``), killed with the daemon (``--die-with-parent``), a cleared
  environment with only allow-listed variables;
* nothing else: no data dir (identity key, ``api.json`` with the API token,
  ``meshd.db``, trust, logs, the content store, other offloaders' trees), no host
  ``/tmp``, no home directories. A data dir that lies inside a read-only tree is
  masked by an empty tmpfs.

The network namespace is shared by default: PlatformIO downloads platforms and
libraries, esphome clones external components. A sandboxed build can therefore
connect to anything this host can, loopback included, and to abstract Unix sockets
(they belong to the network namespace: an X server's ``@/tmp/.X11-unix/X0``, say);
the control API is protected by its token (which the sandbox cannot read), the peer
port by the trust store, but other loopback-only services on the host are
reachable. ``network=False`` (``--unshare-net``) takes the network away for
receivers whose toolchains are provisioned.

Resource limits are rlimits set by ``prlimit`` inside the sandbox (processes,
address space per process, file size, open files, core dumps off, CPU seconds) and
the tmpfs sizes. Wall time is enforced inside too, by coreutils ``timeout`` (exit
status :data:`TIMEOUT_EXIT`, whatever runner started the sandbox), and
:func:`run_in_sandbox` turns that into ``SandboxTimeout`` (with its own deadline
as a backstop). ``RLIMIT_NPROC``
does not bind root (the kernel exempts uid 0), so a receiver that runs meshd as root
has no process cap: run meshd as an unprivileged user, as the systemd unit does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from meshd.toolchain.process import ProcessResult, run_process
from meshd.toolchain.tools import Toolchain

_LOGGER = logging.getLogger(__name__)

UNSAFE_FLAG: Final = "--unsafe-no-sandbox"
"""The operator's explicit opt-out (setting ``unsafe_no_sandbox``); see :func:`receiver_sandbox`."""

# Debian's package; named in every error so the fix is one command away.
BWRAP_PACKAGE: Final = "bubblewrap"

# /etc entries a build reads: the dynamic linker's cache, name resolution, TLS roots
# (git, curl; the certificates only, never /etc/ssl/private, whose keys a root
# daemon's sandbox could otherwise read as their owner), the compiler alternatives
# (cc -> gcc), time zone, user names (git and Python's getpass look the uid up).
# Everything else in /etc (shadow, ssh host keys, meshd's own config) stays out.
ETC_ENTRIES: Final = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "group",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "protocols",
    "resolv.conf",
    "pki/ca-trust/extracted",
    "pki/tls/certs",
    "services",
    "ssl/certs",
    "ssl/openssl.cnf",
)

# Top-level system directories; on a merged-/usr system these are symlinks into /usr.
_SYSTEM_DIRS: Final = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")

# Environment a sandboxed esphome may inherit: locale, Python's I/O settings, the
# PlatformIO and ESPHome switches. Directory overrides are dropped on purpose: the
# sandbox decides where PlatformIO's core and ESPHome's data dir are.
_ENV_ALLOWED: Final = re.compile(
    r"^(PATH|LANG|LANGUAGE|LC_[A-Z]+|TZ|TERM|NO_COLOR|FORCE_COLOR|SOURCE_DATE_EPOCH"
    r"|PYTHONUNBUFFERED|PYTHONIOENCODING|PYTHONDONTWRITEBYTECODE"
    r"|PLATFORMIO_[A-Z0-9_]+|ESPHOME_[A-Z0-9_]+"
    # The compile cache (meshd/toolchain/ccache.py): its directory is one of the area's
    # ``cache_dirs``, so these name only places the build may write anyway.
    r"|CCACHE_[A-Z0-9_]+|MESHD_CCACHE)$"
)
_ENV_DROPPED: Final = frozenset(
    {
        "PLATFORMIO_CORE_DIR",
        "PLATFORMIO_PACKAGES_DIR",
        "PLATFORMIO_PLATFORMS_DIR",
        "PLATFORMIO_CACHE_DIR",
        "PLATFORMIO_BUILD_CACHE_DIR",
        "PLATFORMIO_WORKSPACE_DIR",
        "PLATFORMIO_GLOBALLIB_DIR",
        "ESPHOME_DATA_DIR",
    }
)

# The probe run at detection: a sandbox as real as a build's, running /bin/true.
PROBE_TIMEOUT: Final = 20.0

GIB: Final = 1024**3
# coreutils timeout's exit status when the command ran out of time.
TIMEOUT_EXIT: Final = 124
# After the wall time, SIGTERM; this long later, SIGKILL.
TIMEOUT_KILL_AFTER: Final = 10


class SandboxUnavailable(Exception):
    """bubblewrap is missing or cannot create namespaces here; the message says how to fix it."""


class SandboxTimeout(Exception):
    """A sandboxed process ran past its wall-time limit and was killed."""


@dataclass(frozen=True)
class ResourceLimits:
    """Per-process rlimits (hard = soft, so the build cannot raise them) and wall time.

    The defaults fit an ESP32 build on a Pi-class receiver with room to spare: the
    Xtensa linker peaks at ~1 GiB of address space, a firmware ELF at ~30 MiB,
    PlatformIO runs one compiler per core.
    """

    processes: int | None = 512
    """RLIMIT_NPROC: processes+threads of the sandbox's uid (not enforced for root)."""
    address_space: int | None = 4 * GIB
    """RLIMIT_AS per process: a runaway allocation fails instead of swapping the host."""
    file_size: int | None = 2 * GIB
    """RLIMIT_FSIZE: no single file larger (writes past it fail with EFBIG)."""
    open_files: int | None = 4096
    cpu_seconds: int | None = None
    """RLIMIT_CPU per process; None: only the wall time bounds a build."""
    tmp_size: int = 1 * GIB
    """Size of the private /tmp tmpfs (it is RAM)."""
    shm_size: int = 256 * 1024**2
    """Size of /dev/shm (multiprocessing's semaphores and shared memory)."""
    wall_time: float | None = 3600.0
    """Seconds a sandboxed command may run in total (see :func:`run_in_sandbox`)."""

    def prlimit_argv(self, prlimit: str) -> list[str]:
        argv = [prlimit, "--core=0"]
        for option, value in (
            ("nproc", self.processes),
            ("as", self.address_space),
            ("fsize", self.file_size),
            ("nofile", self.open_files),
            ("cpu", self.cpu_seconds),
        ):
            if value is not None:
                argv.append(f"--{option}={value}:{value}")
        return [*argv, "--"]


@dataclass(frozen=True)
class SandboxArea:
    """The writable places of one sandboxed run: one configuration of one offloader.

    ``workdir`` is the configuration's work tree (YAML, includes, ``.esphome``); the
    ``home`` and ``pio_core`` belong to the offloader and are shared by its
    configurations, never by another offloader. ``shared_pio_core`` is the node's
    own PlatformIO core dir, whose installed packages and platforms are lent
    read-only.
    """

    workdir: Path
    home: Path
    pio_core: Path
    shared_pio_core: Path | None = None
    cache_dirs: tuple[Path, ...] = ()
    """Extra writable places: the compile cache of this area's offloader
    (``<data>/ccache/peers/<off16>``, meshd/toolchain/ccache.py); never another's."""
    extra_writable: tuple[Path, ...] = ()
    """More places the build may write, each bound at its own path (e.g. a compile
    cache kept for this offloader); created 0700 like the others, and refused like
    them if one contains the data dir."""

    @classmethod
    def for_offloader(
        cls,
        workdir: Path,
        offloader_root: Path,
        shared_pio_core: Path | None = None,
        cache_dir: Path | None = None,
        extra_writable: tuple[Path, ...] = (),
    ) -> SandboxArea:
        """The layout meshd uses: ``offloader_root/{home,platformio}`` next to the tree,
        and the offloader's compile cache (``CompileCaches.for_offloader``) if given."""
        return cls(
            workdir=workdir,
            home=offloader_root / "home",
            pio_core=offloader_root / "platformio",
            shared_pio_core=shared_pio_core,
            cache_dirs=() if cache_dir is None else (cache_dir,),
            extra_writable=extra_writable,
        )

    def writable(self) -> tuple[Path, ...]:
        return (self.workdir, self.home, self.pio_core, *self.cache_dirs, *self.extra_writable)

    def lent(self) -> list[tuple[Path, Path]]:
        """(shared source, private mount point) for every installed shared package/platform."""
        pairs: list[tuple[Path, Path]] = []
        if self.shared_pio_core is None:
            return pairs
        for kind in ("packages", "platforms"):
            source_dir = self.shared_pio_core / kind
            if not source_dir.is_dir():
                continue
            for entry in sorted(source_dir.iterdir()):
                if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
                    pairs.append((entry, self.pio_core / kind / entry.name))
        return pairs

    def prepare(self) -> None:
        """Create the writable directories 0700 and tidy mount points left from lent entries.

        bwrap creates the mount point of a lent package as an empty directory in the
        private core dir; when the shared package is gone, an empty directory would
        look like a broken package to PlatformIO, so empty ones are removed (rmdir
        never deletes content).
        """
        for path in self.writable():
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            path.chmod(0o700)
        lent = {mount for _, mount in self.lent()}
        for kind in ("packages", "platforms"):
            folder = self.pio_core / kind
            # A build may have replaced the folder with a symlink (the core dir is
            # writable to it): the daemon must not follow it anywhere.
            if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
                folder.unlink()
            folder.mkdir(exist_ok=True, mode=0o700)
            for entry in folder.iterdir():
                if entry not in lent and entry.is_dir() and not entry.is_symlink():
                    with contextlib.suppress(OSError):
                        entry.rmdir()


@dataclass(frozen=True)
class BwrapInfo:
    """What detection found: the program, its version and the optional flags it has."""

    path: str
    version: str
    disable_userns: bool
    tmpfs_size: bool


def _flag_supported(help_text: str, flag: str) -> bool:
    return re.search(rf"(^|\s){re.escape(flag)}(\s|$)", help_text, re.MULTILINE) is not None


def find_bwrap(program: str | None = None) -> BwrapInfo:
    """Locate bwrap and read its version and flags; ``SandboxUnavailable`` if absent."""
    path = shutil.which(program or "bwrap")
    if path is None:
        raise SandboxUnavailable(
            f"bubblewrap ({program or 'bwrap'}) is not installed, so builds for peers cannot "
            f"be sandboxed: install it (Debian: apt install {BWRAP_PACKAGE}), or start meshd "
            f"with {UNSAFE_FLAG} to run peers' builds unsandboxed as this user (not recommended)"
        )
    try:
        version = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        usage = subprocess.run(
            [path, "--help"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run {path}: {exc}") from exc
    help_text = usage.stdout + usage.stderr
    return BwrapInfo(
        path=path,
        version=version.stdout.strip().removeprefix("bubblewrap ") or "unknown",
        disable_userns=_flag_supported(help_text, "--disable-userns"),
        tmpfs_size=_flag_supported(help_text, "--size"),
    )


def python_prefixes(executable: Path) -> set[Path]:
    """The directories a Python program needs: its venv and the prefix the venv came from.

    ``executable`` is the interpreter or a console script (its shebang names the
    interpreter). Read from ``pyvenv.cfg`` and symlinks, nothing is run.
    """
    found: set[Path] = set()
    interpreter = executable
    with contextlib.suppress(OSError):
        with executable.open("rb") as handle:
            first = handle.readline(512)
        if first.startswith(b"#!"):
            parts = first[2:].decode("utf-8", "replace").split()
            if parts and parts[0].startswith("/"):
                interpreter = Path(parts[0])
    for candidate in {interpreter, executable}:
        venv = candidate.parent.parent
        config = venv / "pyvenv.cfg"
        if config.is_file():
            found.add(venv.resolve())
            with contextlib.suppress(OSError):
                for line in config.read_text(encoding="utf-8").splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() == "home" and value.strip():
                        found.add(Path(value.strip()).resolve().parent)
        resolved = candidate.resolve()
        if resolved.name.startswith("python"):
            found.add(resolved.parent.parent)
    return found


def command_readonly_paths(command: Sequence[str]) -> set[Path]:
    """What the sandbox must lend read-only so ``command`` (an argv prefix) can start.

    The program (found on PATH) with its Python installation, and the directory of
    every other absolute path in the prefix (a script run by an interpreter).
    """
    paths: set[Path] = set()
    if not command:
        return paths
    program = shutil.which(command[0])
    if program is not None:
        paths.add(Path(program).resolve().parent)
        paths |= python_prefixes(Path(program))
    for arg in command[1:]:
        if arg.startswith("/") and Path(arg).exists():
            paths.add(Path(arg).resolve().parent)
    return paths


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


# Values reach the sandbox as ``--setenv`` arguments, which anyone who may list
# meshd's processes can read (/proc/PID/cmdline): nothing that looks like a secret
# (PLATFORMIO_AUTH_TOKEN, say) is passed on.
_ENV_SECRET: Final = re.compile(r"TOKEN|SECRET|PASSW|KEY|AUTH|CREDENTIAL|COOKIE", re.IGNORECASE)


def _sandbox_env(env: Mapping[str, str], area: SandboxArea) -> dict[str, str]:
    """The allow-listed part of ``env`` plus the sandbox's own HOME, TMPDIR and core dir."""
    kept = {
        key: value
        for key, value in env.items()
        if _ENV_ALLOWED.match(key) and key not in _ENV_DROPPED and not _ENV_SECRET.search(key)
    }
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    kept.update(
        {
            "HOME": str(area.home),
            "TMPDIR": "/tmp",  # noqa: S108 - the sandbox's own tmpfs
            "PLATFORMIO_CORE_DIR": str(area.pio_core),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return kept


@dataclass(frozen=True)
class Sandbox:
    """How to sandbox one esphome process; immutable, one per receiver.

    ``readonly`` are the extra trees lent read-only (the esphome installation is
    found from the command itself); ``hidden`` are paths that must never be visible
    (the data dir): they are refused as lent trees and masked if a lent tree holds them.
    """

    bwrap: BwrapInfo
    hidden: tuple[Path, ...]
    readonly: tuple[Path, ...] = ()
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    network: bool = True
    prlimit: str = "/usr/bin/prlimit"
    timeout: str = "/usr/bin/timeout"
    hostname: str = "meshd-sandbox"

    def _lent_trees(self, command: Sequence[str]) -> list[Path]:
        trees = sorted({*self.readonly, *command_readonly_paths(command)})
        system = [Path("/usr"), *(Path("/", d) for d in _SYSTEM_DIRS)]
        out: list[Path] = []
        for tree in trees:
            tree = tree.resolve()
            if any(tree == hidden.resolve() for hidden in self.hidden):
                raise SandboxUnavailable(
                    f"{tree} would be lent to the sandbox but is meshd's data directory"
                )
            if tree == Path("/"):
                raise SandboxUnavailable("refusing to lend the whole file system to a sandbox")
            if any(_within(tree, s) for s in system) or any(_within(tree, t) for t in out):
                continue
            out.append(tree)
        return out

    def argv(self, command: Sequence[str], area: SandboxArea, env: Mapping[str, str]) -> list[str]:
        """The full argv: bwrap with every mount and namespace, prlimit, then ``command``."""
        hidden = [h.resolve() for h in self.hidden]
        for path in area.writable():
            resolved = path.resolve()
            if any(_within(h, resolved) for h in hidden):
                raise SandboxUnavailable(f"writable sandbox path {resolved} contains the data dir")
        argv: list[str] = [self.bwrap.path]
        # Namespaces and process attributes.
        argv += ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--hostname", self.hostname]
        if not self.network:
            argv.append("--unshare-net")
        if self.bwrap.disable_userns:
            argv.append("--disable-userns")
        argv += ["--cap-drop", "ALL", "--die-with-parent", "--new-session"]
        # A root of nothing: the system, read-only.
        argv += ["--ro-bind", "/usr", "/usr"]
        for name in _SYSTEM_DIRS:
            path = Path("/", name)
            if path.is_symlink():
                argv += ["--symlink", str(path.readlink()), str(path)]
            elif path.is_dir():
                argv += ["--ro-bind", str(path), str(path)]
        for name in ETC_ENTRIES:
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        argv += ["--proc", "/proc", "--dev", "/dev"]
        # tmpfs is RAM: each one a build may write gets a size cap.
        argv += [*self._size(self.limits.shm_size), "--tmpfs", "/dev/shm"]  # noqa: S108
        argv += [*self._size(self.limits.tmp_size), "--tmpfs", "/tmp"]  # noqa: S108 - its own
        argv += ["--symlink", "/tmp", "/var/tmp"]  # noqa: S108
        lent = self._lent_trees(command)
        for tree in lent:
            argv += ["--ro-bind", str(tree), str(tree)]
        # A data dir inside a lent tree (say ~/.local with pip --user) disappears.
        for path in hidden:
            if any(_within(path, tree) for tree in lent) or _within(path, Path("/usr")):
                argv += ["--tmpfs", str(path)]
        # The writable places, then the shared toolchains lent into the private core.
        for place in area.writable():
            real = str(place.resolve())
            argv += ["--bind", real, real]
        for source, mount in area.lent():
            argv += ["--ro-bind", str(source.resolve()), str(mount.resolve())]
        # The root (a tmpfs holding the mount points) and /dev take no writes: a build
        # writes only where it was given a place.
        argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
        argv += ["--chdir", str(area.workdir.resolve()), "--clearenv"]
        for key, value in sorted(_sandbox_env(env, area).items()):
            argv += ["--setenv", key, value]
        argv.append("--")
        if self.limits.wall_time is not None:
            wall = f"{self.limits.wall_time:g}"
            argv += [self.timeout, f"--kill-after={TIMEOUT_KILL_AFTER}", wall]
        argv += [*self.limits.prlimit_argv(self.prlimit), *command]
        return argv

    def _size(self, size: int) -> list[str]:
        return ["--size", str(size)] if self.bwrap.tmpfs_size else []

    def wrap(self, toolchain: Toolchain, area: SandboxArea) -> Toolchain:
        """``toolchain`` with its esphome command run in this sandbox for ``area``."""
        command = self.argv(toolchain.esphome, area, toolchain.environ())
        return dataclasses.replace(toolchain, esphome=tuple(command), env={})


def detect(
    hidden: Iterable[Path],
    *,
    program: str | None = None,
    readonly: Iterable[Path] = (),
    limits: ResourceLimits | None = None,
    network: bool = True,
    scratch: Path | None = None,
) -> Sandbox:
    """A working :class:`Sandbox`, proven by running ``/bin/true`` in one like a build's.

    Raises ``SandboxUnavailable`` with the reason when bwrap is missing or cannot
    create its namespaces (user namespaces disabled by sysctl, a container without
    them, systemd's ``RestrictNamespaces=``). ``scratch`` is where the probe's area
    lives (a temporary directory by default). Blocking: call it in a thread.
    """
    info = find_bwrap(program)
    prlimit = shutil.which("prlimit") or "/usr/bin/prlimit"
    timeout = shutil.which("timeout") or "/usr/bin/timeout"
    sandbox = Sandbox(
        bwrap=info,
        hidden=tuple(Path(h) for h in hidden),
        readonly=tuple(Path(r) for r in readonly),
        limits=limits or ResourceLimits(),
        network=network,
        prlimit=prlimit,
        timeout=timeout,
    )
    with tempfile.TemporaryDirectory(prefix="meshd-sandbox-probe-", dir=scratch) as tmp:
        root = Path(tmp)
        area = SandboxArea(root / "work", root / "home", root / "platformio")
        area.prepare()
        argv = sandbox.argv(["/bin/true"], area, {"PATH": "/usr/bin:/bin"})
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxUnavailable(f"cannot run bubblewrap ({info.path}): {exc}") from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox here: {detail}. User namespaces may be "
            "disabled (sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces), "
            "or the service forbids them (systemd RestrictNamespaces=); fix that, or start "
            f"meshd with {UNSAFE_FLAG} to run peers' builds unsandboxed (not recommended)"
        )
    _LOGGER.info(
        "build sandbox: bubblewrap %s (%s), network %s",
        info.version,
        info.path,
        "shared" if network else "none",
    )
    return sandbox


UNSAFE_WARNING: Final = (
    f"{UNSAFE_FLAG}: builds for peers run UNSANDBOXED as this user. Any offloader "
    "trusted to send work can run code here and read this node's identity key, API "
    "token, database and other offloaders' configurations (docs/SECURITY.md)"
)


def receiver_sandbox(
    hidden: Iterable[Path],
    *,
    unsafe_no_sandbox: bool,
    program: str | None = None,
    readonly: Iterable[Path] = (),
    limits: ResourceLimits | None = None,
    network: bool = True,
) -> Sandbox | None:
    """The sandbox a receiver builds in, or None when the operator opted out.

    Call once per daemon start: the opt-out is logged as a warning every time, so it
    cannot be forgotten in a config file. Without the opt-out a missing or broken
    bubblewrap raises ``SandboxUnavailable`` (the receiver then refuses remote work).
    """
    if unsafe_no_sandbox:
        _LOGGER.warning(UNSAFE_WARNING)
        return None
    return detect(hidden, program=program, readonly=readonly, limits=limits, network=network)


async def run_in_sandbox(
    sandbox: Sandbox,
    area: SandboxArea,
    command: Sequence[str],
    *,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    kill_grace: float = 1.0,
) -> ProcessResult:
    """Run ``command`` sandboxed for ``area``; ``SandboxTimeout`` past the wall time.

    The process group is killed on timeout and on cancellation (bwrap's PID
    namespace takes every process inside with it).
    """
    argv = sandbox.argv(command, area, env)
    limit = sandbox.limits.wall_time
    backstop = None if limit is None else limit + TIMEOUT_KILL_AFTER + 5
    message = f"the sandboxed build ran longer than its {limit or 0:.0f} s wall-time limit"
    try:
        async with asyncio.timeout(backstop):
            result = await run_process(argv, on_line=on_line, env=dict(env), kill_grace=kill_grace)
    except TimeoutError:
        raise SandboxTimeout(message + " and was killed") from None
    if limit is not None and result.returncode == TIMEOUT_EXIT:
        raise SandboxTimeout(message + " and was stopped")
    return result
