"""Configuration directories as a fleet: which YAMLs, and what each says about its device.

Listing follows esphome's dashboard (``esphome/util.py``: ``list_yaml_files`` and
``filter_yaml_files``): the ``*.yaml``/``*.yml`` files directly in each directory,
without ``secrets.yaml``/``secrets.yml`` and hidden files.

Reading is *cheap* on purpose: ``yaml.safe_load`` with a loader that tolerates
ESPHome's tags, no esphome import, no subprocess, so 100 configurations are read in
well under a second on a Pi. It understands what decides a device's name and address:

* ``!include FILE`` and ``!include {file: F, vars: {...}}`` (relative to the including
  file), also as ``<<: !include`` merges; ``packages:`` whose entries are local
  includes or inline maps (merged under the main file, which wins);
* ``!secret KEY`` from ``secrets.yaml`` beside the including file, then beside the main
  one (``yaml_util.construct_secret``);
* ``$var``/``${var}`` substitutions (``substitutions:``, plus include ``vars``), the
  first phase of esphome's ``substitutions._expand_substitutions``; anything left
  over (a Jinja expression, an undefined variable) leaves the name unknown rather
  than guessed;
* every other tag (``!lambda``, ``!env_var``, ``!include_dir_*``, ``!extend``...)
  becomes an opaque placeholder.

What it reports is a hint for matching devices and resolving addresses. The config
hash, which must be exact, comes from esphome itself (``meshd.fleet.confighash``).
"""

from __future__ import annotations

import ipaddress
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from meshd.fleet.advert import normalise_name

YAML_SUFFIXES: Final = (".yaml", ".yml")
SECRETS_FILES: Final = ("secrets.yaml", "secrets.yml")

MAX_CONFIG_BYTES: Final = 1 << 20
"""Largest YAML read (1 MiB); real configurations are a few KiB."""

MAX_INCLUDE_DEPTH: Final = 8
"""Nested includes followed; deeper (or circular) ones become placeholders."""

MAX_INCLUDED_FILES: Final = 64
"""Files read for one configuration (includes, packages, secrets)."""

MAX_SUBSTITUTION_PASSES: Final = 10
"""Rounds of resolving substitutions that use other substitutions."""

DEFAULT_API_PORT: Final = 6053
DEFAULT_DOMAIN: Final = ".local"
NETWORK_KINDS: Final = ("wifi", "ethernet", "openthread")

# esphome/expression.py: SUBSTITUTION_VARIABLE_PROG (VALID_SUBSTITUTIONS_CHARACTERS).
_VARIABLE_RE: Final = re.compile(r"\$([A-Za-z0-9_]+|\{[A-Za-z0-9_]*\})")
_TRUE: Final = frozenset({"true", "yes", "on", "enable"})
_FALSE: Final = frozenset({"false", "no", "off", "disable"})


class ConfigReadError(Exception):
    """A configuration that cannot be read at all (missing, too big, not YAML)."""


@dataclass(frozen=True)
class Tagged:
    """An ESPHome tag the cheap reader does not evaluate (``!lambda``, ``!env_var``...)."""

    tag: str
    value: Any


@dataclass(frozen=True)
class NetworkInfo:
    """The network block that decides ``CORE.address`` (``esphome/core/__init__.py``)."""

    kind: str
    """``wifi``, ``ethernet`` or ``openthread``: the first present, as esphome checks."""
    use_address: str | None = None
    static_ip: str | None = None
    """``manual_ip.static_ip`` (wifi: also the single static IP of ``networks:``)."""
    domain: str = DEFAULT_DOMAIN


@dataclass(frozen=True)
class DeviceConfig:
    """What one YAML says about its device, as far as a cheap read can tell."""

    path: Path
    name: str | None = None
    friendly_name: str | None = None
    name_add_mac_suffix: bool = False
    network: NetworkInfo | None = None
    has_api: bool = False
    api_port: int = DEFAULT_API_PORT
    api_encryption_key: str | None = None
    has_ota: bool = False
    """``ota:`` has ``platform: esphome`` or ``platform: web_server`` (``has_ota()``)."""
    mdns_disabled: bool = False
    included: tuple[Path, ...] = ()
    """Files the cheap reader followed (includes, packages, secrets)."""
    error: str | None = None
    """Why the name (or the whole file) could not be read; None when all is well."""
    problems: tuple[str, ...] = field(default=())
    """Lesser issues (an include that could not be followed...)."""

    @property
    def address(self) -> str | None:
        """``CORE.address``: the network's ``use_address`` or the default esphome derives."""
        net = self.network
        if net is None or self.name is None:
            return None
        if net.use_address:
            return net.use_address
        if net.kind == "openthread":
            return f"{self.name}.local"
        if net.static_ip:
            return net.static_ip
        return self.name + net.domain


# -- the tolerant loader -------------------------------------------------------------------


class _Context:
    """Per-configuration state shared by every file the loader opens."""

    def __init__(self, main: Path) -> None:
        self.main = main
        self.files: list[Path] = []
        self.problems: list[str] = []
        self._secrets: dict[Path, Mapping[str, Any] | None] = {}
        self._stack: list[Path] = []

    def read(self, path: Path) -> str:
        if len(self.files) >= MAX_INCLUDED_FILES:
            raise ConfigReadError(f"more than {MAX_INCLUDED_FILES} included files")
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                # A FIFO or device would block or never end; esphome reads files only.
                raise ConfigReadError(f"{path} is not a regular file")
            size = st.st_size
            if size > MAX_CONFIG_BYTES:
                raise ConfigReadError(f"{path.name} is {size} bytes (limit {MAX_CONFIG_BYTES})")
            with path.open("rb") as handle:
                data = handle.read(MAX_CONFIG_BYTES + 1)
        except FileNotFoundError:
            raise ConfigReadError(f"{path} does not exist") from None
        except OSError as err:
            raise ConfigReadError(f"cannot read {path}: {err.strerror or err}") from err
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigReadError(f"{path.name} is larger than {MAX_CONFIG_BYTES} bytes")
        self.files.append(path)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigReadError(f"{path.name} is not UTF-8") from err

    def load(self, path: Path) -> Any:
        """Parse ``path`` with the tolerant loader (nested includes go through here)."""
        resolved = path.resolve()
        if resolved in self._stack:
            raise ConfigReadError(f"{path.name} includes itself")
        if len(self._stack) >= MAX_INCLUDE_DEPTH:
            raise ConfigReadError(f"includes nested deeper than {MAX_INCLUDE_DEPTH}")
        text = self.read(path)
        self._stack.append(resolved)
        try:
            loader = _Loader(text)
            loader.context = self
            loader.path = path
            try:
                return loader.get_single_data()
            finally:
                loader.dispose()
        except yaml.YAMLError as err:
            raise ConfigReadError(f"{path.name} is not valid YAML: {_one_line(err)}") from err
        except RecursionError as err:
            raise ConfigReadError(f"{path.name} nests too deeply") from err
        finally:
            self._stack.pop()

    def secret(self, including: Path, key: str) -> Any:
        for directory in (including.parent, self.main.parent):
            secrets = self._secrets_in(directory)
            if secrets is not None and key in secrets:
                return secrets[key]
        self.problems.append(f"secret {key!r} is not defined")
        return Tagged("!secret", key)

    def _secrets_in(self, directory: Path) -> Mapping[str, Any] | None:
        if directory in self._secrets:
            return self._secrets[directory]
        found: Mapping[str, Any] | None = None
        for filename in SECRETS_FILES:
            path = directory / filename
            if not path.is_file():
                continue
            try:
                data = self.load(path)
            except ConfigReadError as err:
                self.problems.append(str(err))
                break
            found = data if isinstance(data, dict) else None
            break
        self._secrets[directory] = found
        return found


_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader plus ESPHome's tags; ``context`` and ``path`` are set per file.

    ``<<: !include x.yaml`` is a merge SafeLoader cannot flatten (the value is a tagged
    scalar, not a map node). ``flatten_mapping`` takes such merges out and keeps their
    constructed values per map node, also through ``<<: *alias`` of a map that has
    them; ``construct_mapping`` merges them under the explicit keys.
    """

    context: _Context
    path: Path

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._merges: dict[yaml.Node, list[Any]] = {}

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        stash = self._merges.setdefault(node, [])
        kept = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                if value_node.tag.startswith("!"):
                    stash.append(self.construct_object(value_node, deep=True))
                    continue
                if isinstance(value_node, yaml.SequenceNode):
                    plain = []
                    for sub in value_node.value:
                        if sub.tag.startswith("!"):
                            stash.append(self.construct_object(sub, deep=True))
                        else:
                            plain.append(sub)
                    value_node.value = plain
                    subs = plain
                else:
                    subs = [value_node]
                for sub in subs:
                    if isinstance(sub, yaml.MappingNode):
                        self.flatten_mapping(sub)
                        stash.extend(self._merges.get(sub, []))
            kept.append((key_node, value_node))
        node.value = kept
        super().flatten_mapping(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        for value in self._merges.get(node, []):
            for part in value if isinstance(value, list) else [value]:
                if isinstance(part, dict):
                    for key, item in part.items():
                        mapping.setdefault(key, item)
        return mapping


def _include(loader: _Loader, node: yaml.Node) -> Any:
    variables: Mapping[str, Any] = {}
    if isinstance(node, yaml.MappingNode):
        spec = loader.construct_mapping(node, deep=True)
        target = spec.get("file")
        raw_vars = spec.get("vars")
        if isinstance(raw_vars, dict):
            variables = raw_vars
    else:
        target = loader.construct_scalar(node)  # type: ignore[arg-type]
    if not isinstance(target, str) or not target:
        loader.context.problems.append("an !include names no file")
        return Tagged("!include", target)
    path = loader.path.parent / target
    try:
        data = loader.context.load(path)
    except ConfigReadError as err:
        loader.context.problems.append(str(err))
        return Tagged("!include", target)
    return _substitute(data, variables, partial=True) if variables else data


def _secret(loader: _Loader, node: yaml.Node) -> Any:
    key = loader.construct_scalar(node)  # type: ignore[arg-type]
    return loader.context.secret(loader.path, str(key))


def _opaque(loader: _Loader, suffix: str, node: yaml.Node) -> Tagged:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    else:  # pragma: no cover - PyYAML has no other node kinds
        value = None
    return Tagged(f"!{suffix}", value)


_Loader.add_constructor("!include", _include)
_Loader.add_constructor("!secret", _secret)
_Loader.add_multi_constructor("!", _opaque)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300]


# -- substitutions and packages --------------------------------------------------------------


def _substitute_text(text: str, variables: Mapping[str, Any]) -> Any:
    """Phase 1 of esphome's expansion: ``$name``/``${name}``; unknown names stay."""
    if "$" not in text:
        return text
    out = text
    position = 0
    while (match := _VARIABLE_RE.search(out, position)) is not None:
        name = match.group(1)
        if name.startswith("{"):
            name = name[1:-1]
        if name not in variables:
            position = match.end()
            continue
        value = variables[name]
        if match.start() == 0 and match.end() == len(out):
            return value  # the whole string: keep the value's type, as esphome does
        head = out[: match.start()] + str(value)
        out = head + out[match.end() :]
        position = len(head)
    return out


def _substitute(data: Any, variables: Mapping[str, Any], *, partial: bool = False) -> Any:
    if isinstance(data, str):
        return _substitute_text(data, variables)
    if isinstance(data, dict):
        return {
            key: (
                value if key == "substitutions" and not partial else _substitute(value, variables)
            )
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [_substitute(item, variables) for item in data]
    return data


def _resolve_substitutions(raw: Mapping[Any, Any]) -> dict[str, Any]:
    variables = {str(k): v for k, v in raw.items() if isinstance(k, str)}
    for _ in range(MAX_SUBSTITUTION_PASSES):
        changed = False
        for key, value in list(variables.items()):
            if isinstance(value, str) and "$" in value:
                new = _substitute_text(value, {k: v for k, v in variables.items() if k != key})
                if new != value:
                    variables[key] = new
                    changed = True
        if not changed:
            break
    return variables


def _merge(base: Any, override: Any) -> Any:
    """Package merge: maps merge key by key, lists concatenate, the override wins."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return [*base, *override]
    return override


def _apply_packages(config: dict[Any, Any], problems: list[str]) -> dict[Any, Any]:
    packages = config.get("packages")
    if packages is None:
        return config
    entries: list[Any]
    if isinstance(packages, dict):
        entries = list(packages.values())
    elif isinstance(packages, list):
        entries = packages
    else:
        problems.append("packages: is neither a map nor a list")
        return config
    merged: dict[Any, Any] = {}
    for entry in entries:
        if isinstance(entry, dict) and not ({"url", "files"} & set(entry)):
            merged = _merge(merged, _apply_packages(entry, problems))
        else:
            problems.append("a remote or unreadable package was not followed")
    rest = {k: v for k, v in config.items() if k != "packages"}
    return _merge(merged, rest)  # type: ignore[no-any-return]


# -- reading one configuration ---------------------------------------------------------------


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return None


def _text(value: Any) -> str | None:
    if isinstance(value, str) and "$" not in value:
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _section(config: Mapping[Any, Any], key: str) -> dict[Any, Any] | None:
    """A top-level block; ``key:`` with no value counts as an empty block."""
    if key not in config:
        return None
    value = config[key]
    return value if isinstance(value, dict) else {}


def _static_ip(block: Mapping[Any, Any]) -> str | None:
    manual = block.get("manual_ip")
    if isinstance(manual, dict):
        return _text(manual.get("static_ip"))
    return None


def _network(config: Mapping[Any, Any]) -> NetworkInfo | None:
    for kind in NETWORK_KINDS:
        block = _section(config, kind)
        if block is None:
            continue
        use_address = _text(block.get("use_address"))
        domain = _text(block.get("domain")) or DEFAULT_DOMAIN
        static = _static_ip(block) if kind != "openthread" else None
        if kind == "wifi" and static is None and isinstance(block.get("networks"), list):
            nets = [net for net in block["networks"] if isinstance(net, dict)]
            ips = {ip for net in nets if (ip := _static_ip(net))}
            if len(ips) == 1:
                static = next(iter(ips))
        return NetworkInfo(kind=kind, use_address=use_address, static_ip=static, domain=domain)
    return None


def _has_ota(config: Mapping[Any, Any]) -> bool:
    ota = config.get("ota")
    items = ota if isinstance(ota, list) else [ota] if isinstance(ota, dict) else []
    return any(
        isinstance(item, dict) and item.get("platform") in ("esphome", "web_server")
        for item in items
    )


def read_config(path: Path) -> DeviceConfig:
    """Read ``path`` cheaply; never raises for bad content (see ``DeviceConfig.error``)."""
    context = _Context(path)
    try:
        data = context.load(path)
    except ConfigReadError as err:
        return DeviceConfig(path=path, error=str(err), problems=tuple(context.problems))
    if not isinstance(data, dict):
        return DeviceConfig(path=path, error=f"{path.name} is not a YAML map")
    problems = context.problems
    data = _apply_packages(data, problems)
    raw_subs = data.get("substitutions")
    variables = _resolve_substitutions(raw_subs) if isinstance(raw_subs, dict) else {}
    config = _substitute(data, variables)
    included = tuple(f for f in context.files if f != path)

    esphome = _section(config, "esphome")
    if esphome is None:
        return DeviceConfig(
            path=path, error="no esphome: block", included=included, problems=tuple(problems)
        )
    raw_name = esphome.get("name")
    name = _text(raw_name)
    error = None
    if name is None:
        error = (
            "esphome: name uses a substitution or expression meshd cannot evaluate"
            if isinstance(raw_name, str)
            else "esphome: name is missing"
        )
    elif normalise_name(name) != name:
        error = f"esphome: name {name!r} is not a valid ESPHome name"
        name = None
    mac_suffix = _as_bool(esphome.get("name_add_mac_suffix", False))
    if mac_suffix is None:
        problems.append("name_add_mac_suffix is not a boolean")
        mac_suffix = False
    api = _section(config, "api")
    api_port = DEFAULT_API_PORT
    key = None
    if api is not None:
        port = api.get("port", DEFAULT_API_PORT)
        if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
            api_port = port
        encryption = api.get("encryption")
        if isinstance(encryption, dict):
            key = _text(encryption.get("key"))
    mdns = _section(config, "mdns")
    return DeviceConfig(
        path=path,
        name=name,
        friendly_name=_text(esphome.get("friendly_name")),
        name_add_mac_suffix=mac_suffix,
        network=_network(config),
        has_api=api is not None,
        api_port=api_port,
        api_encryption_key=key,
        has_ota=_has_ota(config),
        mdns_disabled=bool(mdns and _as_bool(mdns.get("disabled")) is True),
        included=included,
        error=error,
        problems=tuple(problems),
    )


# -- directories ------------------------------------------------------------------------------


def list_yaml_files(directory: Path) -> list[Path]:
    """The configurations in ``directory``, as esphome's dashboard lists them."""
    return sorted(
        f
        for f in directory.iterdir()
        if f.suffix in YAML_SUFFIXES
        and f.name not in SECRETS_FILES
        and not f.name.startswith(".")
        and f.is_file()
    )


@dataclass(frozen=True)
class ConfigScan:
    configs: tuple[DeviceConfig, ...]
    problems: tuple[str, ...] = ()
    """Directories that could not be listed, and names used by more than one file."""


def scan_config_dirs(directories: Sequence[Path]) -> ConfigScan:
    """Read every configuration in ``directories`` (each file once, in path order)."""
    problems: list[str] = []
    seen: set[Path] = set()
    configs: list[DeviceConfig] = []
    for directory in directories:
        try:
            files = list_yaml_files(directory)
        except OSError as err:
            problems.append(f"cannot list {directory}: {err.strerror or err}")
            continue
        for path in files:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            configs.append(read_config(path))
    by_name: dict[str, list[Path]] = {}
    for config in configs:
        if config.name is not None:
            by_name.setdefault(config.name, []).append(config.path)
    for name, paths in sorted(by_name.items()):
        if len(paths) > 1:
            problems.append(f"name {name!r} is used by {', '.join(str(p) for p in paths)}")
    return ConfigScan(tuple(configs), tuple(problems))


def is_ip_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
