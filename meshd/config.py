"""Daemon settings: embedded defaults < TOML file < ``MESHD_*`` environment < flags.

One frozen :class:`Settings` object is built once at start and handed to the daemon;
nothing reads the environment or the config file after that, so a running daemon's
behaviour is fixed by what ``meshd serve`` logged at start.

Layers, lowest first:

1. embedded defaults (the field defaults of :class:`Settings`);
2. the TOML file: ``--config``/``MESHD_CONFIG``, else ``<data-dir>/meshd.toml`` or
   ``$CONFIGURATION_DIRECTORY/meshd.toml`` (systemd's ``/etc/meshd``) if one exists.
   Keys are the long option names (``-`` or ``_``); unknown keys are an error, so a
   typo does not silently fall back to a default;
3. ``MESHD_<KEY>`` environment variables (lists separated by commas or spaces;
   booleans ``1/0``, ``true/false``, ``yes/no``, ``on/off``);
4. command-line flags.

The data directory is resolved before the file is read (it locates the default file):
the flag, else ``MESHD_DATA_DIR``, else ``$STATE_DIRECTORY`` (set by systemd's
``StateDirectory=``), else ``~/.local/share/meshd``. An explicit config file may
also set ``data_dir``; it then applies unless a flag or ``MESHD_DATA_DIR`` says otherwise.

The mesh options (peer link, mDNS, peers, policies, heartbeat) are only stored here;
the mesh components read them from this object when they are wired into the daemon.

This module owns the default of every setting (the ``DEFAULT_*`` names): the engine,
the mesh and ``meshd serve --help`` import them rather than repeat a value. It imports
nothing of meshd, so every layer, the CLI included, may import it
(tests/unit/test_layering.py).
"""

from __future__ import annotations

import os
import shlex
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from meshd import address
from meshd.address import HostPort as HostPort  # re-exported: Settings fields use it
from meshd.release_version import ToolchainVersionError, check_version

# Re-exported: the settings carry the policy, and the CLI reads its choices from here.
from meshd.version_policy import VersionPolicy as VersionPolicy

ENV_PREFIX = "MESHD_"
CONFIG_FILENAME = "meshd.toml"

# 6052 is ESPHome's dashboard and 6053 its native API; 6055/6056 stay clear of both.
DEFAULT_API_PORT = 6055
DEFAULT_PEER_PORT = 6056
DEFAULT_UPLOAD_SLOTS = 4
# Long enough that a busy Pi on Wi-Fi does not flap, short enough that a receiver that
# vanished is noticed within half a minute (the mesh declares a peer dead after three).
DEFAULT_HEARTBEAT = 10.0
# Armed uploads, kept builds and history: see meshd/jobs/armed.py, meshd/jobs/history.py
# and meshd/toolchain/archive.py for why these values.
DEFAULT_ARMED_UPLOAD_TTL = 7 * 86400.0
DEFAULT_KEPT_BUILDS = 3
DEFAULT_HISTORY_KEEP = 1000
DEFAULT_HISTORY_MAX_AGE = 30 * 86400.0
# How long a flashed device has to come back with its new build (meshd/fleet/verify.py):
# an ESP32 reboots and rejoins Wi-Fi in 5-30 s; a slow DHCP or mesh network needs more.
DEFAULT_VERIFY_TIMEOUT = 120.0
# The compile cache's budget per cache directory (meshd/toolchain/ccache.py): the
# objects of a few ESP32 framework versions fit.
DEFAULT_COMPILE_CACHE_SIZE = 5 * 1024**3
# Provisioned toolchains (docs/TOOLCHAIN.md, "Toolchains by esphome version"): a venv of
# esphome 2026.6.x is ~250 MB; these match meshd/toolchain/versions/sweep.py.
DEFAULT_TOOLCHAIN_MAX_IDLE = 30 * 86400.0
DEFAULT_TOOLCHAIN_DISK_BUDGET = 4 * 1024**3


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting and its source."""


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """:func:`meshd.address.parse_host_port`, failing with a ``ConfigError``."""
    try:
        return address.parse_host_port(text, default_port=default_port)
    except address.AddressError as exc:
        raise ConfigError(str(exc)) from None


DEFAULT_API = HostPort("127.0.0.1", DEFAULT_API_PORT)
"""Loopback: the API can flash every device this node reaches (it is authenticated too)."""
DEFAULT_PEER_LISTEN = HostPort("0.0.0.0", DEFAULT_PEER_PORT)  # noqa: S104 - the LAN is the point
DEFAULT_VERSION_POLICY = VersionPolicy.PROVISION


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$MESHD_DATA_DIR``, else systemd's ``$STATE_DIRECTORY``, else ``~/.local/share/meshd``."""
    environ = os.environ if env is None else env
    if environ.get("MESHD_DATA_DIR"):
        return Path(environ["MESHD_DATA_DIR"]).expanduser()
    state = environ.get("STATE_DIRECTORY")
    if state:
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(state.split(":")[0])
    return Path.home() / ".local" / "share" / "meshd"


@dataclass(frozen=True)
class Settings:
    """Everything ``meshd serve`` is configured with."""

    data_dir: Path
    api: HostPort = DEFAULT_API
    peer_listen: HostPort = DEFAULT_PEER_LISTEN
    mdns: bool = True
    """Advertise and browse with mDNS; off, only static peers and inbound sessions."""
    mdns_interfaces: tuple[str, ...] = ()
    """Empty: all interfaces."""
    name: str = field(default_factory=socket.gethostname)
    esphome: tuple[str, ...] = ()
    """Empty: find it (beside meshd's interpreter, then PATH; ``meshd.toolchain.locate_tool``)."""
    upload_slots: int = DEFAULT_UPLOAD_SLOTS
    receiver: bool = True
    offload: bool = True
    peers: tuple[HostPort, ...] = ()
    version_policy: VersionPolicy = DEFAULT_VERSION_POLICY
    include_local: bool = True
    heartbeat: float = DEFAULT_HEARTBEAT
    armed_upload_ttl: float = DEFAULT_ARMED_UPLOAD_TTL
    """Seconds an armed upload waits for its device before it fails."""
    kept_builds: int = DEFAULT_KEPT_BUILDS
    """Builds kept per configuration for flashing later (0: none)."""
    history_keep: int = DEFAULT_HISTORY_KEEP
    """Finished jobs kept (with their logs); older ones are pruned."""
    history_max_age: float = DEFAULT_HISTORY_MAX_AGE
    """Seconds after which a finished job is pruned, whatever the count."""
    config_dirs: tuple[Path, ...] = ()
    """Directories of ESPHome configurations: the fleet ``meshd devices`` lists; when
    set, jobs may only name configurations inside them."""
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT
    """Seconds a flashed device has to come back running the new build."""
    compile_cache: bool = True
    """Put ccache under every compile (``<data>/ccache``); off: compile without it."""
    compile_cache_size: int = DEFAULT_COMPILE_CACHE_SIZE
    """Bytes each compile cache directory may hold (least recently used objects go)."""
    unsafe_no_sandbox: bool = False
    """Run peers' builds unsandboxed (docs/SECURITY.md); warned about at every start."""
    sandbox_network: bool = True
    """Peers' sandboxed builds may use the network (PlatformIO downloads libraries)."""
    peer_max_in_flight: int = 256 * 1024 * 1024
    """Bytes of blobs one offloader may have arriving at once."""
    peer_max_stored: int = 2 * 1024 * 1024 * 1024
    """Bytes one offloader's content store on this receiver may hold."""
    peer_max_blobs: int = 20_000
    """Blobs one offloader's content store on this receiver may hold."""
    min_free: int = 2 * 1024 * 1024 * 1024
    """Bytes free under the data dir below which compiles from peers are declined."""
    toolchain_provision: bool = True
    """Provision (pip) an esphome version a job or an offloader asks for."""
    toolchain_index_url: str | None = None
    """pip's index for provisioning; None: pip's default (or none with find-links only)."""
    toolchain_find_links: tuple[str, ...] = ()
    """Wheelhouse directories or URLs for pip; alone, an offline (``--no-index``) install."""
    toolchain_max_idle: float = DEFAULT_TOOLCHAIN_MAX_IDLE
    """Seconds unused after which a provisioned toolchain is swept."""
    toolchain_disk_budget: int = DEFAULT_TOOLCHAIN_DISK_BUDGET
    """Bytes all provisioned toolchains may take; the least recently used go first."""
    esphome_pins: tuple[tuple[str, str], ...] = ()
    """Per-configuration esphome versions (configuration path, version): a compile or
    install of that configuration without its own ``esphome_version`` builds with it.
    A relative path is taken inside each of ``config_dirs``."""
    metrics_listen: HostPort | None = None
    """A second, unauthenticated listener serving only ``/metrics`` (for Prometheus)."""
    config_file: Path | None = None
    """The TOML file that was read, if any (for the start-up log)."""

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly view for logs and ``/api/v1/status``."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, tuple):
                value = [str(v) for v in value]
            elif value is not None and not isinstance(value, bool | int | float):
                value = str(value)
            out[item.name] = value
        return out


# -- value parsers: one per setting, shared by the TOML, environment and flag layers ----


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{value!r} is not a boolean (use true/false)")


def _list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [part for part in str(value).replace(",", " ").split() if part]


def _path_list(value: Any) -> list[str]:
    """Paths: a TOML list as is; in the environment separated by ``os.pathsep`` (a
    directory name may hold spaces or commas)."""
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [part for part in str(value).split(os.pathsep) if part]


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise ConfigError(f"{value!r} must be at least 1")
    return number


def _positive_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a number") from None
    if number <= 0:
        raise ConfigError(f"{value!r} must be greater than 0")
    return number


def _count(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{value!r} is not a whole number") from None
    if number < 0:
        raise ConfigError(f"{value!r} must be 0 or more")
    return number


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _size(value: Any) -> int:
    """Bytes: a number, or a number with a binary unit (``500M``, ``5G``, ``5GiB``)."""
    text = str(value).strip().lower().removesuffix("b").removesuffix("i")
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        raise ConfigError(f"{value!r} is not a size (e.g. 500M, 5G)") from None
    if not 1024**2 <= number < float("inf"):
        raise ConfigError(f"{value!r} must be at least 1M")
    return int(number)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(value: Any) -> float:
    """Seconds: a number, or a number with a unit (``90s``, ``30m``, ``12h``, ``7d``, ``2w``)."""
    text = str(value).strip().lower()
    scale = 1
    if text and text[-1] in _DURATION_UNITS:
        scale = _DURATION_UNITS[text[-1]]
        text = text[:-1]
    try:
        seconds = float(text) * scale
    except ValueError:
        raise ConfigError(f"{value!r} is not a duration (e.g. 3600, 90m, 12h, 7d)") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"{value!r} must be a positive duration")
    return seconds


def _command(value: Any) -> tuple[str, ...]:
    """A command as an argv prefix: a TOML list as is, a string shell-split."""
    argv = [str(v) for v in value] if isinstance(value, list | tuple) else shlex.split(str(value))
    if not argv:
        raise ConfigError("the esphome command must not be empty")
    return tuple(argv)


def _name(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ConfigError("the node name must not be empty")
    return text


def _url(value: Any) -> str:
    text = str(value).strip()
    if not text.startswith(("http://", "https://", "file://")):
        raise ConfigError(f"{value!r} is not an http(s):// or file:// URL")
    return text


def _pins(value: Any) -> tuple[tuple[str, str], ...]:
    """A TOML table ``{"kitchen.yaml" = "2026.6.4"}``; in the environment or on the
    command line ``kitchen.yaml=2026.6.4``, comma-separated."""
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    else:
        items = []
        for part in _list(value):
            path, sep, version = part.rpartition("=")
            if not sep or not path.strip():
                raise ConfigError(f"{part!r} is not CONFIGURATION=VERSION")
            items.append((path.strip(), version.strip()))
    pins: dict[str, str] = {}
    for path, version in items:
        if not path:
            raise ConfigError("a pin needs a configuration path")
        try:
            pins[path] = check_version(version)
        except ToolchainVersionError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return tuple(sorted(pins.items()))


def _policy(value: Any) -> VersionPolicy:
    try:
        return VersionPolicy(str(value))
    except ValueError:
        choices = ", ".join(p.value for p in VersionPolicy)
        raise ConfigError(f"{value!r} is not a version policy ({choices})") from None


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "data_dir": lambda v: Path(str(v)).expanduser(),
    "api": lambda v: parse_host_port(str(v), default_port=DEFAULT_API_PORT),
    "peer_listen": lambda v: parse_host_port(str(v), default_port=DEFAULT_PEER_PORT),
    "mdns": _bool,
    "mdns_interfaces": lambda v: tuple(_list(v)),
    "name": _name,
    "esphome": _command,
    "upload_slots": _positive_int,
    "receiver": _bool,
    "offload": _bool,
    "peers": lambda v: tuple(parse_host_port(p, default_port=DEFAULT_PEER_PORT) for p in _list(v)),
    "version_policy": _policy,
    "include_local": _bool,
    "heartbeat": _positive_float,
    "armed_upload_ttl": _duration,
    "kept_builds": _count,
    "history_keep": _count,
    "history_max_age": _duration,
    "compile_cache": _bool,
    "compile_cache_size": _size,
    "metrics_listen": lambda v: parse_host_port(str(v)),
    "config_dirs": lambda v: tuple(Path(p).expanduser().absolute() for p in _path_list(v)),
    "verify_timeout": _duration,
    "unsafe_no_sandbox": _bool,
    "sandbox_network": _bool,
    "peer_max_in_flight": _positive_int,
    "peer_max_stored": _positive_int,
    "peer_max_blobs": _positive_int,
    "min_free": _count,
    "toolchain_provision": _bool,
    "toolchain_index_url": _url,
    "toolchain_find_links": lambda v: tuple(_list(v)),
    "toolchain_max_idle": _duration,
    "toolchain_disk_budget": _size,
    "esphome_pins": _pins,
}

SETTING_NAMES = tuple(_PARSERS)


def _parse_layer(raw: Mapping[str, Any], source: str) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        parser = _PARSERS.get(key)
        if parser is None:
            known = ", ".join(SETTING_NAMES)
            raise ConfigError(f"{source}: unknown setting {key!r} (known: {known})")
        try:
            parsed[key] = parser(value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    return parsed


def env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``MESHD_<KEY>`` variables that name a setting; other ``MESHD_*`` are ignored
    (``MESHD_CONFIG``, and the client's ``MESHD_API_URL``/``MESHD_API_TOKEN``)."""
    raw = {
        key: env[ENV_PREFIX + key.upper()]
        for key in SETTING_NAMES
        if env.get(ENV_PREFIX + key.upper(), "") != ""
    }
    return _parse_layer(raw, "environment")


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse a TOML settings file; a ``[meshd]`` table or top-level keys both work."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    table = data.get("meshd", data)
    if not isinstance(table, dict):
        raise ConfigError(f"config file {path}: [meshd] must be a table")
    normalised = {key.replace("-", "_"): value for key, value in table.items()}
    return _parse_layer(normalised, str(path))


def _implicit_config_file(data_dir: Path, environ: Mapping[str, str]) -> Path | None:
    """``<data-dir>/meshd.toml``, else systemd's ``$CONFIGURATION_DIRECTORY/meshd.toml``."""
    candidates = [data_dir / CONFIG_FILENAME]
    if environ.get("CONFIGURATION_DIRECTORY"):
        first = environ["CONFIGURATION_DIRECTORY"].split(":")[0]
        candidates.append(Path(first) / CONFIG_FILENAME)
    return next((path for path in candidates if path.is_file()), None)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers. ``flags`` maps setting names to values given on the command line
    (``None`` means "not given"); ``config_file`` is ``--config``."""
    environ = dict(os.environ if env is None else env)
    given = {k: v for k, v in (flags or {}).items() if v is not None and v != ()}
    flag_values = _parse_layer(given, "command line")
    env_values = env_layer(environ)

    explicit = config_file or (
        Path(environ["MESHD_CONFIG"]).expanduser() if environ.get("MESHD_CONFIG") else None
    )
    data_dir = flag_values.get("data_dir") or env_values.get("data_dir")
    file_values: dict[str, Any] = {}
    used_file: Path | None = None
    if explicit is not None:
        file_values = read_config_file(explicit)
        used_file = explicit
    if data_dir is None:
        data_dir = file_values.get("data_dir") or default_data_dir(environ)
    if explicit is None:
        used_file = _implicit_config_file(data_dir, environ)
        if used_file is not None:
            file_values = read_config_file(used_file)
            # A file found by looking cannot move the data dir it was found through.
            file_values.pop("data_dir", None)

    merged: dict[str, Any] = {**file_values, **env_values, **flag_values}
    merged["data_dir"] = Path(data_dir).expanduser().absolute()
    settings = replace(Settings(data_dir=merged["data_dir"]), **merged, config_file=used_file)
    _check_pins_have_a_home(settings)
    return settings


def _check_pins_have_a_home(settings: Settings) -> None:
    """A relative pin is taken inside the configuration directories; with none it would
    silently pin nothing."""
    if settings.config_dirs:
        return
    for path, _version in settings.esphome_pins:
        if not Path(path).expanduser().is_absolute():
            raise ConfigError(
                f"esphome_pins: {path!r} is relative and no config_dirs are set to find it "
                "in (set config-dirs or give the absolute path)"
            )
