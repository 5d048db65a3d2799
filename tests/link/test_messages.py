"""Every message type round-trips; every field cap refuses one step past its limit."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.link.errors import LocalProtocolError, RemoteProtocolError
from meshd.link.fields import (
    Bin,
    Bool,
    Choice,
    Float,
    Int,
    Opt,
    Seq,
    Spec,
    Str,
    StrMap,
    field_spec,
)
from meshd.link.limits import (
    MAX_CAPS,
    MAX_CHUNK_SIZE,
    MAX_LIST,
    MAX_META,
    MAX_NAME,
    MAX_STR,
)
from meshd.link.messages import (
    REGISTRY,
    HaveQuery,
    Hello,
    Kind,
    LaneStatus,
    LogLine,
    Message,
    Ping,
    StreamChunk,
    StreamOpen,
    UnknownMessage,
    decode,
    encode,
)

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


def strategy(spec: Spec) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for values a field spec accepts (kept small for speed)."""
    if isinstance(spec, Int):
        return st.integers(spec.lo, spec.hi)
    if isinstance(spec, Float):
        return st.floats(spec.lo, spec.hi, allow_nan=False, allow_infinity=False)
    if isinstance(spec, Bool):
        return st.booleans()
    if isinstance(spec, Str):
        return st.text(
            st.characters(exclude_categories=("Cs",)),
            min_size=spec.min_len,
            max_size=min(spec.max_len, 40),
        )
    if isinstance(spec, Choice):
        return st.sampled_from(sorted(spec.options))
    if isinstance(spec, Bin):
        return st.binary(min_size=spec.min_len, max_size=min(spec.max_len, 64))
    if isinstance(spec, Opt):
        return st.none() | strategy(spec.inner)
    if isinstance(spec, Seq):
        return st.lists(strategy(spec.inner), max_size=min(spec.max_items, 5)).map(tuple)
    if isinstance(spec, StrMap):
        return st.dictionaries(strategy(spec.key), strategy(spec.value), max_size=4)
    raise AssertionError(f"no strategy for {spec!r}")


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    fields = {f.name: strategy(field_spec(f)) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


def rid_for(cls: type[Message]) -> st.SearchStrategy[int]:
    return st.just(0) if cls.KIND is Kind.ONEWAY else st.integers(1, 2**64 - 1)


ALL_TYPES = sorted(REGISTRY.values(), key=lambda c: c.TYPE)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.TYPE)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls))
    rid = data.draw(rid_for(cls))
    assert decode(encode(message, rid)) == (message, rid)


def test_registry_lists_every_message_the_mesh_needs() -> None:
    expected = {
        "hello", "ping", "pong", "close", "error", "pair_proof", "pair_accept",
        "lane_status", "compile_request", "compile_accept", "compile_reject", "log_line",
        "job_state", "cancel", "have_query", "have_reply", "artifact_request",
        "artifact_reply", "blob_request", "blob_reply", "node_info", "stream_open",
        "stream_chunk", "stream_end", "stream_abort",
        "stream_window", "cache_get", "cache_entry", "cache_put",
    }  # fmt: skip
    assert set(REGISTRY) == expected


def test_unknown_type_decodes_as_unknown() -> None:
    raw = msgpack.packb(["lane_forecast", 0, {"minutes": 3}], use_bin_type=True)
    assert decode(raw) == (UnknownMessage("lane_forecast", {"minutes": 3}), 0)


def test_unknown_fields_are_ignored() -> None:
    raw = msgpack.packb(["ping", 0, {"seq": 5, "added_in_v2": True}], use_bin_type=True)
    assert decode(raw) == (Ping(5), 0)


def test_missing_field_is_remote_error() -> None:
    with pytest.raises(RemoteProtocolError, match="missing field"):
        decode(msgpack.packb(["ping", 0, {}]))


@pytest.mark.parametrize(
    "envelope",
    [
        ["ping", 0],
        ["ping", 0, {"seq": 1}, "extra"],
        [1, 0, {}],
        ["", 0, {}],
        ["ping", -1, {"seq": 1}],
        ["ping", True, {"seq": 1}],
        ["ping", 0, []],
        ["ping", 7, {"seq": 1}],  # one-way with a request id
        ["have_query", 0, {"digests": []}],  # request without one
        {"type": "ping"},
    ],
)
def test_bad_envelopes_are_remote_errors(envelope: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(msgpack.packb(envelope, use_bin_type=True))


def test_garbage_is_remote_error() -> None:
    for raw in (b"", b"\xc1", b"\x93\xa4ping", b"\x93\xa4ping\x00\x81\x01\x02"):
        with pytest.raises(RemoteProtocolError):
            decode(raw)


def test_wrong_field_type_is_local_error_when_constructing() -> None:
    with pytest.raises(LocalProtocolError):
        Ping("1")  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        Ping(True)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        LaneStatus(1, 0, 0)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        LaneStatus(True, 0, 0, float("nan"))
    with pytest.raises(LocalProtocolError):
        LogLine("job", "\ud800")  # a lone surrogate cannot be UTF-8


def test_encode_checks_rid_against_kind() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Ping(1), rid=3)
    with pytest.raises(LocalProtocolError):
        encode(HaveQuery(()), rid=0)


# -- caps: the limit itself passes, one past it fails ---------------------------------


def test_cap_max_str() -> None:
    LogLine("j", "x" * MAX_STR)
    with pytest.raises(LocalProtocolError):
        LogLine("j", "x" * (MAX_STR + 1))


def test_cap_max_name() -> None:
    LogLine("j" * MAX_NAME, "")
    with pytest.raises(LocalProtocolError):
        LogLine("j" * (MAX_NAME + 1), "")


def test_cap_max_list() -> None:
    HaveQuery((b"d" * 32,) * MAX_LIST)
    with pytest.raises(LocalProtocolError):
        HaveQuery((b"d" * 32,) * (MAX_LIST + 1))


def test_cap_max_caps() -> None:
    Hello(tuple(f"c{i}" for i in range(MAX_CAPS)))
    with pytest.raises(LocalProtocolError):
        Hello(tuple(f"c{i}" for i in range(MAX_CAPS + 1)))


def test_cap_max_meta() -> None:
    StreamOpen(1, "k", meta={str(i): "v" for i in range(MAX_META)})
    with pytest.raises(LocalProtocolError):
        StreamOpen(1, "k", meta={str(i): "v" for i in range(MAX_META + 1)})


def test_cap_max_chunk() -> None:
    StreamChunk(1, bytes(MAX_CHUNK_SIZE))
    with pytest.raises(LocalProtocolError):
        StreamChunk(1, bytes(MAX_CHUNK_SIZE + 1))


def test_caps_apply_to_received_bytes_too() -> None:
    raw = msgpack.packb(["stream_chunk", 0, {"sid": 1, "data": bytes(MAX_CHUNK_SIZE + 1)}])
    with pytest.raises(RemoteProtocolError):
        decode(raw)


def test_digest_must_be_32_bytes() -> None:
    with pytest.raises(LocalProtocolError):
        HaveQuery((b"short",))
