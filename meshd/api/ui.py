"""The status page: its files, its login, and how a browser authenticates.

The page (``meshd/api/static/``: plain HTML, CSS and JS, no build step, no CDN) is
served at ``/`` by the control API and reads everything through the same API, live
from the events websocket. Reading needs the API token, but a token in a URL would
sit in the browser's history and address bar, so a browser logs in once:

1. ``meshd ui`` (a token holder) asks ``POST /api/v1/ui/tickets`` for a login ticket:
   random, good for one use within :data:`TICKET_TTL`, kept only in memory;
2. the browser opens ``/login?ticket=T``; the daemon spends the ticket, sets a session
   cookie (``HttpOnly``, ``SameSite=Strict``) and redirects to ``/``, so neither the
   ticket nor the token stays in the address bar;
3. the API accepts that cookie instead of the bearer token.

The cookie value is ``v1.<issued>.<HMAC-SHA256(token, issued)>``: stateless, so it
survives a daemon restart (the token is kept across restarts), expires after
:data:`SESSION_MAX_AGE`, and dies with the token. Its name carries the port, because
browsers share cookies between the ports of one host.

Cookie-authenticated requests get two extra checks that bearer requests (the CLI,
scripts) do not need: the ``Host`` header must name the address the request reached
(or a localhost name on loopback, or this machine's host name) against DNS rebinding,
and ``Origin`` must be the daemon's own origin for anything that changes state and for
the websocket, against cross-site (and cross-port, same-site) requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import hdrs, web

from meshd.api.state import TOKEN_KEY
from meshd.api.validation import ApiError
from meshd.api.wire import API_PREFIX

LOGIN_PATH = "/login"
TICKETS_PATH = f"{API_PREFIX}/ui/tickets"
STATIC_PREFIX = "/static/"
# Long enough to paste a URL from a terminal into a browser, short enough that a
# ticket left in a scroll-back buffer is useless.
TICKET_TTL = 120.0
# Unspent tickets kept at once; more means a script loops, and the oldest go first.
MAX_TICKETS = 32
# A browser tab stays logged in for a week; opening the page renews the cookie.
SESSION_MAX_AGE = 7 * 24 * 3600
# Renew at most once a day, so every page load does not set a cookie.
SESSION_RENEW_AFTER = 24 * 3600
COOKIE_PREFIX = "meshd_session_"
_SESSION_VERSION = "v1"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Everything the page loads comes from here; nothing may frame it (clickjacking on
# the cancel button) and no inline script runs.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


# -- login tickets ---------------------------------------------------------------------


class LoginTickets:
    """One-time login tickets, in memory: a restart forgets them (``meshd ui`` again)."""

    def __init__(self, ttl: float = TICKET_TTL, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def issue(self) -> str:
        self._prune()
        while len(self._expiry) >= MAX_TICKETS:
            del self._expiry[next(iter(self._expiry))]
        ticket = secrets.token_urlsafe(32)
        self._expiry[ticket] = self._clock() + self.ttl
        return ticket

    def redeem(self, ticket: str) -> bool:
        """Spend ``ticket``: True once, if it was issued and has not expired."""
        self._prune()
        # pop, not get: a ticket is good for one login even if two race for it.
        return self._expiry.pop(ticket, None) is not None

    def _prune(self) -> None:
        now = self._clock()
        for ticket in [t for t, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[ticket]


# -- the session cookie ----------------------------------------------------------------


def _mac(token: str, issued: int) -> str:
    digest = hmac.new(
        token.encode(), f"meshd-ui-session:{_SESSION_VERSION}:{issued}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def session_value(token: str, issued: int | None = None) -> str:
    issued = int(time.time()) if issued is None else issued
    return f"{_SESSION_VERSION}.{issued}.{_mac(token, issued)}"


def session_issued(token: str, value: str, now: float | None = None) -> int | None:
    """When a valid session cookie was issued; None if it is forged, malformed or expired."""
    version, _, rest = value.partition(".")
    issued_text, _, mac = rest.partition(".")
    if version != _SESSION_VERSION or not issued_text.isdigit() or len(issued_text) > 12:
        return None
    issued = int(issued_text)
    now = time.time() if now is None else now
    # A little slack for a clock step; a cookie "from the future" is forged.
    if not now - SESSION_MAX_AGE <= issued <= now + 60:
        return None
    if not hmac.compare_digest(mac.encode(), _mac(token, issued).encode()):
        return None
    return issued


def cookie_name(port: int) -> str:
    return f"{COOKIE_PREFIX}{port}"


def _set_session(response: web.StreamResponse, port: int, token: str) -> None:
    response.set_cookie(
        cookie_name(port),
        session_value(token),
        max_age=SESSION_MAX_AGE,
        path="/",
        httponly=True,
        samesite="Strict",
    )


# -- Host and Origin -------------------------------------------------------------------


def _local_address(request: web.Request) -> tuple[str, int]:
    """The address and port this request reached (for a wildcard bind: the interface)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        raise ApiError(403, "forbidden_host", "cannot tell which address this request reached")
    address = ipaddress.ip_address(str(sockname[0]).split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address), int(sockname[1])


def _split_host(host: str) -> tuple[str, int | None]:
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, port_text = host.split(":")
    else:
        name, port_text = host, ""
    if port_text and not port_text.isdigit():
        return name, -1
    return name.rstrip("."), int(port_text) if port_text else None


def allowed_host_names(local_ip: str) -> set[str]:
    """Names a browser may use for this daemon when it reached ``local_ip``."""
    names = {local_ip}
    if ipaddress.ip_address(local_ip).is_loopback:
        names |= _LOCAL_NAMES | {"127.0.0.1", "::1"}
    hostname = socket.gethostname().lower()
    if hostname:
        names |= {hostname, f"{hostname}.local"}
    return names


def check_host(request: web.Request) -> tuple[str, int]:
    """The ``Host`` header must name this daemon (DNS rebinding); returns (host, port)."""
    local_ip, local_port = _local_address(request)
    raw = request.headers.get(hdrs.HOST, "")
    name, port = _split_host(raw)
    if (port if port is not None else 80) != local_port or name not in allowed_host_names(local_ip):
        raise ApiError(
            403,
            "forbidden_host",
            f"Host {raw!r} is not this daemon's address: open the page at "
            f"http://{local_ip if ':' not in local_ip else f'[{local_ip}]'}:{local_port}/ "
            "(browser requests are checked against DNS rebinding)",
        )
    return raw, local_port


def check_origin(request: web.Request, host: str) -> None:
    """State changes and the websocket need ``Origin`` = our origin; others may omit it."""
    origin = request.headers.get(hdrs.ORIGIN)
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower() == "websocket"
    if origin is None and request.method in _SAFE_METHODS and not upgrade:
        return
    if origin is None or origin.lower() != f"http://{host}".lower():
        raise ApiError(
            403,
            "forbidden_origin",
            f"cross-origin request refused (Origin {origin!r}): the page's cookie works "
            "only on the daemon's own page; scripts send 'Authorization: Bearer TOKEN'",
        )


def browser_auth(request: web.Request) -> bool:
    """For a request without ``Authorization``: may it pass? (The auth middleware's hook.)

    True for the page's own files and the login (public: they hold no data), and for a
    valid session cookie; False when neither (the caller answers 401). Raises 403 when
    the Host or Origin check fails.
    """
    public = _is_public(request.path)
    values = [value for key, value in request.cookies.items() if key.startswith(COOKIE_PREFIX)]
    if not public and not values:
        return False
    host, port = check_host(request)
    if public:
        return True
    value = request.cookies.get(cookie_name(port))
    if value is None or session_issued(request.app[TOKEN_KEY], value) is None:
        return False
    check_origin(request, host)
    return True


def _is_public(path: str) -> bool:
    return path in ("/", LOGIN_PATH) or (
        path.startswith(STATIC_PREFIX) and path[len(STATIC_PREFIX) :] in _files()
    )


# -- handlers --------------------------------------------------------------------------


_cache: dict[str, bytes] = {}


def _files() -> set[str]:
    """The page's files (read once from the package; they do not change while running)."""
    if not _cache:
        for entry in (resources.files("meshd.api") / "static").iterdir():
            if entry.is_file() and any(entry.name.endswith(s) for s in _CONTENT_TYPES):
                _cache[entry.name] = entry.read_bytes()
    return set(_cache)


def _file_response(name: str, status: int = 200) -> web.Response:
    _files()
    suffix = name[name.rfind(".") :]
    return web.Response(
        body=_cache[name],
        status=status,
        headers={"Content-Type": _CONTENT_TYPES[suffix], **_SECURITY_HEADERS},
    )


async def index(request: web.Request) -> web.Response:
    response = _file_response("index.html")
    _, port = _local_address(request)
    value = request.cookies.get(cookie_name(port))
    issued = session_issued(request.app[TOKEN_KEY], value) if value else None
    if issued is not None and time.time() - issued > SESSION_RENEW_AFTER:
        _set_session(response, port, request.app[TOKEN_KEY])
    return response


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _files() or name == "index.html":
        raise web.HTTPNotFound()
    return _file_response(name)


def _login_handler(tickets: LoginTickets) -> Callable[[web.Request], Any]:
    async def login(request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if not ticket or not tickets.redeem(ticket):
            return _file_response("login-failed.html", status=403)
        _, port = _local_address(request)
        # 303 to "/": the ticket leaves the address bar; no-referrer keeps it out of logs.
        response = web.Response(
            status=303,
            headers={
                hdrs.LOCATION: "/",
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
            },
        )
        _set_session(response, port, request.app[TOKEN_KEY])
        return response

    return login


def _tickets_handler(tickets: LoginTickets) -> Callable[[web.Request], Any]:
    async def issue(request: web.Request) -> web.Response:
        # The auth middleware let this through; only a bearer token holder may mint
        # tickets (a browser session must not be able to spawn new sessions elsewhere).
        if hdrs.AUTHORIZATION not in request.headers:
            raise ApiError(403, "forbidden", "login tickets are issued to API token holders")
        ticket = tickets.issue()
        return web.json_response(
            {
                "ticket": ticket,
                "expires_in": tickets.ttl,
                "login_path": f"{LOGIN_PATH}?ticket={ticket}",
            },
            status=201,
        )

    return issue


def ui_routes(tickets: LoginTickets | None = None) -> list[web.AbstractRouteDef]:
    """The page, its files, the login, and the ticket endpoint."""
    tickets = tickets or LoginTickets()
    return [
        web.get("/", index),
        web.get(STATIC_PREFIX + "{name}", static_file),
        web.get(LOGIN_PATH, _login_handler(tickets)),
        web.post(TICKETS_PATH, _tickets_handler(tickets)),
    ]
