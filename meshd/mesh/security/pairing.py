"""Pairing: two nodes come to trust each other with a one-time code, no key typing.

The receiver opens a window (``PairingReceiver.open``, default 5 minutes, one use) and
shows a code: ``PPPP-PPPP-PPPP-PPPP-PPPP-SSSS-SSSS-SSSS`` (base32). The first 20
characters are a prefix of the receiver's fingerprint; the last 12 are a random
secret. The joiner (``pair_join``) connects in pairing mode and, when HS2 reveals the
receiver's authenticated key, checks it against the prefix *before* HS3: on a mismatch
it hangs up having sent neither its identity nor anything derived from the secret.
On a match it proves the secret inside the encrypted channel with an HMAC bound to the
session's transcript hash and both keys, so the proof cannot be replayed or relayed.
Then the receiver trusts the joiner with ``may_send_work`` and the joiner trusts the
receiver with ``may_build_for_me``.

Anyone on the LAN can open a pairing-mode session, so the window must survive
strangers who do not have the code: wrong proofs count *per source address* (an
IPv6 /64 counts as one), each doubles that source's wait before its next attempt,
and after MAX_FAILURES that source is shut out for the rest of the window; the
window itself stays open for everyone else. Only proofs that reach the secret
check count, and the secret check itself is rate-limited for all sources together
(GUESS_RATE per second, GUESS_BURST at once), so a stranger with many addresses
gets a bounded number of guesses per window: a flood can delay a pairing, not burn
the window or close it. Expired and used windows refuse pairing handshakes outright.
Warnings about refusals are rate-limited per source, so a flood does not fill the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from meshd.address import format_host_port
from meshd.link.errors import (
    CloseReason,
    ErrorCode,
    LinkError,
    RejectRequest,
    RequestFailed,
    TrustRefused,
)
from meshd.link.handshake import Mode
from meshd.link.messages import PairAccept, PairProof
from meshd.link.server import PeerCandidate, connect
from meshd.link.session import LinkSession, Router
from meshd.mesh.security.identity import Identity, short_fingerprint
from meshd.mesh.security.trust import TrustedPeer, TrustStore

_LOGGER = logging.getLogger(__name__)

DEFAULT_WINDOW: Final = 300.0  # seconds a pairing window stays open

# Fingerprint bits carried by the code: 20 base32 characters = 100 bits. The window
# does not bound an attacker's time, because the receiver's fingerprint is long-lived
# and public (mDNS TXT), so they can grind keys offline for as long as they like. A
# key whose SHA-256 fingerprint starts with 100 given bits is a second preimage: about
# 2**100 Ed25519 key generations (each worth ~2**16 SHA-256 runs, so ~2**116 hashes).
# The whole Bitcoin network (~2**69 hashes/s in 2025) would need ~2**47 s, millions of
# years; even against a million receivers at once (2**20 targets) it is 2**27 s ~ 4
# years of that network, for one LAN key substitution. 80 bits would not survive that.
PREFIX_CHARS: Final = 20

# Secret bits: 12 base32 characters = 60 bits. The secret can only be guessed online,
# within one window, through the rate-limited secret check below: at most
# GUESS_BURST + GUESS_RATE * ttl guesses, ~3,600 for the longest (1 h) window, so
# success odds stay below 2**-48 however many addresses the guesser has.
SECRET_CHARS: Final = 12

# Wrong proofs one source may send per window before it is shut out; each one
# doubles that source's wait before its next attempt (BACKOFF, 2*BACKOFF, ...), so a
# typo costs seconds and a stranger's guesses cost nobody else anything.
MAX_FAILURES: Final = 5
BACKOFF: Final = 1.0
# Secret checks per second for all sources together (a token bucket): far above a
# person typing a code, far below what would make guessing 60 bits plausible.
GUESS_RATE: Final = 1.0
GUESS_BURST: Final = 10
# Sources remembered per window; beyond it the oldest entry goes (the shared
# guess rate still bounds what a guesser with many addresses gets).
MAX_SOURCES: Final = 4096
# One refusal warning per source per this many seconds.
WARNING_INTERVAL: Final = 60.0

PROOF_LABEL: Final = b"meshd-link-v1 pair proof"
_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 base32, lower case
_CODE_RE = re.compile(rf"^[{_ALPHABET}]{{{PREFIX_CHARS + SECRET_CHARS}}}$")


class PairingError(TrustRefused):
    """Pairing did not happen: code malformed, key mismatch, refused, expired or wrong."""

    default_reason = CloseReason.PAIRING_FAILED


def fingerprint_prefix(fingerprint: bytes) -> str:
    """The code's fingerprint part: the first PREFIX_CHARS base32 characters."""
    return base64.b32encode(fingerprint).decode("ascii").lower()[:PREFIX_CHARS]


@dataclass(frozen=True)
class PairingCode:
    """A one-time pairing code: receiver fingerprint prefix + secret."""

    prefix: str
    secret: str

    def __str__(self) -> str:
        text = (self.prefix + self.secret).upper()
        return "-".join(text[i : i + 4] for i in range(0, len(text), 4))

    @classmethod
    def parse(cls, text: str) -> PairingCode:
        """Accept the code as typed: any case, with or without dashes and spaces."""
        cleaned = re.sub(r"[\s\-]", "", text).lower()
        if not _CODE_RE.match(cleaned):
            raise PairingError(f"a pairing code is {PREFIX_CHARS + SECRET_CHARS} base32 characters")
        return cls(cleaned[:PREFIX_CHARS], cleaned[PREFIX_CHARS:])

    @classmethod
    def new(cls, fingerprint: bytes) -> PairingCode:
        secret = "".join(secrets.choice(_ALPHABET) for _ in range(SECRET_CHARS))
        return cls(fingerprint_prefix(fingerprint), secret)

    def matches(self, fingerprint: bytes) -> bool:
        """Whether a peer's fingerprint is the one this code names."""
        return hmac.compare_digest(self.prefix, fingerprint_prefix(fingerprint))


def pairing_proof(secret: str, session_id: bytes, joiner_key: bytes, receiver_key: bytes) -> bytes:
    """HMAC-SHA256(secret, label || session id || joiner key || receiver key)."""
    message = PROOF_LABEL + session_id + joiner_key + receiver_key
    return hmac.new(secret.encode("ascii"), message, hashlib.sha256).digest()


def source_of(address: str | None) -> str:
    """Who a peer is for rate limits: the IP of its ``HOST:PORT`` (as the link reports
    it, also ``[v6]:port``), an IPv4-mapped IPv6 as IPv4, other IPv6 by its /64."""
    if not address:
        return "unknown"
    if address.startswith("["):
        host = address[1:].partition("]")[0]
    else:
        host = address.rpartition(":")[0] or address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Source:
    failures: int = 0
    retry_at: float = 0.0
    warned_at: float | None = None


@dataclass
class _Window:
    code: PairingCode
    expires_at: float
    tokens: float
    refilled_at: float
    used: bool = False
    failures: int = 0
    sources: dict[str, _Source] = field(default_factory=dict)

    def source(self, key: str) -> _Source:
        entry = self.sources.get(key)
        if entry is None:
            if len(self.sources) >= MAX_SOURCES:
                self.sources.pop(next(iter(self.sources)))
            entry = self.sources[key] = _Source()
        return entry


class PairingReceiver:
    """The receiver side: opens windows, gates pairing handshakes, checks proofs.

    Plug into the server as ``LinkServer(..., pairing=receiver.allow_handshake,
    pairing_router=receiver.router)``.
    """

    def __init__(
        self,
        identity: Identity,
        trust_store: TrustStore,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        max_failures: int = MAX_FAILURES,
        backoff: float = BACKOFF,
        guess_rate: float = GUESS_RATE,
        guess_burst: int = GUESS_BURST,
        on_paired: Callable[[TrustedPeer], None] = lambda _peer: None,
    ) -> None:
        """``on_paired`` is called with the new peer once it is in the trust store."""
        self._on_paired = on_paired
        self._identity = identity
        self._trust = trust_store
        self._name = name
        self._clock = clock
        self._max_failures = max_failures
        self._backoff = backoff
        self._guess_rate = guess_rate
        self._guess_burst = guess_burst
        self._window: _Window | None = None
        self.router = Router()
        self.router.on(PairProof, self.handle_proof)

    def open(self, ttl: float = DEFAULT_WINDOW) -> PairingCode:
        """Open a new window (replacing any open one) and return its code."""
        code = PairingCode.new(self._identity.fingerprint)
        now = self._clock()
        self._window = _Window(code, now + ttl, tokens=float(self._guess_burst), refilled_at=now)
        _LOGGER.info("pairing window open for %.0f s", ttl)
        return code

    def close(self) -> None:
        self._window = None

    @property
    def is_open(self) -> bool:
        window = self._window
        return window is not None and not window.used and self._clock() < window.expires_at

    @property
    def failures(self) -> int:
        """Wrong proofs checked against the secret in the current window (all sources)."""
        return self._window.failures if self._window is not None else 0

    def expires_in(self) -> float | None:
        """Seconds left in the open window, None if none is open."""
        if not self.is_open or self._window is None:
            return None
        return self._window.expires_at - self._clock()

    def _warn(self, window: _Window, source: str, message: str, *args: object) -> None:
        """A warning about ``source``, at most once per WARNING_INTERVAL."""
        entry = window.source(source)
        now = self._clock()
        if entry.warned_at is not None and now - entry.warned_at < WARNING_INTERVAL:
            return
        entry.warned_at = now
        _LOGGER.warning(message, *args)

    def _blocked(self, window: _Window, source: str) -> str | None:
        """Why ``source`` may not try now (shut out, or backing off), or None."""
        entry = window.sources.get(source)
        if entry is None:
            return None
        if entry.failures >= self._max_failures:
            return "too many wrong codes from this address"
        if self._clock() < entry.retry_at:
            return "wrong code; wait before trying again"
        return None

    def _take_guess(self, window: _Window) -> bool:
        """One token from the window's shared bucket of secret checks, if there is one."""
        now = self._clock()
        window.tokens = min(
            float(self._guess_burst),
            window.tokens + (now - window.refilled_at) * self._guess_rate,
        )
        window.refilled_at = now
        if window.tokens < 1.0:
            return False
        window.tokens -= 1.0
        return True

    def allow_handshake(self, candidate: PeerCandidate) -> bool:
        """Pairing-mode handshake gate: only while a window is open and this source may try."""
        window = self._window
        if not self.is_open or window is None:
            _LOGGER.info("pairing attempt from %s refused: no open window", candidate.address)
            return False
        source = source_of(candidate.address)
        why = self._blocked(window, source)
        if why is not None:
            self._warn(window, source, "pairing attempt from %s refused: %s", source, why)
            return False
        return True

    async def handle_proof(self, session: LinkSession, message: PairProof) -> PairAccept:
        """Router handler for ``pair_proof``: trust the joiner if the proof is right."""
        window = self._window
        peer = session.peer
        if peer.mode is not Mode.PAIRING:
            raise RejectRequest(ErrorCode.FORBIDDEN, "pairing proofs belong in pairing mode")
        if not self.is_open or window is None:
            raise RejectRequest(ErrorCode.PAIRING_FAILED, "pairing window closed or expired")
        source = source_of(peer.address)
        why = self._blocked(window, source)
        if why is not None:
            raise RejectRequest(ErrorCode.RATE_LIMITED, why)
        # Only now does a proof reach the secret: the shared bucket bounds the guesses.
        if not self._take_guess(window):
            self._warn(window, source, "pairing proof from %s not checked: rate limited", source)
            raise RejectRequest(ErrorCode.RATE_LIMITED, "too many pairing attempts; try again")
        expected = pairing_proof(
            window.code.secret, peer.session_id, peer.public_key, self._identity.public_key
        )
        if not hmac.compare_digest(expected, message.proof):
            window.failures += 1
            entry = window.source(source)
            entry.failures += 1
            entry.retry_at = self._clock() + self._backoff * 2 ** (entry.failures - 1)
            _LOGGER.warning(
                "wrong pairing code from %s (%s), attempt %d of %d from that address",
                peer.address,
                short_fingerprint(peer.fingerprint),
                entry.failures,
                self._max_failures,
            )
            if entry.failures >= self._max_failures:
                _LOGGER.warning(
                    "pairing: %s shut out for this window after %d wrong codes",
                    source,
                    entry.failures,
                )
            raise RejectRequest(ErrorCode.PAIRING_FAILED, "wrong pairing code")
        window.used = True
        trusted = self._trust.add(
            peer.fingerprint,
            public_key=peer.public_key,
            name=message.name,
            may_send_work=True,
        )
        self._on_paired(trusted)
        _LOGGER.info(
            "paired with %s (%s)", message.name or "unnamed", short_fingerprint(peer.fingerprint)
        )
        return PairAccept(self._name)


async def pair_join(
    host: str,
    port: int,
    code: str | PairingCode,
    identity: Identity,
    trust_store: TrustStore,
    *,
    name: str = "",
    timeout: float = 30.0,  # noqa: ASYNC109 - bounds connect, handshake and the proof round trip
) -> TrustedPeer:
    """Pair with the receiver at ``host:port`` using its code; return the stored peer.

    Raises ``PairingError`` if the code is malformed, the receiver's key does not match
    it (nothing secret is sent then), or the receiver refuses.
    """
    parsed = code if isinstance(code, PairingCode) else PairingCode.parse(code)
    mismatch = False

    def check(candidate: PeerCandidate) -> bool:
        nonlocal mismatch
        mismatch = not parsed.matches(candidate.fingerprint)
        if mismatch:
            _LOGGER.warning(
                "receiver at %s:%d has key %s, which does not match the pairing code",
                host,
                port,
                short_fingerprint(candidate.fingerprint),
            )
        return not mismatch

    try:
        session = await connect(
            host, port, identity, authorize=check, mode=Mode.PAIRING, timeout=timeout
        )
    except TrustRefused as exc:
        if mismatch:
            raise PairingError(
                "the receiver's key does not match the code (wrong code, or someone in "
                "between); nothing was sent"
            ) from exc
        raise PairingError(f"the receiver refused pairing: {exc}", reason=exc.reason) from exc
    outcome = CloseReason.PAIRING_FAILED
    try:
        proof = pairing_proof(
            parsed.secret, session.peer.session_id, identity.public_key, session.peer.public_key
        )
        try:
            reply = await session.request(PairProof(proof, name), PairAccept, timeout=timeout)
        except RequestFailed as exc:
            raise PairingError(f"the receiver rejected the pairing: {exc.detail}") from exc
        except LinkError as exc:
            raise PairingError(f"pairing interrupted: {exc}", reason=exc.reason) from exc
        peer = trust_store.add(
            session.peer.fingerprint,
            public_key=session.peer.public_key,
            name=reply.name,
            addresses=[format_host_port(host, port)],
            may_build_for_me=True,
        )
        outcome = CloseReason.PAIRING_COMPLETE
    finally:
        await session.close(outcome)
    _LOGGER.info("paired with receiver %s at %s:%d", peer.fingerprint[:16], host, port)
    return peer
