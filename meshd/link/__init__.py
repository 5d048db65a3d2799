"""The peer link: an authenticated, encrypted msgpack session between two meshd nodes.

Layers (imports point downwards only):

* ``connection`` (sans-IO): handshake state machine and sealed frames; with
  ``handshake``, ``framing``, ``crypto``, ``messages``, ``fields``, ``limits``, ``errors``.
* ``session``: ``LinkSession``, the asyncio shell (requests, streams, heartbeats).
* ``server``: ``connect()`` and ``LinkServer`` (handshake + trust decision).

The wire format is specified in protocol/PROTOCOL.md.
"""

from meshd.link.connection import Connection, Role
from meshd.link.errors import (
    CloseReason,
    ErrorCode,
    HandshakeError,
    LinkClosed,
    LinkError,
    LocalProtocolError,
    PeerTimeout,
    ProtocolError,
    RejectRequest,
    RemoteProtocolError,
    RequestFailed,
    RequestTimeout,
    StreamError,
    TrustRefused,
)
from meshd.link.handshake import Mode
from meshd.link.server import (
    Authorizer,
    LinkServer,
    PeerCandidate,
    connect,
    expect_fingerprint,
)
from meshd.link.session import LinkSession, PeerInfo, Router, SessionConfig
from meshd.link.streams import IncomingStream

__all__ = [
    "Authorizer",
    "CloseReason",
    "Connection",
    "ErrorCode",
    "HandshakeError",
    "IncomingStream",
    "LinkClosed",
    "LinkError",
    "LinkServer",
    "LinkSession",
    "LocalProtocolError",
    "Mode",
    "PeerCandidate",
    "PeerInfo",
    "PeerTimeout",
    "ProtocolError",
    "RejectRequest",
    "RemoteProtocolError",
    "RequestFailed",
    "RequestTimeout",
    "Role",
    "Router",
    "SessionConfig",
    "StreamError",
    "TrustRefused",
    "connect",
    "expect_fingerprint",
]
