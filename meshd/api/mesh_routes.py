"""Control-API endpoints for the mesh: identity, trust and pairing (docs/API.md).

The daemon builds them around its mesh (anything that is a ``MeshControl``) and hands
them to the API through ``ApiHooks.routes``, so they share the token check and the
JSON error shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshd.address import AddressError, parse_host_port
from meshd.api.mesh_control import MeshControl, TrustEntry
from meshd.api.validation import (
    ApiError,
    bad_request,
    optional_bool,
    optional_number,
    optional_string,
    read_json,
)
from meshd.api.wire import API_PREFIX, DEFAULT_PAIRING_TTL, MAX_PAIRING_TTL
from meshd.link import LinkError, TrustRefused
from meshd.mesh.security.identity import parse_fingerprint


def trusted_to_dict(peer: TrustEntry) -> dict[str, Any]:
    return {
        "fingerprint": peer.fingerprint,
        "name": peer.name,
        "addresses": list(peer.addresses),
        "may_send_work": peer.may_send_work,
        "may_build_for_me": peer.may_build_for_me,
        "added_at": peer.added_at,
    }


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request, empty={})
    if not isinstance(body, dict):
        raise bad_request("invalid_json", "request body must be a JSON object")
    return body


def _fingerprint(text: object) -> str:
    if not isinstance(text, str):
        raise bad_request("invalid_fingerprint", "fingerprint must be a string")
    try:
        return parse_fingerprint(text).hex()
    except ValueError as exc:
        raise bad_request("invalid_fingerprint", str(exc)) from None


def _address(text: object) -> str:
    """A HOST:PORT from a request, in its canonical form (IPv6 in brackets)."""
    if not isinstance(text, str):
        raise bad_request("invalid_address", "address must be HOST:PORT")
    try:
        return str(parse_host_port(text))
    except AddressError as exc:
        raise bad_request("invalid_address", str(exc)) from None


def mesh_routes(mesh: MeshControl) -> list[web.RouteDef]:
    async def identity(_request: web.Request) -> web.Response:
        return web.json_response({"name": mesh.name, **mesh.node_info()})

    async def trust_list(_request: web.Request) -> web.Response:
        return web.json_response({"trusted": [trusted_to_dict(p) for p in mesh.trusted()]})

    async def trust_add(request: web.Request) -> web.Response:
        body = await _body(request)
        fingerprint = _fingerprint(body.get("fingerprint"))
        if fingerprint == mesh.fingerprint:
            raise bad_request("own_fingerprint", "that is this node's own fingerprint")
        address = body.get("address")
        if address is not None and address != "":
            address = _address(address)
        # Strict: "false" (a string) must not grant a role.
        peer = mesh.trust_peer(
            fingerprint,
            name=optional_string(body, "name", max_length=256),
            addresses=(address,) if address else (),
            may_send_work=optional_bool(body, "may_send_work", True),
            may_build_for_me=optional_bool(body, "may_build_for_me", True),
        )
        return web.json_response({"trusted": trusted_to_dict(peer)}, status=201)

    async def trust_remove(request: web.Request) -> web.Response:
        fingerprint = _fingerprint(request.match_info["fingerprint"])
        if not mesh.untrust_peer(fingerprint):
            raise ApiError(404, "not_trusted", f"{fingerprint[:16]} is not in the trust store")
        return web.json_response({"removed": fingerprint})

    async def pair_open(request: web.Request) -> web.Response:
        body = await _body(request)
        ttl = optional_number(body, "ttl", DEFAULT_PAIRING_TTL)
        if not 0 < ttl <= MAX_PAIRING_TTL:
            raise bad_request("invalid_ttl", f"ttl must be 1..{MAX_PAIRING_TTL:.0f} seconds")
        code = mesh.open_pairing(float(ttl))
        return web.json_response(
            {
                "code": str(code),
                "expires_in": int(ttl) if ttl.is_integer() else ttl,
                "fingerprint": mesh.fingerprint,
                "peer_port": mesh.port,
            },
            status=201,
        )

    async def pair_join(request: web.Request) -> web.Response:
        body = await _body(request)
        address, code = body.get("address"), body.get("code")
        if not isinstance(address, str) or not isinstance(code, str):
            raise bad_request("invalid_pairing", "give the receiver's HOST:PORT and its code")
        try:
            peer = await mesh.join(address, code)
        except TrustRefused as exc:  # a PairingError is one
            raise bad_request("pairing_failed", str(exc)) from None
        except ValueError as exc:
            raise bad_request("invalid_pairing", str(exc)) from None
        except LinkError as exc:
            raise ApiError(502, "peer_unreachable", f"{address}: {exc}") from None
        return web.json_response({"trusted": trusted_to_dict(peer)}, status=201)

    prefix = API_PREFIX
    return [
        web.get(f"{prefix}/identity", identity),
        web.get(f"{prefix}/trust", trust_list),
        web.post(f"{prefix}/trust", trust_add),
        web.delete(f"{prefix}/trust/{{fingerprint}}", trust_remove),
        web.post(f"{prefix}/pair/open", pair_open),
        web.post(f"{prefix}/pair/join", pair_join),
    ]
