"""What the control API needs from the mesh, and nothing more: the ``MeshControl`` protocol.

The API layer defines this seam and the mesh satisfies it structurally
(``meshd.mesh.node.MeshNode``), so the API never imports the mesh's wiring: the
status and peer endpoints, trust and pairing (mesh_routes) see only these members.
A test or a mesh-less daemon can hand the API anything of this shape.

Errors ``join`` raises, by type: ``ValueError`` for a malformed address or code,
``meshd.link.TrustRefused`` (pairing errors are a kind of it) when the receiver
refuses or the code does not match, any other ``meshd.link.LinkError`` when the
receiver cannot be reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class TrustEntry(Protocol):
    """One row of the trust store, as the API shows it."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def addresses(self) -> tuple[str, ...]: ...
    @property
    def may_send_work(self) -> bool: ...
    @property
    def may_build_for_me(self) -> bool: ...
    @property
    def added_at(self) -> float: ...


class MeshControl(Protocol):
    @property
    def name(self) -> str:
        """The node's name as peers see it."""

    @property
    def fingerprint(self) -> str:
        """This node's identity: hex SHA-256 of its public key."""

    @property
    def port(self) -> int:
        """The peer-link port actually bound."""

    def node_info(self) -> dict[str, Any]:
        """Identity and roles, for ``status.node`` and ``/identity`` (JSON-ready)."""

    def peers(self) -> list[dict[str, Any]]:
        """Every peer the registry knows (JSON-ready)."""

    def trusted(self) -> Sequence[TrustEntry]:
        """The trust store, oldest entry first."""

    def trust_peer(
        self,
        fingerprint: str,
        *,
        name: str = "",
        addresses: tuple[str, ...] = (),
        may_send_work: bool = True,
        may_build_for_me: bool = True,
    ) -> TrustEntry:
        """Trust a peer, or widen its entry; sessions and dialling follow at once."""

    def untrust_peer(self, fingerprint: str) -> bool:
        """Remove a peer from the trust store (False if it was not there)."""

    def open_pairing(self, ttl: float) -> object:
        """Open a pairing window for ``ttl`` seconds; ``str()`` of the result is the code."""

    async def join(self, address: str, code: str) -> TrustEntry:
        """Pair with the receiver at ``address`` (HOST:PORT) using its code."""
