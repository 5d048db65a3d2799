"""What a job was asked to do beyond its type, configuration and device: ``JobOptions``.

One frozen, typed record instead of a free-form dict, so the API, the engine, the
runners and the mesh read the same names and a typo is a type error, not a silently
ignored key. It is persisted in the ``args`` column of the jobs table as a JSON object
with a schema version::

    {"schema": 1, "force_local": true}

Only options that differ from their default are written, and the API shows the same
object without ``schema`` (``Job.to_dict()["args"]``, docs/API.md).

Compatibility, both ways:

* a row written before options had a schema (a plain dict, no ``schema``) reads as
  schema 0, whose keys mean what they mean in schema 1;
* keys this version does not know (a newer meshd wrote them) are kept verbatim in
  ``extra`` and written back, but never interpreted; so is a known key whose value has
  the wrong type (logged once), rather than failing the whole job;
* a row from a newer schema keeps its schema number when this version rewrites it.

Adding an option: add a field with a default below, and, if its type is new, a decoder
in ``_DECODERS``. Nothing else changes: reading, writing and the API follow the fields.
"""

from __future__ import annotations

import json
import logging
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

_LOGGER = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Bump when the meaning of a stored option changes (and migrate in ``from_mapping``)."""

SCHEMA_KEY = "schema"


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"expected a count (integer >= 0), got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _optional(decode: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else decode(value)


# Keyed by the field's annotation (a string under ``from __future__ import annotations``).
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "bool": _bool,
    "bool | None": _optional(_bool),
    "int": _count,
    "int | None": _optional(_count),
    "str | None": _optional(_str),
    "tuple[str, ...]": _strings,
}


@dataclass(frozen=True)
class JobOptions:
    """Type-specific options of one job; immutable: change one with ``dataclasses.replace``."""

    force_local: bool = False
    """Never send this compile to a receiver: the request had ``local: true``, the job
    is a receiver's copy of an offloaded compile, or the mesh gave up re-routing it."""
    new_name: str | None = None
    """rename: the device's new name."""
    verify_chip: bool | None = None
    """upload over serial: check the chip first; None leaves it to the runner's setting."""
    elf: bool = False
    """remote compile: also fetch the ELF from the receiver (for stack traces)."""
    reroutes: int = 0
    """remote compile: how many receivers were lost while building it."""
    excluded_receivers: tuple[str, ...] = ()
    """remote compile: fingerprints of those receivers, never chosen again for it."""
    offloader: str | None = None
    """on a receiver: fingerprint of the node that sent the compile."""
    offloader_name: str | None = None
    """on a receiver: that node's name, for people reading the job list."""
    remote_job: str | None = None
    """on a receiver: the job's id on the offloader."""
    when_online: bool = False
    """upload: *armed*: once its prerequisite completed, wait until the device announces
    itself (``Engine.device_seen``) instead of joining the upload lane at once."""
    device_name: str | None = None
    """upload with ``when_online``: the device's ``esphome: name`` it waits for (the
    engine reads it from the build record when not given)."""
    device_announced: bool = False
    """upload with ``when_online``: ``device`` is the address the device announced (not
    the request's), so a later release (after a restart) replaces it."""
    build: str | None = None
    """upload: flash this kept build (``meshd.toolchain.archive``) instead of the last one."""
    cache_hits: int | None = None
    """compile: objects the compile cache supplied (None: the cache was not used)."""
    cache_misses: int | None = None
    """compile: objects compiled and added to the compile cache."""
    esphome_version: str | None = None
    """compile: build with exactly this esphome (a provisioned toolchain when it is not
    the node's own); None builds with the node's default. Checked where it enters (API,
    compile request), since this layer imports nothing of the toolchain."""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Keys this version does not interpret, kept verbatim (see the module docstring)."""
    schema: int = field(default=SCHEMA_VERSION, compare=False, repr=False)
    """The schema the options are written with: ours, or a newer one they were read from."""

    def __post_init__(self) -> None:
        for f in _OPTION_FIELDS:
            try:
                value = _DECODERS[str(f.type)](getattr(self, f.name))
            except TypeError as exc:
                raise TypeError(f"job option {f.name!r}: {exc}") from None
            object.__setattr__(self, f.name, value)
        if SCHEMA_KEY in self.extra:
            raise ValueError(f"an extra job option may not be named {SCHEMA_KEY!r}")
        object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))

    # -- reading ----------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> JobOptions:
        """Options from a stored or legacy object; never raises on content (see above)."""
        raw = dict(data)
        schema = raw.pop(SCHEMA_KEY, 0)
        if isinstance(schema, bool) or not isinstance(schema, int) or schema < 0:
            _LOGGER.warning("job options with an invalid schema %r; reading as schema 0", schema)
            schema = 0
        known: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            f = _BY_NAME.get(key)
            if f is None:
                extra[key] = value
                continue
            try:
                known[key] = _DECODERS[str(f.type)](value)
            except TypeError as exc:
                _LOGGER.warning("job option %r kept but not used: %s", key, exc)
                extra[key] = value
        return cls(**known, extra=extra, schema=max(schema, SCHEMA_VERSION))

    @classmethod
    def from_json(cls, text: str | None) -> JobOptions:
        """Options from the ``args`` column; unreadable text is kept, not lost."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurd nesting
            problem = str(exc)
        else:
            if isinstance(data, dict):
                return cls.from_mapping(data)
            problem = f"a JSON {type(data).__name__}, not an object"
        _LOGGER.warning("unreadable job options kept verbatim: %s", problem)
        return cls(extra={"unreadable": text})

    # -- writing ----------------------------------------------------------------------

    def to_api(self) -> dict[str, Any]:
        """The ``args`` object of the job's API shape: every option not at its default."""
        out: dict[str, Any] = dict(self.extra)
        for f in _OPTION_FIELDS:
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        """The persisted form: the API object plus the schema version."""
        return json.dumps({**self.to_api(), SCHEMA_KEY: self.schema}, sort_keys=True)


_OPTION_FIELDS = tuple(f for f in fields(JobOptions) if f.name not in ("extra", "schema"))
_BY_NAME = {f.name: f for f in _OPTION_FIELDS}
_missing = [f.name for f in _OPTION_FIELDS if str(f.type) not in _DECODERS]
if _missing:  # pragma: no cover - a new option with a new type needs a decoder
    raise TypeError(f"job options without a decoder: {_missing}")
