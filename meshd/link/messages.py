"""Every message of the link, as frozen dataclasses that validate, plus the codec.

On the wire a message is the msgpack array ``[type, rid, body]`` (PROTOCOL.md
"Messages"): ``type`` names the message, ``rid`` correlates a request with its
response (0 for one-way messages), ``body`` is a map of field name to value. Unknown
body keys are ignored and unknown types decode to ``UnknownMessage`` so newer peers
can add both without breaking older ones.

The registry lists messages the mesh will use later (compile, logs, artifacts) even
where only the generic ones are exercised today, so the spec and the code agree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

import msgpack

from meshd.link.errors import LocalProtocolError, RemoteProtocolError
from meshd.link.fields import (
    Bin,
    Bool,
    Choice,
    Float,
    Int,
    Opt,
    Seq,
    Str,
    StrMap,
    field_spec,
    spec,
)
from meshd.link.limits import (
    MAX_CAPS,
    MAX_CHUNK_SIZE,
    MAX_LIST,
    MAX_META,
    MAX_NAME,
    MAX_STR,
)

U32 = Int(0, 2**32 - 1)
U64 = Int()
NAME = Str(MAX_NAME)
TEXT = Str(MAX_STR)
DIGEST = Bin(32, 32)
JOB_ID = Str(MAX_NAME, min_len=1)
STREAM_ID = Int(1, 2**63 - 1)


class Kind(enum.Enum):
    """How a message relates to others: one-way, a request, or a response."""

    ONEWAY = "oneway"
    REQUEST = "request"
    RESPONSE = "response"


@dataclass(frozen=True)
class Message:
    """Base of every registered message; subclasses set TYPE, KIND and fields."""

    TYPE: ClassVar[str] = ""
    KIND: ClassVar[Kind] = Kind.ONEWAY
    # Allowed on a session whose peer is not (yet) trusted: a pairing session may
    # only carry these, so an untrusted peer never reaches job handlers.
    PRE_TRUST: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            normalised = field_spec(f).check(value, f"{self.TYPE}.{f.name}")
            if normalised is not value:
                object.__setattr__(self, f.name, normalised)

    def to_wire(self) -> dict[str, Any]:
        """The body map, field name to value, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_wire(cls, body: dict[str, Any]) -> Self:
        """Build from a decoded body; unknown keys are ignored, missing required ones fail."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in body:
                kwargs[f.name] = body[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise LocalProtocolError(f"{cls.TYPE}: missing field {f.name!r}")
        return cls(**kwargs)


@dataclass(frozen=True)
class UnknownMessage:
    """A message type this version does not know; sessions ignore it."""

    type: str
    body: dict[str, Any]


REGISTRY: dict[str, type[Message]] = {}
_M = TypeVar("_M", bound=type[Message])


def register(cls: _M) -> _M:
    """Add a message class to the registry under its TYPE (which must be unique)."""
    if not cls.TYPE or cls.TYPE in REGISTRY:
        raise RuntimeError(f"message type {cls.TYPE!r} missing or registered twice")
    REGISTRY[cls.TYPE] = cls
    return cls


# -- control -----------------------------------------------------------------------


@register
@dataclass(frozen=True)
class Hello(Message):
    """Responder's acceptance after the handshake: the negotiated capabilities."""

    TYPE = "hello"
    PRE_TRUST = True
    caps: tuple[str, ...] = spec(Seq(NAME, MAX_CAPS))
    agent: str = spec(NAME, default="")


@register
@dataclass(frozen=True)
class Ping(Message):
    """Heartbeat probe; the peer answers with a Pong carrying the same seq."""

    TYPE = "ping"
    PRE_TRUST = True
    seq: int = spec(U64)


@register
@dataclass(frozen=True)
class Pong(Message):
    """Heartbeat answer."""

    TYPE = "pong"
    PRE_TRUST = True
    seq: int = spec(U64)


@register
@dataclass(frozen=True)
class Close(Message):
    """Last message of a session: why it ends (a CloseReason value)."""

    TYPE = "close"
    PRE_TRUST = True
    reason: int = spec(U32)
    message: str = spec(TEXT, default="")


@register
@dataclass(frozen=True)
class Error(Message):
    """Failure answer to a request (an ErrorCode value); the session stays open."""

    TYPE = "error"
    KIND = Kind.RESPONSE
    PRE_TRUST = True
    code: int = spec(U32)
    message: str = spec(TEXT, default="")


# -- pairing -------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class PairProof(Message):
    """Joiner proves it holds the pairing secret, bound to this session's transcript."""

    TYPE = "pair_proof"
    KIND = Kind.REQUEST
    PRE_TRUST = True
    proof: bytes = spec(DIGEST)
    name: str = spec(NAME, default="")


@register
@dataclass(frozen=True)
class PairAccept(Message):
    """Receiver accepted the proof and now trusts the joiner."""

    TYPE = "pair_accept"
    KIND = Kind.RESPONSE
    PRE_TRUST = True
    name: str = spec(NAME, default="")


# -- mesh: lanes and remote compiles -------------------------------------------------


# Ready toolchains a node lists in node_info/lane_status; a receiver keeps a handful.
MAX_TOOLCHAINS = 64


@register
@dataclass(frozen=True)
class LaneStatus(Message):
    """Compile-lane state, pushed on every change to connected peers."""

    TYPE = "lane_status"
    idle: bool = spec(Bool())
    running: int = spec(U32)
    queued: int = spec(U32)
    idle_since: float | None = spec(Opt(Float(0.0)), default=None)
    esphome_version: str = spec(NAME, default="")
    # esphome versions provisioned and ready besides the node's own (PROTOCOL.md 9);
    # older peers omit it, which reads as none.
    toolchains: tuple[str, ...] = spec(Seq(NAME, MAX_TOOLCHAINS), default=())


@register
@dataclass(frozen=True)
class CompileRequest(Message):
    """Offloader asks a receiver to compile a bundle it has sent or will send."""

    TYPE = "compile_request"
    KIND = Kind.REQUEST
    job_id: str = spec(JOB_ID)
    configuration: str = spec(NAME)
    esphome_version: str = spec(NAME)
    bundle_digest: bytes = spec(DIGEST)
    bundle_size: int = spec(U64)
    # True: build with exactly ``esphome_version`` (policy provision/exact, or a pinned
    # job), provisioning it if need be; false (and older offloaders): a version the
    # receiver's own policy finds compatible will do.
    exact_version: bool = spec(Bool(), default=False)


@register
@dataclass(frozen=True)
class CompileAccept(Message):
    """Receiver took the compile; state and logs follow as JobState and LogLine."""

    TYPE = "compile_accept"
    KIND = Kind.RESPONSE
    job_id: str = spec(JOB_ID)
    position: int = spec(U32, default=0)


COMPILE_REJECT_REASONS = frozenset(
    {"busy", "version_mismatch", "forbidden", "invalid", "shutting_down", "missing_content"}
)


@register
@dataclass(frozen=True)
class CompileReject(Message):
    """Receiver declined the compile; the offloader routes it elsewhere."""

    TYPE = "compile_reject"
    KIND = Kind.RESPONSE
    job_id: str = spec(JOB_ID)
    reason: str = spec(Choice(COMPILE_REJECT_REASONS))
    message: str = spec(TEXT, default="")


@register
@dataclass(frozen=True)
class LogLine(Message):
    """One line of build output for a remote job."""

    TYPE = "log_line"
    job_id: str = spec(JOB_ID)
    line: str = spec(TEXT)
    stream: str = spec(Choice(frozenset({"stdout", "stderr", "meshd"})), default="stdout")


JOB_STATES = frozenset({"queued", "running", "completed", "failed", "cancelled"})


@register
@dataclass(frozen=True)
class JobState(Message):
    """State change of a remote job (same vocabulary as meshd's job statuses)."""

    TYPE = "job_state"
    job_id: str = spec(JOB_ID)
    state: str = spec(Choice(JOB_STATES))
    progress: float | None = spec(Opt(Float(0.0, 1.0)), default=None)
    error: str = spec(TEXT, default="")


@register
@dataclass(frozen=True)
class Cancel(Message):
    """Offloader cancels a remote job; the receiver answers with a JobState."""

    TYPE = "cancel"
    job_id: str = spec(JOB_ID)
    reason: str = spec(TEXT, default="")


@register
@dataclass(frozen=True)
class HaveQuery(Message):
    """Which of these content digests (SHA-256) does the receiver lack?"""

    TYPE = "have_query"
    KIND = Kind.REQUEST
    digests: tuple[bytes, ...] = spec(Seq(DIGEST, MAX_LIST))


@register
@dataclass(frozen=True)
class HaveReply(Message):
    """The subset of queried digests the receiver needs sent."""

    TYPE = "have_reply"
    KIND = Kind.RESPONSE
    missing: tuple[bytes, ...] = spec(Seq(DIGEST, MAX_LIST))


ARTIFACT_METHODS = frozenset({"ota", "serial"})
# A signed build-provenance record (PROTOCOL.md "Build provenance"): a real one is a few
# hundred bytes; 32 artifacts with 512-character ASCII paths still fit. The cap bounds
# what a receiver can make an offloader parse.
MAX_PROVENANCE = 32 * 1024
PROVENANCE_SIGNATURE = Bin(64, 64)


@register
@dataclass(frozen=True)
class ArtifactRequest(Message):
    """Offloader asks for what flashing a finished remote job by ``method`` needs."""

    TYPE = "artifact_request"
    KIND = Kind.REQUEST
    job_id: str = spec(JOB_ID)
    method: str = spec(Choice(ARTIFACT_METHODS), default="ota")
    elf: bool = spec(Bool(), default=False)


@register
@dataclass(frozen=True)
class ArtifactReply(Message):
    """The artifact manifest (a JSON content blob to fetch) and its signed provenance."""

    TYPE = "artifact_reply"
    KIND = Kind.RESPONSE
    job_id: str = spec(JOB_ID)
    manifest_digest: bytes = spec(DIGEST)
    manifest_size: int = spec(U64)
    # Signed by the receiver over exactly these artifacts (meshd/mesh/security/provenance.py);
    # nil from a receiver that does not sign (no ``provenance`` capability).
    provenance: bytes | None = spec(Opt(Bin(MAX_PROVENANCE, 1)), default=None)
    provenance_sig: bytes | None = spec(Opt(PROVENANCE_SIGNATURE), default=None)


@register
@dataclass(frozen=True)
class BlobRequest(Message):
    """Send me these content blobs (as ``blob`` streams named by hex digest)."""

    TYPE = "blob_request"
    KIND = Kind.REQUEST
    digests: tuple[bytes, ...] = spec(Seq(DIGEST, MAX_LIST))


@register
@dataclass(frozen=True)
class BlobReply(Message):
    """Every requested blob stream has been sent (it may still be landing)."""

    TYPE = "blob_reply"
    KIND = Kind.RESPONSE
    count: int = spec(U32)


# The compile cache across the mesh (PROTOCOL.md "Compile cache"): a receiver asks the
# job's offloader for ccache entries and sends it the ones it made. An entry travels in
# one message, so it must fit a frame with room for the key and the envelope; larger
# entries (rare: one object file's compressed result) are simply not shared.
MAX_CACHE_ENTRY = 960 * 1024
CACHE_KEY = Str(128, min_len=4)


@register
@dataclass(frozen=True)
class CacheGet(Message):
    """Receiver asks the offloader for one ccache entry (``<2 chars>/<rest>``) for ``job_id``."""

    TYPE = "cache_get"
    KIND = Kind.REQUEST
    job_id: str = spec(JOB_ID)
    key: str = spec(CACHE_KEY)


@register
@dataclass(frozen=True)
class CacheEntry(Message):
    """The entry's bytes, as ccache stored them (an error ``not_found`` when absent)."""

    TYPE = "cache_entry"
    KIND = Kind.RESPONSE
    data: bytes = spec(Bin(MAX_CACHE_ENTRY))


@register
@dataclass(frozen=True)
class CachePut(Message):
    """Receiver hands the offloader an entry a build for ``job_id`` made (one-way)."""

    TYPE = "cache_put"
    KIND = Kind.ONEWAY
    job_id: str = spec(JOB_ID)
    key: str = spec(CACHE_KEY)
    data: bytes = spec(Bin(MAX_CACHE_ENTRY))


@register
@dataclass(frozen=True)
class NodeInfo(Message):
    """Who the sender is, sent once by each side when a session opens."""

    TYPE = "node_info"
    name: str = spec(NAME, default="")
    esphome_version: str = spec(NAME, default="")
    accepts_builds: bool = spec(Bool(), default=False)
    # Whether it provisions the esphome an offloader asks for, and which versions it
    # has ready besides its own; older peers omit both (no, none).
    provisions: bool = spec(Bool(), default=False)
    toolchains: tuple[str, ...] = spec(Seq(NAME, MAX_TOOLCHAINS), default=())


# -- streams -------------------------------------------------------------------------


@register
@dataclass(frozen=True)
class StreamOpen(Message):
    """Start of a stream of raw bytes (a bundle, an artifact)."""

    TYPE = "stream_open"
    sid: int = spec(STREAM_ID)
    kind: str = spec(Str(MAX_NAME, min_len=1))
    name: str = spec(NAME, default="")
    size: int | None = spec(Opt(U64), default=None)
    meta: dict[str, str] = spec(  # noqa: RUF009 - spec() returns a dataclasses.field
        StrMap(MAX_META, Str(MAX_NAME), Str(MAX_NAME)), default_factory=dict
    )


@register
@dataclass(frozen=True)
class StreamChunk(Message):
    """Next bytes of a stream, as msgpack bin (no base64)."""

    TYPE = "stream_chunk"
    sid: int = spec(STREAM_ID)
    data: bytes | memoryview = spec(Bin(MAX_CHUNK_SIZE))  # noqa: RUF009 - a dataclasses.field


@register
@dataclass(frozen=True)
class StreamEnd(Message):
    """End of a stream; the receiver checks the SHA-256 of everything it got."""

    TYPE = "stream_end"
    sid: int = spec(STREAM_ID)
    sha256: bytes = spec(DIGEST)


@register
@dataclass(frozen=True)
class StreamAbort(Message):
    """Either side gives up on a stream; the session stays open."""

    TYPE = "stream_abort"
    sid: int = spec(STREAM_ID)
    reason: str = spec(TEXT, default="")


@register
@dataclass(frozen=True)
class StreamWindow(Message):
    """Receiver grants the sender ``credit`` more bytes of stream data (flow control)."""

    TYPE = "stream_window"
    sid: int = spec(STREAM_ID)
    credit: int = spec(U32)


# -- codec ---------------------------------------------------------------------------


def _check_envelope(message: Message, rid: int) -> None:
    if not 0 <= rid <= U64.hi:
        raise LocalProtocolError(f"request id {rid} out of range")
    if (message.KIND is Kind.ONEWAY) != (rid == 0):
        raise LocalProtocolError(f"{message.TYPE} is {message.KIND.value}; rid {rid} invalid")


def encode(message: Message, rid: int = 0) -> bytes:
    """msgpack ``[type, rid, body]`` for a message (the plaintext of one frame)."""
    _check_envelope(message, rid)
    packed: bytes = msgpack.packb([message.TYPE, rid, message.to_wire()], use_bin_type=True)
    return packed


class Encoder:
    """``encode`` into one reused buffer, for the sealer to read in place.

    A 512 KiB stream chunk packed with ``encode`` costs a fresh allocation and a copy
    per frame; the packer here keeps its buffer between messages, so the plaintext is
    only ever written once, by msgpack, and read once, by the cipher.
    """

    def __init__(self) -> None:
        self._packer = msgpack.Packer(autoreset=False, use_bin_type=True)

    @contextlib.contextmanager
    def encode(self, message: Message, rid: int = 0) -> Iterator[memoryview]:
        """The same bytes as ``encode(message, rid)``, as a view valid inside the block."""
        _check_envelope(message, rid)
        packer = self._packer
        try:
            packer.pack([message.TYPE, rid, message.to_wire()])
            with packer.getbuffer() as view:
                yield view
        finally:
            packer.reset()


def decode(plaintext: bytes | memoryview) -> tuple[Message | UnknownMessage, int]:
    """Parse one frame's plaintext into (message, rid); RemoteProtocolError if invalid."""
    try:
        envelope = msgpack.unpackb(plaintext, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"undecodable message: {exc}") from exc
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise RemoteProtocolError("message is not a [type, rid, body] array")
    type_, rid, body = envelope
    if not isinstance(type_, str) or not 0 < len(type_) <= MAX_NAME:
        raise RemoteProtocolError("message type is not a short string")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid <= U64.hi:
        raise RemoteProtocolError("request id is not an unsigned 64-bit integer")
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise RemoteProtocolError("message body is not a map with string keys")
    cls = REGISTRY.get(type_)
    if cls is None:
        return UnknownMessage(type_, body), rid
    if (cls.KIND is Kind.ONEWAY) != (rid == 0):
        raise RemoteProtocolError(f"{type_} is {cls.KIND.value}; rid {rid} invalid")
    try:
        return cls.from_wire(body), rid
    except LocalProtocolError as exc:
        raise RemoteProtocolError(str(exc)) from exc
