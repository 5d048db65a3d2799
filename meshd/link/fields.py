"""Field specifications: how each message field is validated and normalised.

A message class declares each field with ``spec(...)``; the spec checks the value in
``__post_init__`` (so a message that exists is valid, as in h11's events) and turns
wire shapes into Python shapes (msgpack arrays arrive as lists and become tuples).
Validation failures raise ``LocalProtocolError``; the decoder turns them into
``RemoteProtocolError`` for bytes that came from the peer.

Specs are plain data so tests can derive hypothesis strategies from them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd.link.errors import LocalProtocolError

U64_MAX = 2**64 - 1


def _fail(name: str, why: str) -> LocalProtocolError:
    return LocalProtocolError(f"field {name!r}: {why}")


@dataclass(frozen=True)
class Int:
    """An integer in [lo, hi]; ``bool`` is refused even though it is an ``int``."""

    lo: int = 0
    hi: int = U64_MAX

    def check(self, value: object, name: str) -> object:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(name, "expected an integer")
        if not self.lo <= value <= self.hi:
            raise _fail(name, f"{value} not in [{self.lo}, {self.hi}]")
        return value


@dataclass(frozen=True)
class Float:
    """A finite float in [lo, hi]; integers are accepted and widened."""

    lo: float = -math.inf
    hi: float = math.inf

    def check(self, value: object, name: str) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(name, "expected a number")
        result = float(value)
        if not math.isfinite(result) or not self.lo <= result <= self.hi:
            raise _fail(name, f"{value!r} not a finite number in [{self.lo}, {self.hi}]")
        return result


@dataclass(frozen=True)
class Bool:
    """True or False, nothing else."""

    def check(self, value: object, name: str) -> object:
        if not isinstance(value, bool):
            raise _fail(name, "expected a boolean")
        return value


@dataclass(frozen=True)
class Str:
    """A UTF-8 string of at most ``max_len`` characters."""

    max_len: int
    min_len: int = 0

    def check(self, value: object, name: str) -> object:
        if not isinstance(value, str):
            raise _fail(name, "expected a string")
        if not self.min_len <= len(value) <= self.max_len:
            raise _fail(name, f"length {len(value)} not in [{self.min_len}, {self.max_len}]")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _fail(name, "not encodable as UTF-8") from exc
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings (an enum on the wire)."""

    options: frozenset[str]

    def check(self, value: object, name: str) -> object:
        if not isinstance(value, str) or value not in self.options:
            raise _fail(name, f"expected one of {sorted(self.options)}")
        return value


@dataclass(frozen=True)
class Bin:
    """Raw bytes (msgpack bin) of length in [min_len, max_len]; never base64."""

    max_len: int
    min_len: int = 0

    def check(self, value: object, name: str) -> object:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise _fail(name, "expected bytes")
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        if not self.min_len <= size <= self.max_len:
            raise _fail(name, f"length {size} not in [{self.min_len}, {self.max_len}]")
        return value


@dataclass(frozen=True)
class Opt:
    """``None`` or a value of the inner spec."""

    inner: Spec

    def check(self, value: object, name: str) -> object:
        return None if value is None else self.inner.check(value, name)


@dataclass(frozen=True)
class Seq:
    """A list of at most ``max_items`` values of the inner spec, kept as a tuple."""

    inner: Spec
    max_items: int

    def check(self, value: object, name: str) -> object:
        if not isinstance(value, list | tuple):
            raise _fail(name, "expected an array")
        if len(value) > self.max_items:
            raise _fail(name, f"{len(value)} items, at most {self.max_items} allowed")
        return tuple(self.inner.check(item, f"{name}[{i}]") for i, item in enumerate(value))


@dataclass(frozen=True)
class StrMap:
    """A map of short string keys to string values, at most ``max_items`` pairs."""

    max_items: int
    key: Str
    value: Str

    def check(self, value: object, name: str) -> object:
        if not isinstance(value, dict):
            raise _fail(name, "expected a map")
        if len(value) > self.max_items:
            raise _fail(name, f"{len(value)} entries, at most {self.max_items} allowed")
        return {
            self.key.check(k, f"{name} key"): self.value.check(v, f"{name}[{k!r}]")
            for k, v in value.items()
        }


Spec = Int | Float | Bool | Str | Choice | Bin | Opt | Seq | StrMap


def spec(
    kind: Spec,
    *,
    default: object = dataclasses.MISSING,
    default_factory: Callable[[], object] | None = None,
) -> Any:
    """Declare a message field validated by ``kind``; optional fields take a default."""
    meta = {"spec": kind}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if default is not dataclasses.MISSING:
        return dataclasses.field(default=default, metadata=meta)
    return dataclasses.field(metadata=meta)


def field_spec(f: dataclasses.Field[Any]) -> Spec:
    """The spec a message field was declared with."""
    kind: Spec = f.metadata["spec"]
    return kind
