"""The local control API: an aiohttp server over the job engine, and its client.

* ``server``: the app, token authentication, ``api.json``, life cycle;
* ``routes``: the ``/api/v1`` endpoints (docs/API.md);
* ``validation``: request checks that give clear 4xx errors;
* ``state``: node facts and the hooks the mesh fills in;
* ``client``: what the CLI uses to talk to a daemon.
"""

from meshd.api.server import API_FILENAME, ApiServer, load_token, write_api_file
from meshd.api.state import API_PREFIX, ApiHooks, NodeInfo
from meshd.api.validation import ApiError

__all__ = [
    "API_FILENAME",
    "API_PREFIX",
    "ApiError",
    "ApiHooks",
    "ApiServer",
    "NodeInfo",
    "load_token",
    "write_api_file",
]
