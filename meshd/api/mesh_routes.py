"""Control-API endpoints for the mesh: identity, trust and pairing (docs/API.md).

The daemon builds them around its ``MeshNode`` and hands them to the API through
``ApiHooks.routes``, so they share the token check and the JSON error shape.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshd.api.validation import ApiError, bad_request, read_json
from meshd.api.wire import API_PREFIX, DEFAULT_PAIRING_TTL, MAX_PAIRING_TTL
from meshd.link import LinkError, TrustRefused
from meshd.mesh.node import MeshNode
from meshd.mesh.security.identity import parse_fingerprint
from meshd.mesh.security.pairing import PairingError
from meshd.mesh.security.trust import TrustedPeer


def trusted_to_dict(peer: TrustedPeer) -> dict[str, Any]:
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


def mesh_routes(mesh: MeshNode) -> list[web.RouteDef]:
    async def identity(_request: web.Request) -> web.Response:
        return web.json_response({"name": mesh.settings.name, **mesh.node_info()})

    async def trust_list(_request: web.Request) -> web.Response:
        return web.json_response({"trusted": [trusted_to_dict(p) for p in mesh.trust.list()]})

    async def trust_add(request: web.Request) -> web.Response:
        body = await _body(request)
        fingerprint = _fingerprint(body.get("fingerprint"))
        if fingerprint == mesh.identity.fingerprint_hex:
            raise bad_request("own_fingerprint", "that is this node's own fingerprint")
        address = body.get("address")
        if address is not None and not isinstance(address, str):
            raise bad_request("invalid_address", "address must be HOST:PORT")
        name = body.get("name") or ""
        peer = mesh.trust_peer(
            fingerprint,
            name=str(name),
            addresses=(address,) if address else (),
            may_send_work=bool(body.get("may_send_work", True)),
            may_build_for_me=bool(body.get("may_build_for_me", True)),
        )
        return web.json_response({"trusted": trusted_to_dict(peer)}, status=201)

    async def trust_remove(request: web.Request) -> web.Response:
        fingerprint = _fingerprint(request.match_info["fingerprint"])
        if not mesh.untrust_peer(fingerprint):
            raise ApiError(404, "not_trusted", f"{fingerprint[:16]} is not in the trust store")
        return web.json_response({"removed": fingerprint})

    async def pair_open(request: web.Request) -> web.Response:
        body = await _body(request)
        ttl = body.get("ttl", DEFAULT_PAIRING_TTL)
        if not isinstance(ttl, int | float) or not 0 < ttl <= MAX_PAIRING_TTL:
            raise bad_request("invalid_ttl", f"ttl must be 1..{MAX_PAIRING_TTL:.0f} seconds")
        code = mesh.open_pairing(float(ttl))
        return web.json_response(
            {
                "code": str(code),
                "expires_in": ttl,
                "fingerprint": mesh.identity.fingerprint_hex,
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
        except (PairingError, TrustRefused) as exc:
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
