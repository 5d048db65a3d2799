"""Turn an HTTP job request into something the engine can take, or a clear 4xx error.

The engine trusts its callers; the API is where user input meets it. Checks here are
the ones a user can act on at once and that would otherwise surface minutes later as
a failed job: the configuration file must exist, its YAML must parse (with the
parser's line and column), an upload needs a device. Everything semantic (unknown
components, bad pins) is esphome's business: the compile job fails with its message.

Paths are resolved to absolute paths here, because the daemon does not share the
client's working directory, and every later step (logs, supersede by configuration,
esphome's ``.esphome`` directory) must agree on one name for one file.

Input is hostile until checked (docs/SECURITY.md): JSON bodies are bounded in size
and depth, booleans must be JSON booleans (``"false"`` is not false), numbers must
be numbers. And a job may only name a file that is an ESPHome configuration under
the rules of :class:`ConfigRules`, so a token holder cannot make the daemon read an
arbitrary file (``/etc/shadow``, the node's own identity key) into a job log.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import yaml
from aiohttp import web

from meshd.jobs.engine import MAX_INSTALLS
from meshd.jobs.model import JobType
from meshd.jobs.options import JobOptions
from meshd.release_version import ToolchainVersionError, check_version

INSTALL = "install"
JOB_KINDS = (*(t.value for t in JobType), INSTALL)

# ESPHome's own rule (esphome.const.ALLOWED_NAME_CHARS) plus the underscore it warns
# about; anything else could also turn ``NEW_NAME.yaml`` into a path elsewhere.
_NEW_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")
# A host name, IPv4/IPv6 address (optionally [bracketed] with a port) or a device path:
# printable, no spaces, and not starting with '-' (it is passed as an argument).
_DEVICE_RE = re.compile(r"[A-Za-z0-9_.:/\[\]%@+=,~][\x21-\x7e]{0,254}")

_FIELDS = frozenset(
    {"type", "configuration", "device", "new_name", "local", "cwd"}
    | {"when_online", "device_name", "build", "esphome_version"}
)
# A kept build's id is the id of the compile that made it (``meshd.toolchain.archive``).
_BUILD_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# ``POST /api/v1/installs``: the body, and each entry of its ``installs`` list.
_INSTALLS_FIELDS = frozenset({"installs", "cwd", "local", "when_online"})
_INSTALL_ITEM_FIELDS = frozenset({"configuration", "device", "device_name", "when_online", "local"})

# Request bodies are flat objects; nesting deeper than this is not a meshd request,
# and Python's JSON parser would otherwise recurse into a RecursionError (a 500).
MAX_JSON_DEPTH: Final = 16
# A client must deliver its (at most 64 KiB) body within this; a slow drip holds a
# connection and a handler.
BODY_TIMEOUT: Final = 10.0
# Every string the API stores or passes on (names, devices, paths) has a sane bound.
MAX_STRING: Final = 4096
# esphome's own rule for what a configuration is (dashboard: ``*.yaml``/``*.yml``).
CONFIG_SUFFIXES: Final = (".yaml", ".yml")
# ...and the files in a config dir that are not configurations.
_NOT_CONFIGS: Final = frozenset({"secrets.yaml", "secrets.yml"})
# Top-level keys of which an ESPHome configuration has at least one: ``esphome:``, or
# ``packages:`` / a ``<<:`` merge that brings it in.
_CONFIG_KEYS: Final = frozenset({"esphome", "packages", "<<"})


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", ...details}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.details}}


def bad_request(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(400, code, message, **details)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_depth_ok(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def parse_json_body(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, at most MAX_JSON_DEPTH deep; else 400."""
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError):
        raise bad_request("invalid_json", "the request body is not valid JSON") from None
    except RecursionError:
        value = None
        depth_ok = False
    else:
        depth_ok = json_depth_ok(value)
    if not depth_ok:
        raise bad_request(
            "invalid_json", f"the request body nests deeper than {MAX_JSON_DEPTH} levels"
        )
    return value


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    """The request body as JSON (``empty`` if there is none); 400 ``invalid_json`` if not.

    Larger than the app's ``client_max_size`` is a 413 (aiohttp's own check); a body
    that does not arrive within BODY_TIMEOUT is a 408.
    """
    if empty is not None and not request.can_read_body:
        return empty
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(
            408, "request_timeout", f"the request body did not arrive within {BODY_TIMEOUT:.0f} s"
        ) from None
    if not raw and empty is not None:
        return empty
    return parse_json_body(raw)


# -- strict scalar fields ----------------------------------------------------------


def _esphome_version(body: dict[str, Any], kind: str) -> str | None:
    """``esphome_version`` of a compile or install: a release version, or None."""
    value = _string(body, "esphome_version")
    if value is None:
        return None
    if kind not in (JobType.COMPILE.value, INSTALL):
        raise bad_request(
            "invalid_field",
            "'esphome_version' is only for a compile or an install",
            field="esphome_version",
        )
    try:
        return check_version(value)
    except ToolchainVersionError as exc:
        raise bad_request("invalid_field", str(exc), field="esphome_version") from None


def optional_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    """A JSON boolean or the default; a string such as ``"false"`` is a 400, never truthy."""
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request("invalid_field", f"{key!r} must be true or false", field=key)
    return value


def optional_string(
    body: dict[str, Any], key: str, default: str = "", *, max_length: int = MAX_STRING
) -> str:
    """A JSON string (bounded) or the default; any other type is a 400."""
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise bad_request("invalid_field", f"{key!r} must be a string", field=key)
    if len(value) > max_length:
        raise bad_request(
            "invalid_field", f"{key!r} is longer than {max_length} characters", field=key
        )
    return value


def optional_number(body: dict[str, Any], key: str, default: float) -> float:
    """A finite JSON number (not a boolean, which Python counts as an int) or the default."""
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise bad_request("invalid_field", f"{key!r} must be a number", field=key)
    return float(value)


_DIGITS = re.compile(r"[0-9]{1,9}")
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"", "0", "false", "no"})


def query_int(request: web.Request, key: str, default: int) -> int:
    """A whole number >= 0 from the query string (ASCII digits, at most 9 of them)."""
    raw = request.query.get(key)
    if raw is None:
        return default
    if not _DIGITS.fullmatch(raw):
        raise bad_request(
            "invalid_query", f"{key} must be a whole number >= 0, not {raw[:40]!r}", field=key
        )
    return int(raw)


def query_bool(request: web.Request, key: str) -> bool:
    """``1/true/yes`` or ``0/false/no`` (or absent: false); anything else is a 400."""
    raw = request.query.get(key, "").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise bad_request("invalid_query", f"{key} must be true or false, not {raw[:40]!r}", field=key)


# -- which files a job may name ----------------------------------------------------


@dataclass(frozen=True)
class ConfigRules:
    """Which files a job may name as its configuration (docs/SECURITY.md, docs/API.md).

    * ``config_dirs``: when given, the resolved file (symlinks followed) must be
      inside one of them; this is the way to narrow what a token holder can build.
    * ``forbidden``: never inside these (the data dir: identity, token, database,
      and the trees a receiver builds for its peers).
    * always: a regular file named ``*.yaml``/``*.yml`` (not ``secrets.yaml``) whose
      YAML is a mapping with ``esphome:``, ``packages:`` or a ``<<:`` merge at the top.
    """

    config_dirs: tuple[Path, ...] = ()
    forbidden: tuple[Path, ...] = ()
    pins: tuple[tuple[Path, str], ...] = ()
    """Per-configuration esphome versions, resolved paths (see :func:`resolve_pins`)."""

    def pin_for(self, config: Path) -> str | None:
        """The esphome version the fleet settings pin ``config`` (resolved) to, if any."""
        return next((version for path, version in self.pins if path == config), None)

    def check_location(self, path: Path, *, what: str = "configuration") -> None:
        """403 if ``path`` (already resolved) is outside the config dirs or in a forbidden tree."""
        for root in self.forbidden:
            real = root.resolve()
            if path == real or path.is_relative_to(real):
                raise ApiError(
                    403,
                    "config_forbidden",
                    f"{what} {path} is inside meshd's data directory; jobs cannot use it",
                    path=str(path),
                )
        if not self.config_dirs:
            return
        roots = [d.resolve() for d in self.config_dirs]
        if not any(path == r or path.is_relative_to(r) for r in roots):
            raise ApiError(
                403,
                "config_outside_config_dirs",
                f"{what} {path} is not inside a configuration directory of this node "
                f"({', '.join(map(str, roots))})",
                path=str(path),
                config_dirs=[str(r) for r in roots],
            )

    def check_file(self, path: Path) -> None:
        """The name rules: a ``*.yaml``/``*.yml`` regular file that is not a secrets file."""
        self.check_location(path)
        if path.suffix.lower() not in CONFIG_SUFFIXES or path.name.lower() in _NOT_CONFIGS:
            raise bad_request(
                "not_a_configuration",
                f"{path} is not an ESPHome configuration (a .yaml or .yml file, not secrets.yaml)",
                path=str(path),
            )


CONFIG_RULES_KEY = web.AppKey("config_rules", ConfigRules)
"""The server's :class:`ConfigRules`, read by the job endpoint."""


@dataclass(frozen=True)
class JobRequest:
    """A validated request: ``kind`` is a job type or ``install``."""

    kind: str
    configuration: str
    device: str | None = None
    options: JobOptions = field(default_factory=JobOptions)
    upload_options: JobOptions = field(default_factory=JobOptions)
    """For ``install``: the options of its upload (``when_online``, ``device_name``)."""


class _SyntaxLoader(yaml.SafeLoader):
    """A loader used only to *compose* the node graph, never to construct objects.

    Composing checks the whole YAML syntax (with marks for errors) while tags stay
    uninterpreted, so ESPHome's ``!secret``, ``!include``, ``!lambda``, ``!extend`` and
    any tag a future esphome adds pass, and a ``<<: !include`` merge is not mistaken
    for an error as a full construct would.
    """


def _looks_like_config(node: yaml.Node | None) -> bool:
    if not isinstance(node, yaml.MappingNode):
        return False
    return any(
        isinstance(key, yaml.ScalarNode) and key.value in _CONFIG_KEYS for key, _ in node.value
    )


def check_yaml_syntax(path: Path) -> None:
    """Raise ``ApiError`` (400) if ``path`` cannot be read, is not well-formed YAML, or
    is YAML but not an ESPHome configuration (no top-level mapping with ``esphome:``,
    ``packages:`` or a ``<<:`` merge). Errors name lines, never the file's content."""
    try:
        with path.open(encoding="utf-8") as handle:
            node = yaml.compose(handle, Loader=_SyntaxLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        details: dict[str, Any] = {"file": str(path), "detail": str(exc)}
        where = ""
        if mark is not None:
            details["line"] = mark.line + 1
            details["column"] = mark.column + 1
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = exc.problem or exc.context or "syntax error"
        raise bad_request(
            "invalid_yaml", f"{path}: invalid YAML{where}: {problem}", **details
        ) from None
    except yaml.YAMLError as exc:
        raise bad_request(
            "invalid_yaml", f"{path}: invalid YAML: {exc}", file=str(path), detail=str(exc)
        ) from None
    except UnicodeDecodeError as exc:
        raise bad_request(
            "invalid_yaml",
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})",
            file=str(path),
        ) from None
    except OSError as exc:
        raise bad_request(
            "config_unreadable", f"{path}: cannot read: {exc.strerror or exc}", file=str(path)
        ) from None
    if not _looks_like_config(node):
        raise bad_request(
            "not_a_configuration",
            f"{path} is not an ESPHome configuration (no top-level esphome:, packages: or <<: key)",
            path=str(path),
        )


def resolve_pins(
    pins: tuple[tuple[str, str], ...], config_dirs: tuple[Path, ...]
) -> tuple[tuple[Path, str], ...]:
    """The settings' pins as resolved paths: an absolute one as is, a relative one inside
    each configuration directory (where the same name means the same device)."""
    out: list[tuple[Path, str]] = []
    for raw, version in pins:
        path = Path(raw).expanduser()
        bases = [path] if path.is_absolute() else [root / path for root in config_dirs]
        out.extend((base.resolve(), version) for base in bases)
    return tuple(out)


def resolve_path(raw: str, cwd: str | None) -> Path:
    """An absolute, normalised path; a relative one is taken against ``cwd`` if given
    (the client's directory), else the daemon's working directory."""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        base = Path(cwd) if cwd else Path.cwd()
        path = base / path
    return path.resolve()


def _string(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise bad_request("missing_field", f"{key!r} is required", field=key)
        return None
    if not isinstance(value, str):
        raise bad_request("invalid_field", f"{key!r} must be a string", field=key)
    if len(value) > MAX_STRING or "\x00" in value:
        raise bad_request("invalid_field", f"{key!r} is too long or holds a NUL", field=key)
    return value


def parse_job_request(body: Any, rules: ConfigRules | None = None) -> JobRequest:
    """Validate a ``POST /api/v1/jobs`` body; raise ``ApiError`` on anything wrong.

    File checks happen here too (location rules, existence, YAML syntax): they are
    cheap next to a compile and make the error synchronous. Blocking: run in a thread.
    """
    rules = rules or ConfigRules()
    if not isinstance(body, dict):
        raise bad_request("invalid_body", "the request body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad_request(
            "unknown_field", f"unknown field(s): {', '.join(unknown)}", fields=unknown
        )
    kind = _string(body, "type", required=True)
    if kind not in JOB_KINDS:
        raise bad_request(
            "invalid_type",
            f"unknown job type {kind!r} (one of: {', '.join(JOB_KINDS)})",
            field="type",
        )
    raw_config = _string(body, "configuration", required=kind != JobType.RESET_BUILD_ENV.value)
    cwd = _string(body, "cwd")
    local = optional_bool(body, "local", False)
    device = _string(body, "device")
    flashes = kind in (JobType.UPLOAD.value, INSTALL)
    waiting = _waiting_options(body, kind, flashes)
    if flashes and device is None and not waiting.when_online:
        raise bad_request(
            "missing_device",
            f"{kind} needs a device (an IP address or hostname for OTA, or a serial port), "
            "or when_online to use the address the device announces",
            field="device",
        )
    if device is not None and not _DEVICE_RE.fullmatch(device):
        # It becomes esphome's ``--device`` argument: no option-looking or spaced value.
        raise bad_request(
            "invalid_field",
            "'device' must be a host name, an IP address or a serial port path",
            field="device",
        )
    build = _string(body, "build")
    if build is not None:
        if kind != JobType.UPLOAD.value:
            raise bad_request("invalid_field", "'build' is only for an upload", field="build")
        if not _BUILD_ID_RE.match(build):
            raise bad_request(
                "invalid_field", f"'build' must be a kept build's id, not {build!r}", field="build"
            )
    pin = _esphome_version(body, kind)
    # Read by the mesh scheduler: never dispatch this compile to a peer.
    options = JobOptions(force_local=local, esphome_version=pin)
    upload_options = JobOptions()
    if kind == INSTALL:
        upload_options = waiting
    elif kind == JobType.UPLOAD.value:
        options = replace(waiting, force_local=local, build=build)
    pinnable = kind in (JobType.COMPILE.value, INSTALL)

    if kind == JobType.RESET_BUILD_ENV.value:
        directory = resolve_path(raw_config or ".", cwd)
        if directory.is_file():
            directory = directory.parent
        rules.check_location(directory, what="configuration directory")
        if not directory.is_dir():
            raise bad_request(
                "config_not_found",
                f"configuration directory {directory} does not exist",
                path=str(directory),
            )
        return JobRequest(kind, str(directory), device, options)

    assert raw_config is not None
    config = resolve_path(raw_config, cwd)
    rules.check_file(config)
    if not config.exists():
        raise bad_request(
            "config_not_found", f"configuration file {config} does not exist", path=str(config)
        )
    if not config.is_file():
        raise bad_request(
            "config_not_a_file", f"configuration {config} is not a file", path=str(config)
        )
    check_yaml_syntax(config)
    if pinnable and pin is None and (fleet_pin := rules.pin_for(config)) is not None:
        options = replace(options, esphome_version=fleet_pin)
    if kind == JobType.RENAME.value:
        new_name = _string(body, "new_name", required=True)
        assert new_name is not None
        if not _NEW_NAME_RE.match(new_name):
            raise bad_request(
                "invalid_name",
                f"{new_name!r} is not a valid device name (letters, digits, '-' and '_')",
                field="new_name",
            )
        options = replace(options, new_name=new_name)
    return JobRequest(kind, str(config), device, options, upload_options)


def _waiting_options(body: dict[str, Any], kind: str, flashes: bool) -> JobOptions:
    """``when_online`` and ``device_name`` of an upload or install (strict: nowhere else)."""
    when_online = body.get("when_online", False)
    if not isinstance(when_online, bool):
        raise bad_request(
            "invalid_field", "'when_online' must be true or false", field="when_online"
        )
    device_name = _string(body, "device_name")
    if when_online and not flashes:
        raise bad_request(
            "invalid_field",
            f"'when_online' is only for upload or install, not {kind}",
            field="when_online",
        )
    if device_name is not None:
        if not when_online:
            raise bad_request(
                "invalid_field", "'device_name' is only used with when_online", field="device_name"
            )
        if not _NEW_NAME_RE.match(device_name):
            raise bad_request(
                "invalid_name",
                f"{device_name!r} is not a valid device name (letters, digits, '-' and '_')",
                field="device_name",
            )
    return JobOptions(when_online=when_online, device_name=device_name)


def parse_installs_request(body: Any, rules: ConfigRules | None = None) -> list[JobRequest]:
    """Validate a ``POST /api/v1/installs`` body: every install or none (``ApiError``).

    Each entry is checked exactly as a single ``install`` (``parse_job_request``); an
    error names the entry by its ``index``. Top-level ``cwd``, ``local`` and
    ``when_online`` are defaults an entry may override.
    """
    if not isinstance(body, dict):
        raise bad_request("invalid_body", "the request body must be a JSON object")
    unknown = sorted(set(body) - _INSTALLS_FIELDS)
    if unknown:
        raise bad_request(
            "unknown_field", f"unknown field(s): {', '.join(unknown)}", fields=unknown
        )
    entries = body.get("installs")
    if not isinstance(entries, list) or not entries:
        raise bad_request(
            "missing_field", "'installs' must be a non-empty list of installs", field="installs"
        )
    if len(entries) > MAX_INSTALLS:
        raise bad_request(
            "too_many",
            f"at most {MAX_INSTALLS} installs per request, not {len(entries)}",
            field="installs",
        )
    defaults = {key: body[key] for key in ("cwd", "local", "when_online") if key in body}
    requests: list[JobRequest] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise bad_request("invalid_body", "an install must be a JSON object")
            unknown = sorted(set(entry) - _INSTALL_ITEM_FIELDS)
            if unknown:
                raise bad_request(
                    "unknown_field", f"unknown field(s): {', '.join(unknown)}", fields=unknown
                )
            request = parse_job_request({**defaults, **entry, "type": INSTALL}, rules)
            if request.configuration in seen:
                raise bad_request(
                    "duplicate_configuration",
                    f"{request.configuration} is also installs[{seen[request.configuration]}]",
                    path=request.configuration,
                )
        except ApiError as exc:
            raise ApiError(
                exc.status,
                exc.code,
                f"installs[{index}]: {exc.message}",
                **exc.details,
                index=index,
            ) from None
        seen[request.configuration] = index
        requests.append(request)
    return requests
