"""The local control API: an aiohttp server over the job engine, and its client.

Daemon side (aiohttp.web, the engine):

* ``server``: the app, token authentication, ``api.json``, life cycle;
* ``routes``: the ``/api/v1`` endpoints (docs/API.md); ``mesh_routes``: pairing, trust;
* ``validation``: request checks that give clear 4xx errors;
* ``state``: node facts and the hooks the mesh fills in.

Client side (what the CLI imports; neither imports the daemon side):

* ``wire``: what both sides agree on (paths, ``api.json``, headers);
* ``transport``: HTTP/1.1 requests with h11; ``client``: the API's calls.

This file imports nothing, so ``import meshd.api.client`` loads no server.
"""
