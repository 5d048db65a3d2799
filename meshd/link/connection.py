"""The sans-IO link connection: handshake state machine plus sealed message transport.

Theory of operation (the shape of h11's ``Connection``): the caller moves bytes, this
class decides what they mean. ``receive_data(bytes)`` buffers what came off the wire
(``b""`` means EOF); ``next_event()`` returns the next ``Event`` or ``NEED_DATA``;
``data_to_send()`` returns bytes the protocol itself wants on the wire (handshake
replies, a refusal); ``send(message)`` returns the sealed frame for one message.

Both sides start in a role-specific state. The initiator calls ``initiate()``; after
HS2 it sees ``PeerAuthenticated`` and must ``accept_peer()`` or ``refuse_peer()`` —
refusing before HS3 means the initiator never reveals its identity or anything else to
a responder it does not like. The responder sees ``PeerAuthenticated`` after HS3 and
likewise decides; accepting sends ``hello`` (the first sealed frame), refusing sends a
sealed ``close`` with the reason. ``Established`` follows on both sides.

State transitions are the ``TRANSITIONS`` table; an input with no entry for the current
state is a protocol error. Any error moves the connection to ERROR, after which every
method refuses to work: a connection that saw a tampered byte is never used again.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshd.link import crypto
from meshd.link.errors import (
    CloseReason,
    HandshakeError,
    LinkClosed,
    LinkError,
    LocalProtocolError,
    RemoteProtocolError,
    TrustRefused,
    close_reason,
)
from meshd.link.framing import FrameBuffer, FrameOpener, FrameSealer, frame
from meshd.link.handshake import (
    HS1_SIZE,
    Hs1,
    Hs2Header,
    KeySchedule,
    Mode,
    Payload,
    dh,
    negotiate_caps,
    refusal,
    x25519_public,
)
from meshd.link.limits import (
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
)
from meshd.link.messages import Close, Encoder, Hello, Message, UnknownMessage, decode, encode


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


class State(enum.Enum):
    I_START = "i_start"
    I_AWAIT_HS2 = "i_await_hs2"
    I_DECIDE = "i_decide"
    I_AWAIT_HELLO = "i_await_hello"
    R_AWAIT_HS1 = "r_await_hs1"
    R_AWAIT_HS3 = "r_await_hs3"
    R_DECIDE = "r_decide"
    ESTABLISHED = "established"
    CLOSED = "closed"
    ERROR = "error"


class Input(enum.Enum):
    SEND_HS1 = "send_hs1"
    RECV_HS1 = "recv_hs1"
    RECV_HS2 = "recv_hs2"
    RECV_HS3 = "recv_hs3"
    ACCEPT = "accept"
    REFUSE = "refuse"
    RECV_HELLO = "recv_hello"
    RECV_MESSAGE = "recv_message"
    SEND_MESSAGE = "send_message"
    RECV_CLOSE = "recv_close"
    SEND_CLOSE = "send_close"
    EOF = "eof"


S, In = State, Input
TRANSITIONS: Final[dict[tuple[State, Input], State]] = {
    (S.I_START, In.SEND_HS1): S.I_AWAIT_HS2,
    (S.I_AWAIT_HS2, In.RECV_HS2): S.I_DECIDE,
    (S.I_DECIDE, In.ACCEPT): S.I_AWAIT_HELLO,
    (S.I_DECIDE, In.REFUSE): S.CLOSED,
    (S.I_AWAIT_HELLO, In.RECV_HELLO): S.ESTABLISHED,
    (S.R_AWAIT_HS1, In.RECV_HS1): S.R_AWAIT_HS3,
    (S.R_AWAIT_HS3, In.RECV_HS3): S.R_DECIDE,
    (S.R_DECIDE, In.ACCEPT): S.ESTABLISHED,
    (S.R_DECIDE, In.REFUSE): S.CLOSED,
    (S.ESTABLISHED, In.RECV_MESSAGE): S.ESTABLISHED,
    (S.ESTABLISHED, In.SEND_MESSAGE): S.ESTABLISHED,
    (S.ESTABLISHED, In.RECV_CLOSE): S.CLOSED,
    (S.ESTABLISHED, In.SEND_CLOSE): S.CLOSED,
    (S.ESTABLISHED, In.EOF): S.CLOSED,
}
_LOCAL_INPUTS: Final = frozenset(
    {In.SEND_HS1, In.ACCEPT, In.REFUSE, In.SEND_MESSAGE, In.SEND_CLOSE}
)

# Capabilities this implementation offers by default. "stream" = stream_* messages
# with flow control; "pair" = the pairing exchange; "provenance" = signed build records
# in artifact_reply (PROTOCOL.md section 14).
DEFAULT_CAPS: Final = ("pair", "provenance", "stream")


# -- events --------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerAuthenticated:
    """The peer proved it holds ``public_key``; now accept_peer() or refuse_peer()."""

    public_key: bytes
    fingerprint: bytes
    mode: Mode
    version: int
    caps: tuple[str, ...]
    agent: str


@dataclass(frozen=True)
class Established:
    """The session is ready; ``session_id`` is the final transcript hash (channel binding)."""

    public_key: bytes
    fingerprint: bytes
    mode: Mode
    version: int
    caps: tuple[str, ...]
    agent: str
    session_id: bytes


@dataclass(frozen=True)
class MessageReceived:
    """One message from the peer; ``rid`` correlates requests and responses (0 = one-way)."""

    message: Message | UnknownMessage
    rid: int


@dataclass(frozen=True)
class ConnectionClosed:
    """The session ended cleanly (a ``close`` message) or the peer hung up (EOF)."""

    reason: int
    message: str
    by_peer: bool


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

Event = PeerAuthenticated | Established | MessageReceived | ConnectionClosed


class Connection:
    """One side of one link, from the first handshake byte to the close."""

    def __init__(
        self,
        role: Role,
        identity: Ed25519PrivateKey,
        *,
        mode: Mode = Mode.NORMAL,
        caps: tuple[str, ...] = DEFAULT_CAPS,
        agent: str = "",
        versions: tuple[int, int] = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION),
        ephemeral: X25519PrivateKey | None = None,
        nonce: bytes | None = None,
    ) -> None:
        """``ephemeral`` and ``nonce`` are for golden vectors only; leave them unset."""
        self.role = role
        self.state = State.I_START if role is Role.INITIATOR else State.R_AWAIT_HS1
        self.mode = mode
        self.keys = KeySchedule()
        self.peer: PeerAuthenticated | None = None
        self.established: Established | None = None
        self.closed: ConnectionClosed | None = None
        self._identity = identity
        self._identity_public = crypto.raw_public_key(identity)
        self._caps = caps
        self._agent = agent
        self._versions = versions
        self._ephemeral = ephemeral or X25519PrivateKey.generate()
        self._nonce = nonce if nonce is not None else os.urandom(crypto.NONCE_SIZE)
        if len(self._nonce) != crypto.NONCE_SIZE:
            raise ValueError("handshake nonce must be 32 bytes")
        self._version = 0
        self._peer_payload: Payload | None = None
        self._buffer = FrameBuffer(MAX_HANDSHAKE_FRAME)
        self._eof = False
        self._out = bytearray()
        self._sealer: FrameSealer | None = None
        self._opener: FrameOpener | None = None
        self._encoder = Encoder()
        self._pending_event: Event | None = None
        # After the peer broke the protocol on an established session, our own sending
        # direction is still intact: we may seal exactly one ``close`` to say why.
        self._may_close_after_error = False

    # -- plumbing ---------------------------------------------------------------------

    def _transition(self, event: Input) -> None:
        new = TRANSITIONS.get((self.state, event))
        if new is None:
            error_cls = LocalProtocolError if event in _LOCAL_INPUTS else RemoteProtocolError
            raise error_cls(f"{event.value} not allowed in state {self.state.value}")
        self.state = new

    def _check_usable(self) -> None:
        if self.state is State.ERROR:
            raise LocalProtocolError("connection is in the error state and cannot be used")

    def data_to_send(self) -> bytes:
        """Bytes the protocol queued on its own (handshake replies, refusals); then empty."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the peer; ``b""`` signals EOF."""
        self._check_usable()
        if len(data) == 0:
            self._eof = True
        elif not self._eof:
            self._buffer.feed(data)

    def receive_buffer(self, size: int, most: int = 0) -> memoryview:
        """``size`` bytes of free space (up to ``most`` if already there) to read the
        peer's bytes straight into (``asyncio.BufferedProtocol.get_buffer``);
        ``receive_committed`` says how many."""
        self._check_usable()
        return self._buffer.writable(size, most)

    def receive_committed(self, size: int) -> None:
        """``size`` bytes were written into the last ``receive_buffer`` view.

        The same as ``receive_data`` of those bytes, minus the copy; bytes after EOF
        are dropped, like ``receive_data``'s.
        """
        self._check_usable()
        if size == 0:
            raise ValueError("signal EOF with receive_data(b'')")
        if not self._eof:
            self._buffer.commit(size)

    def trim_buffers(self) -> None:
        """Give back receive and send buffers a burst grew (call when idle; they regrow
        on demand). A partly received frame is kept."""
        self._buffer.trim()
        if self._opener is not None:
            self._opener.trim()
        self._encoder = Encoder()

    @property
    def buffered(self) -> int:
        """Received bytes not yet turned into events (the receiver's backlog)."""
        return self._buffer.pending

    @property
    def session_id(self) -> bytes:
        """The final transcript hash h4 (empty before HS3): binds proofs to this session."""
        return self.keys.h4

    # -- local actions ----------------------------------------------------------------

    def initiate(self) -> bytes:
        """Initiator only: the HS1 frame to send first."""
        self._check_usable()
        self._transition(Input.SEND_HS1)
        lo, hi = self._versions
        body = Hs1(lo, hi, self.mode, x25519_public(self._ephemeral), self._nonce).to_bytes()
        self.keys.h1 = crypto.mix(crypto.transcript_start(), body)
        return frame(body)

    def accept_peer(self) -> None:
        """Continue the handshake with the peer named in ``PeerAuthenticated``."""
        self._check_usable()
        self._transition(Input.ACCEPT)
        if self.role is Role.INITIATOR:
            self._send_hs3()
        else:
            self._out += self._sealer_or_fail().seal(
                encode(Hello(self._negotiated_caps(), self._agent))
            )
            self.established = self._make_established()
            self._pending_event = self.established

    def refuse_peer(self, reason: CloseReason, message: str = "") -> None:
        """End the handshake. A responder tells the peer why (sealed); an initiator just
        hangs up, having revealed nothing."""
        self._check_usable()
        self._transition(Input.REFUSE)
        if self.role is Role.RESPONDER:
            self._out += self._sealer_or_fail().seal(encode(Close(int(reason), message)))
        self.closed = ConnectionClosed(int(reason), message, by_peer=False)

    def send(self, message: Message, rid: int = 0) -> bytearray:
        """The sealed frame carrying ``message`` (established sessions only)."""
        self._check_usable()
        if self.state is not State.ESTABLISHED:
            raise LocalProtocolError(f"cannot send {message.TYPE} in state {self.state.value}")
        if isinstance(message, Close):
            raise LocalProtocolError("use close() to send a close message")
        sealer = self._sealer_or_fail()
        with self._encoder.encode(message, rid) as plaintext:
            return sealer.seal(plaintext)

    def close(
        self, reason: CloseReason = CloseReason.NORMAL, message: str = ""
    ) -> bytes | bytearray:
        """The sealed ``close`` frame if established (else b""); the connection is done.

        After a remote protocol error on an established session this still returns one
        sealed ``close`` (PROTOCOL.md "Errors and close"), so the peer learns why.
        """
        if self.state is State.ERROR and self._may_close_after_error:
            self._may_close_after_error = False
            self.closed = ConnectionClosed(int(reason), message, by_peer=False)
            return self._sealer_or_fail().seal(encode(Close(int(reason), message)))
        if self.state in (State.CLOSED, State.ERROR):
            return b""
        data: bytes | bytearray = b""
        if self.state is State.ESTABLISHED:
            self._transition(Input.SEND_CLOSE)
            data = self._sealer_or_fail().seal(encode(Close(int(reason), message)))
        else:
            self.state = State.CLOSED
        self.closed = ConnectionClosed(int(reason), message, by_peer=False)
        return data

    # -- receiving --------------------------------------------------------------------

    def next_event(self) -> Event | _NeedData:
        """The next event from buffered bytes, NEED_DATA, or a LinkError (fatal)."""
        self._check_usable()
        try:
            return self._next_event()
        except LinkError:
            self._may_close_after_error = self.state is State.ESTABLISHED
            self.state = State.ERROR
            raise

    def _next_event(self) -> Event | _NeedData:
        if self._pending_event is not None:
            event, self._pending_event = self._pending_event, None
            return event
        if self.state is State.CLOSED:
            assert self.closed is not None
            return self.closed
        if self.state in (State.I_START, State.I_DECIDE, State.R_DECIDE):
            return NEED_DATA
        if self.state in (State.I_AWAIT_HELLO, State.ESTABLISHED):
            # Sealed frames: decrypted in place, decoded before the next one is opened.
            plaintext = self._buffer.open_next(self._opener_or_fail())
            if plaintext is None:
                return self._need_data()
            with plaintext:
                message, rid = decode(plaintext)
            if self.state is State.I_AWAIT_HELLO:
                return self._on_hello(message)
            return self._on_message(message, rid)
        got = self._buffer.next_frame()
        if got is None:
            return self._need_data()
        prefix, body = got
        handler = {
            State.R_AWAIT_HS1: self._on_hs1,
            State.I_AWAIT_HS2: self._on_hs2,
            State.R_AWAIT_HS3: self._on_hs3,
        }[self.state]
        return handler(prefix, body)

    def _need_data(self) -> Event | _NeedData:
        return NEED_DATA if not self._eof else self._on_eof()

    def _on_eof(self) -> Event:
        if self._buffer.pending:
            raise RemoteProtocolError(
                f"connection ended inside a frame ({self._buffer.pending} bytes pending)",
            )
        if self.state is not State.ESTABLISHED:
            raise LinkClosed(
                f"peer hung up during the handshake ({self.state.value})",
                reason=CloseReason.CONNECTION_LOST,
                by_peer=True,
            )
        self._transition(Input.EOF)
        self.closed = ConnectionClosed(
            int(CloseReason.CONNECTION_LOST), "connection lost", by_peer=True
        )
        return self.closed

    def _on_hs1(self, _prefix: bytes, body: bytes) -> Event | _NeedData:
        hs1 = Hs1.parse(body)
        self._transition(Input.RECV_HS1)
        self.mode = hs1.mode
        lo, hi = self._versions
        version = min(hi, hs1.max_version)
        if version < max(lo, hs1.min_version):
            self._out += frame(refusal(hi))
            raise HandshakeError(
                f"no common protocol version (peer {hs1.min_version}-{hs1.max_version})",
                reason=CloseReason.VERSION_MISMATCH,
            )
        self._version = version
        k = self.keys
        k.h1 = crypto.mix(crypto.transcript_start(), body)
        header = Hs2Header(version, hs1.mode, x25519_public(self._ephemeral), self._nonce)
        header_bytes = header.to_bytes()
        k.h2 = crypto.mix(k.h1, header_bytes)
        k.after_hs2_header(dh(self._ephemeral, hs1.ephemeral))
        sig = crypto.sign(self._identity, crypto.LABEL_SIG_RESPONDER, k.h2, self._identity_public)
        payload = Payload(self._identity_public, sig, self._caps, self._agent).to_bytes()
        sealed = crypto.seal_once(k.k_hs_r2i, payload, k.h2)
        k.h3 = crypto.mix(k.h2, sealed)
        self._out += frame(header_bytes + sealed)
        return self._next_event()

    def _on_hs2(self, _prefix: bytes, body: bytes) -> Event:
        header, sealed = Hs2Header.parse(body)
        lo, hi = self._versions
        if not lo <= header.version <= hi:
            raise HandshakeError(
                f"peer chose protocol version {header.version}, we offered {lo}-{hi}",
                reason=CloseReason.VERSION_MISMATCH,
            )
        if header.mode is not self.mode:
            raise RemoteProtocolError("peer changed the handshake mode")
        self._transition(Input.RECV_HS2)
        self._version = header.version
        k = self.keys
        k.h2 = crypto.mix(k.h1, body[:HS1_SIZE])
        k.after_hs2_header(dh(self._ephemeral, header.ephemeral))
        payload = Payload.parse(crypto.open_once(k.k_hs_r2i, sealed, k.h2))
        crypto.verify(payload.identity, payload.signature, crypto.LABEL_SIG_RESPONDER, k.h2)
        k.h3 = crypto.mix(k.h2, sealed)
        return self._authenticated(payload)

    def _send_hs3(self) -> None:
        k = self.keys
        sig = crypto.sign(self._identity, crypto.LABEL_SIG_INITIATOR, k.h3, self._identity_public)
        payload = Payload(self._identity_public, sig, self._caps, self._agent).to_bytes()
        sealed = crypto.seal_once(k.k_hs_i2r, payload, k.h3)
        k.h4 = crypto.mix(k.h3, sealed)
        k.after_hs3()
        self._sealer = FrameSealer(k.k_i2r)
        self._opener = FrameOpener(k.k_r2i)
        self._buffer.max_frame = MAX_FRAME
        self._out += frame(sealed)

    def _on_hs3(self, _prefix: bytes, body: bytes) -> Event:
        self._transition(Input.RECV_HS3)
        k = self.keys
        payload = Payload.parse(crypto.open_once(k.k_hs_i2r, body, k.h3))
        crypto.verify(payload.identity, payload.signature, crypto.LABEL_SIG_INITIATOR, k.h3)
        k.h4 = crypto.mix(k.h3, body)
        k.after_hs3()
        self._sealer = FrameSealer(k.k_r2i)
        self._opener = FrameOpener(k.k_i2r)
        self._buffer.max_frame = MAX_FRAME
        return self._authenticated(payload)

    def _authenticated(self, payload: Payload) -> PeerAuthenticated:
        self._peer_payload = payload
        self.peer = PeerAuthenticated(
            public_key=payload.identity,
            fingerprint=crypto.fingerprint(payload.identity),
            mode=self.mode,
            version=self._version,
            caps=payload.caps,
            agent=payload.agent,
        )
        return self.peer

    def _on_hello(self, message: Message | UnknownMessage) -> Event:
        if isinstance(message, Close):
            self.state = State.CLOSED
            self.closed = ConnectionClosed(message.reason, message.message, by_peer=True)
            raise TrustRefused(
                f"peer refused the session: {_reason_text(message.reason)}"
                + (f" ({message.message})" if message.message else ""),
                reason=close_reason(message.reason, CloseReason.UNTRUSTED),
                by_peer=True,
            )
        if not isinstance(message, Hello):
            raise RemoteProtocolError("expected hello after the handshake")
        if message.caps != self._negotiated_caps():
            raise RemoteProtocolError("peer's negotiated capabilities differ from ours")
        self._transition(Input.RECV_HELLO)
        self.established = self._make_established()
        return self.established

    def _on_message(self, message: Message | UnknownMessage, rid: int) -> Event:
        if isinstance(message, Close):
            self._transition(Input.RECV_CLOSE)
            self.closed = ConnectionClosed(message.reason, message.message, by_peer=True)
            return self.closed
        if isinstance(message, Hello):
            raise RemoteProtocolError("hello after the session was established")
        self._transition(Input.RECV_MESSAGE)
        return MessageReceived(message, rid)

    # -- helpers ----------------------------------------------------------------------

    def _negotiated_caps(self) -> tuple[str, ...]:
        assert self._peer_payload is not None
        return negotiate_caps(self._caps, self._peer_payload.caps)

    def _make_established(self) -> Established:
        assert self.peer is not None
        return Established(
            public_key=self.peer.public_key,
            fingerprint=self.peer.fingerprint,
            mode=self.mode,
            version=self._version,
            caps=self._negotiated_caps(),
            agent=self.peer.agent,
            session_id=self.keys.h4,
        )

    def _sealer_or_fail(self) -> FrameSealer:
        if self._sealer is None:
            raise LocalProtocolError("no transport keys yet")
        return self._sealer

    def _opener_or_fail(self) -> FrameOpener:
        if self._opener is None:
            raise LocalProtocolError("no transport keys yet")
        return self._opener


def _reason_text(code: int) -> str:
    try:
        return CloseReason(code).name.lower()
    except ValueError:
        return f"reason {code}"
