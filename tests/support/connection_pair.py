"""Two sans-IO link ``Connection`` objects talking in memory, as h11's ``ConnectionPair``.

Tests of the link core step through the handshake one message at a time (to tamper
with one, refuse at one, or stop half-way); :class:`ConnectionPair` names the steps so
no test pastes the dance again::

    pair = ConnectionPair()
    hs1 = pair.hs1()        # initiator → responder; the responder needs more data
    hs2 = pair.hs2()        # responder → initiator; the initiator authenticated it
    hs3 = pair.hs3()        # the initiator accepted; the responder authenticated it
    hello = pair.hello()    # the responder accepted; both are established
    # or all at once: pair.handshake()
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.link.connection import NEED_DATA, Connection, Established, PeerAuthenticated, Role
from meshd.link.handshake import Mode


@dataclass(frozen=True)
class Handshake:
    """The bytes of each handshake message, in order."""

    hs1: bytes
    hs2: bytes
    hs3: bytes
    hello: bytes


class ConnectionPair:
    """An initiator and a responder with fresh identities (or the ones given)."""

    def __init__(
        self,
        mode: Mode = Mode.NORMAL,
        *,
        initiator_key: Ed25519PrivateKey | None = None,
        responder_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.initiator = Connection(
            Role.INITIATOR, initiator_key or Ed25519PrivateKey.generate(), mode=mode
        )
        self.responder = Connection(Role.RESPONDER, responder_key or Ed25519PrivateKey.generate())

    def hs1(self) -> bytes:
        hs1 = self.initiator.initiate()
        self.responder.receive_data(hs1)
        assert self.responder.next_event() is NEED_DATA
        return hs1

    def hs2(self) -> bytes:
        hs2 = self.responder.data_to_send()
        self.initiator.receive_data(hs2)
        assert isinstance(self.initiator.next_event(), PeerAuthenticated)
        return hs2

    def hs3(self) -> bytes:
        self.initiator.accept_peer()
        hs3 = self.initiator.data_to_send()
        self.responder.receive_data(hs3)
        assert isinstance(self.responder.next_event(), PeerAuthenticated)
        return hs3

    def hello(self) -> bytes:
        self.responder.accept_peer()
        assert isinstance(self.responder.next_event(), Established)
        hello = self.responder.data_to_send()
        self.initiator.receive_data(hello)
        assert isinstance(self.initiator.next_event(), Established)
        return hello

    def handshake(self) -> Handshake:
        return Handshake(self.hs1(), self.hs2(), self.hs3(), self.hello())
