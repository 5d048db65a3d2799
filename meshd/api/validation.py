"""Turn an HTTP job request into something the engine can take, or a clear 4xx error.

The engine trusts its callers; the API is where user input meets it. Checks here are
the ones a user can act on at once and that would otherwise surface minutes later as
a failed job: the configuration file must exist, its YAML must parse (with the
parser's line and column), an upload needs a device. Everything semantic (unknown
components, bad pins) is esphome's business: the compile job fails with its message.

Paths are resolved to absolute paths here, because the daemon does not share the
client's working directory, and every later step (logs, supersede by configuration,
esphome's ``.esphome`` directory) must agree on one name for one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from meshd.jobs.engine import MAX_INSTALLS
from meshd.jobs.model import JobType
from meshd.jobs.options import JobOptions

INSTALL = "install"
JOB_KINDS = (*(t.value for t in JobType), INSTALL)

# ESPHome's own rule (esphome.const.ALLOWED_NAME_CHARS) plus the underscore it warns
# about; anything else could also turn ``NEW_NAME.yaml`` into a path elsewhere.
_NEW_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,63}$")

_FIELDS = frozenset(
    {"type", "configuration", "device", "new_name", "local", "cwd"}
    | {"when_online", "device_name", "build"}
)
# A kept build's id is the id of the compile that made it (``meshd.toolchain.archive``).
_BUILD_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# ``POST /api/v1/installs``: the body, and each entry of its ``installs`` list.
_INSTALLS_FIELDS = frozenset({"installs", "cwd", "local", "when_online"})
_INSTALL_ITEM_FIELDS = frozenset({"configuration", "device", "device_name", "when_online", "local"})


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


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    """The request body as JSON (``empty`` if there is none); 400 ``invalid_json`` if not."""
    if empty is not None and not request.can_read_body:
        return empty
    try:
        return await request.json()
    except ValueError:
        raise bad_request("invalid_json", "the request body is not valid JSON") from None


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


def check_yaml_syntax(path: Path) -> None:
    """Raise ``ApiError`` (400) if ``path`` cannot be read or is not well-formed YAML."""
    try:
        with path.open(encoding="utf-8") as handle:
            yaml.compose(handle, Loader=_SyntaxLoader)
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
    return value


def parse_job_request(body: Any) -> JobRequest:
    """Validate a ``POST /api/v1/jobs`` body; raise ``ApiError`` on anything wrong.

    File checks happen here too (existence, YAML syntax): they are cheap next to a
    compile and make the error synchronous.
    """
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
    local = body.get("local", False)
    if not isinstance(local, bool):
        raise bad_request("invalid_field", "'local' must be true or false", field="local")
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
    build = _string(body, "build")
    if build is not None:
        if kind != JobType.UPLOAD.value:
            raise bad_request("invalid_field", "'build' is only for an upload", field="build")
        if not _BUILD_ID_RE.match(build):
            raise bad_request(
                "invalid_field", f"'build' must be a kept build's id, not {build!r}", field="build"
            )
    # Read by the mesh scheduler: never dispatch this compile to a peer.
    options = JobOptions(force_local=local)
    upload_options = JobOptions()
    if kind == INSTALL:
        upload_options = waiting
    elif kind == JobType.UPLOAD.value:
        options = replace(waiting, force_local=local, build=build)

    if kind == JobType.RESET_BUILD_ENV.value:
        directory = resolve_path(raw_config or ".", cwd)
        if directory.is_file():
            directory = directory.parent
        if not directory.is_dir():
            raise bad_request(
                "config_not_found",
                f"configuration directory {directory} does not exist",
                path=str(directory),
            )
        return JobRequest(kind, str(directory), device, options)

    assert raw_config is not None
    config = resolve_path(raw_config, cwd)
    if not config.exists():
        raise bad_request(
            "config_not_found", f"configuration file {config} does not exist", path=str(config)
        )
    if not config.is_file():
        raise bad_request(
            "config_not_a_file", f"configuration {config} is not a file", path=str(config)
        )
    check_yaml_syntax(config)
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


def parse_installs_request(body: Any) -> list[JobRequest]:
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
            request = parse_job_request({**defaults, **entry, "type": INSTALL})
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
