"""The peer link's one exception root, and the reason codes that travel on the wire.

Everything the link raises on purpose is a ``LinkError``; callers catch that one class
to mean "this session is unusable" and look at the subclass only when they need to act
differently (retry with backoff after a lost connection, never retry after
``TrustRefused``). Every error carries a ``CloseReason`` so the session can tell the
peer, and the user, why the link ended.

Like h11, protocol violations come in two flavours: ``LocalProtocolError`` (we tried to
do something the protocol forbids: a bug on our side) and ``RemoteProtocolError`` (the
peer sent bytes the protocol forbids). Both are ``ProtocolError``.
"""

from __future__ import annotations

import enum


class CloseReason(enum.IntEnum):
    """Why a link closed; sent in the ``close`` message and kept on the error.

    Values are part of the wire format (PROTOCOL.md section "Close reasons"); add new
    ones, never renumber.
    """

    NORMAL = 0
    GOING_AWAY = 1
    PROTOCOL_ERROR = 2
    AUTH_FAILED = 3
    UNTRUSTED = 4
    VERSION_MISMATCH = 5
    HEARTBEAT_TIMEOUT = 6
    PAIRING_CLOSED = 7
    PAIRING_FAILED = 8
    PAIRING_COMPLETE = 9
    FLOW_CONTROL = 10
    OVERLOAD = 11
    INTERNAL_ERROR = 12
    CONNECTION_LOST = 13
    HANDSHAKE_TIMEOUT = 14


def close_reason(code: int, fallback: CloseReason = CloseReason.NORMAL) -> CloseReason:
    """The CloseReason for a wire code; ``fallback`` for codes newer than this version."""
    try:
        return CloseReason(code)
    except ValueError:
        return fallback


class ErrorCode(enum.IntEnum):
    """Why one request failed; sent in the ``error`` message. The link stays open."""

    BAD_REQUEST = 1
    UNSUPPORTED = 2
    FORBIDDEN = 3
    BUSY = 4
    NOT_FOUND = 5
    INTERNAL = 6
    PAIRING_FAILED = 7
    RATE_LIMITED = 8
    CANCELLED = 9


class LinkError(Exception):
    """Root of every error the peer link raises on purpose."""

    default_reason: CloseReason = CloseReason.INTERNAL_ERROR

    def __init__(self, message: str, *, reason: CloseReason | None = None) -> None:
        super().__init__(message)
        self.reason: CloseReason = self.default_reason if reason is None else reason


class ProtocolError(LinkError):
    """Bytes or a sequence of messages that the protocol does not allow."""

    default_reason = CloseReason.PROTOCOL_ERROR


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (invalid message, wrong state): a local bug."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: malformed, oversize, replayed or tampered bytes."""


class HandshakeError(LinkError):
    """The peer could not be authenticated (bad signature, wrong key, no common version)."""

    default_reason = CloseReason.AUTH_FAILED


class TrustRefused(HandshakeError):
    """Authentication worked but one side does not trust the other (or pairing failed).

    ``by_peer`` says which side: True when the peer refused us (it sent ``close`` after
    the handshake), False when our own authorizer refused the peer's key. Callers act
    on it (a dialler stops retrying a key it refuses itself) instead of on the text.
    """

    default_reason = CloseReason.UNTRUSTED

    def __init__(
        self, message: str, *, reason: CloseReason | None = None, by_peer: bool = False
    ) -> None:
        super().__init__(message, reason=reason)
        self.by_peer = by_peer


class LinkClosed(LinkError):
    """The session is closed; ``by_peer`` says which side ended it."""

    default_reason = CloseReason.NORMAL

    def __init__(
        self, message: str, *, reason: CloseReason | None = None, by_peer: bool = False
    ) -> None:
        super().__init__(message, reason=reason)
        self.by_peer = by_peer


class PeerTimeout(LinkClosed):
    """The peer went silent for longer than the configured dead-peer time."""

    default_reason = CloseReason.HEARTBEAT_TIMEOUT


class RequestTimeout(LinkError, TimeoutError):
    """A request got no answer in time. The link itself may still be fine."""

    default_reason = CloseReason.NORMAL


class RequestFailed(LinkError):
    """The peer answered a request with an ``error`` message."""

    default_reason = CloseReason.NORMAL

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"request failed ({_code_name(code)}): {message}")
        self.code = code
        self.detail = message


class StreamError(LinkError):
    """A stream was aborted or its content did not match its digest."""

    default_reason = CloseReason.NORMAL


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return str(code)


class RejectRequest(Exception):
    """Raised by a request handler to answer with an ``error`` message of ``code``.

    Not a ``LinkError``: it never leaves the session; the requester sees
    ``RequestFailed`` with the same code and text.
    """

    def __init__(self, code: ErrorCode | int, message: str = "") -> None:
        super().__init__(message)
        self.code = int(code)
        self.message = message
