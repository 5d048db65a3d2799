"""Protocol constants and every cap on a peer-controlled size, each with its reason.

These values are normative: PROTOCOL.md repeats them, and each cap has a negative test
in tests/link. Changing one is a protocol change.
"""

from __future__ import annotations

from typing import Final

# The one wire version this code speaks. A version byte range in HS1 lets a later
# release speak 1 and 2 at once; the responder picks the highest common one.
PROTOCOL_VERSION: Final = 1
MIN_PROTOCOL_VERSION: Final = 1

# Four magic bytes open HS1 and HS2 so a stray HTTP client or port scanner is
# rejected on its first bytes instead of being parsed as a key exchange.
MAGIC: Final = b"MSHD"

# Length prefix of every frame: a 4-byte big-endian unsigned integer.
LENGTH_PREFIX_SIZE: Final = 4

# Largest sealed frame body (ciphertext + tag) after the handshake. 1 MiB leaves room
# for a largest (512 KiB) chunk twice over while keeping the worst case a hostile peer can
# make us buffer per connection small enough for a Raspberry Pi.
MAX_FRAME: Final = 1024 * 1024

# Largest handshake frame. The real ones are well under 400 bytes (keys, nonces,
# signatures, a short capability list); anything bigger is not meshd.
MAX_HANDSHAKE_FRAME: Final = 4096

# Poly1305 tag appended to every sealed frame.
TAG_SIZE: Final = 16

# Smallest sealed frame: an empty plaintext still carries its tag.
MIN_SEALED_FRAME: Final = TAG_SIZE

# The per-direction nonce counter is 64 bits; at 2**64 - 1 the session must be
# re-established (never reached in practice: 2**64 frames of 1 byte is centuries).
MAX_NONCE: Final = 2**64 - 1

# Default payload per stream chunk: the largest MAX_CHUNK_SIZE allows. The per-frame
# Python work (one msgpack pack, one AEAD call, one write, one dispatch) is a fixed cost,
# so halving the frames per MiB cut the link's loop CPU per MiB by about a fifth
# (docs/PERFORMANCE.md "Peer link"); an interleaved message (a log line, a heartbeat)
# still waits at most one chunk, about 4 ms at 1 Gbit/s.
DEFAULT_CHUNK_SIZE: Final = 512 * 1024

# Largest data field of one stream chunk; must fit MAX_FRAME with envelope overhead.
MAX_CHUNK_SIZE: Final = 512 * 1024

# Bytes of one stream a receiver lets the sender have in flight before it waits for
# credit. Bounds receive-side memory per stream; 2 MiB keeps a gigabit LAN busy for
# about 16 ms, longer than a LAN round trip, so credit arrives before the sender stalls.
STREAM_WINDOW: Final = 2 * 1024 * 1024

# Concurrent incoming streams per session. With STREAM_WINDOW this caps buffered
# stream data per session at 16 MiB worst case, affordable even on a Raspberry Pi.
MAX_STREAMS: Final = 8

# String/list caps inside messages: peer-controlled, so each has a ceiling.
MAX_STR: Final = 64 * 1024  # a log line or error text; longer lines are cut by senders
MAX_NAME: Final = 256  # device names, job ids, stream names, capability names
MAX_LIST: Final = 4096  # digests in a have/need query, names in a request
MAX_CAPS: Final = 64  # capability names in the handshake
MAX_META: Final = 64  # key/value pairs in stream metadata

# Heartbeats (PROTOCOL.md "Heartbeats and liveness"): a ping every interval, and a
# peer silent for DEAD_AFTER_INTERVALS intervals is dead. 10 s is meshd's ``heartbeat``
# setting default (meshd.config): a dead receiver is noticed within half a minute,
# while a Pi busy compiling never misses three pings in a row.
DEFAULT_HEARTBEAT_INTERVAL: Final = 10.0
DEAD_AFTER_INTERVALS: Final = 3

# A peer must finish the whole handshake within this many seconds, so half-open
# connections from a scanner cannot pin sockets.
HANDSHAKE_TIMEOUT: Final = 10.0
