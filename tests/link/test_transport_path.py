"""The fast transport path: in-place sealing and opening, the reused packer, and the
stream hash on a worker thread. Each must give exactly the bytes and verdicts of the
plain path, at every chunk boundary and for hostile input."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading

import pytest

from meshd.link import IncomingStream, RemoteProtocolError, StreamError, hashing
from meshd.link.errors import CloseReason
from meshd.link.framing import FrameBuffer, FrameOpener, FrameSealer
from meshd.link.hashing import BATCH, INLINE_BELOW, BackgroundSha256
from meshd.link.limits import MAX_CHUNK_SIZE, MAX_FRAME, STREAM_WINDOW, TAG_SIZE
from meshd.link.messages import Encoder, Ping, StreamChunk, StreamEnd, StreamOpen, decode, encode

KEY = bytes(range(32))


def _frames(plaintexts: list[bytes]) -> bytes:
    sealer = FrameSealer(KEY)
    return b"".join(bytes(sealer.seal(p)) for p in plaintexts)


# -- framing --------------------------------------------------------------------------


def test_seal_is_the_same_frame_as_encrypt_then_prefix() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from meshd.link.crypto import aead_nonce

    plaintext = os.urandom(1000)
    frame = FrameSealer(KEY).seal(memoryview(plaintext))
    prefix = (len(plaintext) + TAG_SIZE).to_bytes(4, "big")
    assert bytes(frame) == prefix + ChaCha20Poly1305(KEY).encrypt(aead_nonce(0), plaintext, prefix)


@pytest.mark.parametrize("seed", range(5))
def test_open_next_at_every_split(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [0, 1, 15, 16, 17, 4096, 65_535, 300_000, MAX_FRAME - TAG_SIZE]
    plaintexts = [rng.randbytes(rng.choice(sizes)) for _ in range(12)]
    wire = _frames(plaintexts)
    buffer, opener = FrameBuffer(MAX_FRAME), FrameOpener(KEY)
    got: list[bytes] = []
    pos = 0
    while pos < len(wire):
        step = rng.choice([1, 3, 4, 5, 1000, 65_536, 1_100_000])
        buffer.feed(wire[pos : pos + step])
        pos += step
        while (plaintext := buffer.open_next(opener)) is not None:
            with plaintext:
                got.append(bytes(plaintext))
    assert got == plaintexts
    assert buffer.pending == 0


def test_open_next_refuses_an_oversize_length_from_its_prefix_alone() -> None:
    buffer = FrameBuffer(MAX_FRAME)
    buffer.feed((MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="exceeds limit"):
        buffer.open_next(FrameOpener(KEY))


@pytest.mark.parametrize("where", [0, 3, 4, 20, -16, -1])
def test_open_next_refuses_any_altered_byte(where: int) -> None:
    wire = bytearray(_frames([b"first", os.urandom(5000)]))
    first_len = 4 + 5 + TAG_SIZE
    second = first_len + (where if where >= 0 else len(wire) - first_len + where)
    wire[second] ^= 0x40
    buffer, opener = FrameBuffer(MAX_FRAME), FrameOpener(KEY)
    buffer.feed(wire)
    first = buffer.open_next(opener)
    assert first is not None and bytes(first) == b"first"
    with pytest.raises(RemoteProtocolError):  # a longer length waits for more bytes
        while buffer.open_next(opener) is None:
            buffer.feed(bytes(64))
    assert opener.counter == 1  # nothing past the bad frame was accepted


def test_open_next_refuses_replayed_and_reordered_frames() -> None:
    wire = [bytes(FrameSealer(KEY).seal(b"x"))]  # counter 0 each time: a replay
    sealer = FrameSealer(KEY)
    first, second = bytes(sealer.seal(b"a")), bytes(sealer.seal(b"b"))
    for stream in (first + wire[0], second + first):
        buffer, opener = FrameBuffer(MAX_FRAME), FrameOpener(KEY)
        buffer.feed(stream)
        with pytest.raises(RemoteProtocolError, match="authentication"):
            while buffer.open_next(opener) is not None:
                pass


def test_open_next_refuses_a_frame_shorter_than_its_tag() -> None:
    buffer = FrameBuffer(MAX_FRAME)
    buffer.feed((TAG_SIZE - 1).to_bytes(4, "big") + bytes(TAG_SIZE - 1))
    with pytest.raises(RemoteProtocolError, match="shorter than its tag"):
        buffer.open_next(FrameOpener(KEY))


def test_a_plaintext_view_stays_valid_until_the_next_frame() -> None:
    wire = _frames([b"a" * 100, b"b" * 2_000_00])
    buffer, opener = FrameBuffer(MAX_FRAME), FrameOpener(KEY)
    buffer.feed(wire)
    first = buffer.open_next(opener)
    assert first is not None
    kept = first  # a caller that wrongly keeps the view while growing the buffer
    second = buffer.open_next(opener)
    assert second is not None and bytes(second) == b"b" * 2_000_00
    assert bytes(kept) == b"a" * 100  # the grown buffer is new; the old view is intact


# -- the reused packer ------------------------------------------------------------------


def test_encoder_writes_exactly_what_encode_writes() -> None:
    encoder = Encoder()
    data = os.urandom(MAX_CHUNK_SIZE)
    for message, rid in [
        (StreamOpen(1, "bundle", "n", 5, {"k": "v"}), 0),
        (StreamChunk(1, memoryview(data)), 0),
        (StreamChunk(3, b""), 0),
        (StreamEnd(1, hashlib.sha256(data).digest()), 0),
        (Ping(7), 0),
    ]:
        with encoder.encode(message, rid) as view:
            assert bytes(view) == encode(message, rid)
            assert decode(view)[0] == decode(encode(message, rid))[0]


def test_encoder_is_clean_after_a_refused_message() -> None:
    encoder = Encoder()
    with pytest.raises(Exception, match="invalid"), encoder.encode(Ping(1), rid=4):
        pass
    with pytest.raises(RuntimeError), encoder.encode(Ping(2)):
        raise RuntimeError("the caller failed inside the block")
    with encoder.encode(Ping(3)) as view:
        assert bytes(view) == encode(Ping(3))


# -- the stream hash ---------------------------------------------------------------------


async def test_background_hash_matches_hashlib_at_every_size() -> None:
    rng = random.Random(1)
    hasher, reference = BackgroundSha256(offload=True), hashlib.sha256()
    sizes = [0, 1, INLINE_BELOW - 1, INLINE_BELOW, BATCH - 1, BATCH, 3 * BATCH + 7]
    for _ in range(40):
        data = rng.randbytes(rng.choice(sizes))
        hasher.update(data if rng.random() < 0.5 else memoryview(data))
        reference.update(data)
        if rng.random() < 0.2:
            await hasher.settle()
            assert hasher.pending == 0
    assert await hasher.digest() == reference.digest()
    with pytest.raises(RuntimeError):
        hasher.update(b"late")


async def test_inline_hash_matches_hashlib_and_never_pins_bytes() -> None:
    hasher, reference = BackgroundSha256(offload=False), hashlib.sha256()
    for size in (0, 1, INLINE_BELOW, 3 * BATCH):
        data = os.urandom(size)
        hasher.update(data)
        reference.update(data)
        assert hasher.pending == 0
    assert await hasher.digest() == reference.digest()


async def test_interleaved_hashes_stay_in_their_own_order() -> None:
    parts = [[os.urandom(INLINE_BELOW * (i + 1)) for i in range(6)] for _ in range(3)]
    hashers = [BackgroundSha256(offload=True) for _ in parts]
    for step in range(6):
        for hasher, chunks in zip(hashers, parts, strict=True):
            hasher.update(chunks[step])
    digests = await asyncio.gather(*(h.digest() for h in hashers))
    assert digests == [hashlib.sha256(b"".join(chunks)).digest() for chunks in parts]


class _Blocker:
    """Work that holds the hashing thread until released, so a settle surely waits."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def _hash_batch(self, _batch: list[bytes], _size: int) -> None:
        self.release.wait(10)


async def test_a_cancelled_settle_leaves_the_hash_intact() -> None:
    data = os.urandom(2 * BATCH)
    blocker = _Blocker()
    hashing._submit((blocker, [], 0))  # type: ignore[arg-type]
    try:
        hasher = BackgroundSha256(offload=True)
        hasher.update(data)
        waiter = asyncio.ensure_future(hasher.settle())
        await asyncio.sleep(0.05)
        assert not waiter.done() and hasher.pending == len(data)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    finally:
        blocker.release.set()
    assert await hasher.digest() == hashlib.sha256(data).digest()
    assert hasher.pending == 0


@pytest.fixture(params=[True, False], ids=["thread", "inline"])
def offload(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Streams hash on the worker thread, or inline (hashing.OFFLOAD decides by CPUs)."""
    monkeypatch.setattr(hashing, "OFFLOAD", request.param)
    return bool(request.param)


def _incoming(size: int | None = None) -> IncomingStream:
    return IncomingStream(StreamOpen(1, "blob", "x", size), lambda sid, n: None)


async def test_a_large_stream_with_a_wrong_digest_fails_at_the_end(offload: bool) -> None:
    chunks = [os.urandom(MAX_CHUNK_SIZE) for _ in range(3)]
    stream = _incoming()
    for chunk in chunks:
        stream.feed(chunk)
    altered = hashlib.sha256(b"".join(chunks) + b"!").digest()
    stream.end(altered)
    got: list[bytes] = []
    with pytest.raises(StreamError, match="SHA-256 mismatch"):
        async for chunk in stream:
            got.append(chunk)
    assert got == chunks  # the bytes were handed over; the verdict came last
    assert stream.digest == hashlib.sha256(b"".join(chunks)).digest()


async def test_a_large_stream_with_the_right_digest_ends_cleanly(offload: bool) -> None:
    chunks = [os.urandom(MAX_CHUNK_SIZE) for _ in range(3)]
    stream = _incoming(size=3 * MAX_CHUNK_SIZE)
    for chunk in chunks:
        stream.feed(chunk)
    stream.end(hashlib.sha256(b"".join(chunks)).digest())
    assert await stream.read_all(10 * MAX_CHUNK_SIZE) == b"".join(chunks)
    assert stream.digest == hashlib.sha256(b"".join(chunks)).digest()


async def test_a_stream_that_dies_after_its_end_still_checks_the_digest(offload: bool) -> None:
    chunk = os.urandom(MAX_CHUNK_SIZE)
    stream = _incoming()
    stream.feed(chunk)
    stream.end(b"\x00" * 32)
    stream.fail(StreamError("link died"))  # everything had arrived: the digest decides
    with pytest.raises(StreamError, match="SHA-256 mismatch"):
        await stream.read_all(2 * MAX_CHUNK_SIZE)


async def test_stream_overrunning_its_window_is_refused_before_hashing() -> None:
    stream = _incoming()
    for _ in range(STREAM_WINDOW // MAX_CHUNK_SIZE):
        stream.feed(bytes(MAX_CHUNK_SIZE))
    with pytest.raises(RemoteProtocolError) as caught:
        stream.feed(b"x")
    assert caught.value.reason is CloseReason.FLOW_CONTROL
