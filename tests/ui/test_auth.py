"""Browser authentication against a real ``meshd serve``: login ticket → cookie, and the
Host/Origin checks that keep the cookie from being used cross-site or by DNS rebinding.
Bearer clients (the CLI) must be unaffected."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from meshd.api.ui import (
    SESSION_MAX_AGE,
    LoginTickets,
    cookie_name,
    session_issued,
    session_value,
)
from tests.daemon.conftest import Meshd, host_config
from tests.ui.conftest import login_url


async def _login(daemon: Meshd, url: str | None = None) -> tuple[str, str]:
    """Spend a (fresh) ticket like a browser; returns (cookie name, cookie value)."""
    url = url or login_url(daemon)["url"]
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, allow_redirects=False) as response,
    ):
        assert response.status == 303, await response.text()
        assert response.headers["Location"] == "/"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        raw = response.headers["Set-Cookie"]
        port = urlsplit(daemon.url).port
        assert port is not None
        name = cookie_name(port)
        morsel = response.cookies[name]
        assert morsel["httponly"] is True
        assert morsel["samesite"] == "Strict"
        assert morsel["path"] == "/"
        assert "HttpOnly" in raw and "SameSite=Strict" in raw
        return name, morsel.value


async def _request(
    daemon: Meshd, method: str, path: str, *, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session,
        session.request(method, daemon.url + path, headers=headers, json=body) as response,
    ):
        text = await response.text()
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, text


def _host(daemon: Meshd) -> str:
    return urlsplit(daemon.url).netloc


async def test_login_link_sets_a_session_cookie_once(daemon: Meshd) -> None:
    link = login_url(daemon)
    assert link["url"].startswith(daemon.url + "/login?ticket=")
    assert daemon.token not in link["url"]  # a ticket, never the token
    name, value = await _login(daemon, link["url"])
    cookie = {"Cookie": f"{name}={value}"}

    status, body = await _request(daemon, "GET", "/api/v1/status", headers=cookie)
    assert status == 200 and body["node"]["name"] == "test-node"
    status, body = await _request(daemon, "GET", "/api/v1/jobs", headers=cookie)
    assert status == 200 and body["jobs"] == []

    # The same link again: spent.
    async with (
        aiohttp.ClientSession() as session,
        session.get(link["url"], allow_redirects=False) as response,
    ):
        assert response.status == 403
        assert "not valid" in await response.text()
        assert "Set-Cookie" not in response.headers


async def test_without_cookie_or_token_nothing_is_readable(daemon: Meshd) -> None:
    for path in ("/api/v1/status", "/api/v1/jobs", "/metrics"):
        status, body = await _request(daemon, "GET", path, headers={})
        assert status == 401 and body["error"]["code"] == "unauthorized", path
    forged = {"Cookie": f"{cookie_name(urlsplit(daemon.url).port or 0)}=v1.1.AAAA"}
    status, _ = await _request(daemon, "GET", "/api/v1/status", headers=forged)
    assert status == 401
    # The page's shell is public (it holds no data) and locked down.
    status, text = await _request(daemon, "GET", "/", headers={})
    assert status == 200 and "meshd" in text
    async with aiohttp.ClientSession() as session, session.get(daemon.url + "/") as response:
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
    status, _ = await _request(daemon, "GET", "/static/app.js", headers={})
    assert status == 200
    status, _ = await _request(daemon, "GET", "/static/../api.json", headers={})
    assert status in (401, 404)


async def test_cookie_requests_check_host_against_dns_rebinding(daemon: Meshd) -> None:
    name, value = await _login(daemon)
    port = urlsplit(daemon.url).port
    for host in (f"localhost:{port}", _host(daemon)):
        headers = {"Cookie": f"{name}={value}", "Host": host}
        status, _ = await _request(daemon, "GET", "/api/v1/status", headers=headers)
        assert status == 200, host
    for host in (f"evil.example:{port}", "127.0.0.1:1", f"127.0.0.1.evil.example:{port}", ""):
        headers = {"Cookie": f"{name}={value}", "Host": host}
        status, body = await _request(daemon, "GET", "/api/v1/status", headers=headers)
        assert status == 403 and body["error"]["code"] == "forbidden_host", host
    # Even the login and the page's files refuse a rebound name.
    status, _ = await _request(daemon, "GET", "/", headers={"Host": f"evil.example:{port}"})
    assert status == 403
    # A bearer client is not a browser: unchanged, whatever its Host says.
    bearer = {"Authorization": f"Bearer {daemon.token}", "Host": f"evil.example:{port}"}
    status, _ = await _request(daemon, "GET", "/api/v1/status", headers=bearer)
    assert status == 200


async def test_cookie_state_changes_need_our_origin(daemon: Meshd, tmp_path: Path) -> None:
    name, value = await _login(daemon)
    config = host_config(tmp_path / "cfg", compile_seconds=0.1)
    job = {"type": "compile", "configuration": str(config)}
    cookie = {"Cookie": f"{name}={value}"}
    for origin in (None, "http://evil.example", "null", f"http://localhost.evil:{1}"):
        headers = dict(cookie) if origin is None else {**cookie, "Origin": origin}
        status, body = await _request(daemon, "POST", "/api/v1/jobs", headers=headers, body=job)
        assert status == 403 and body["error"]["code"] == "forbidden_origin", origin
    # A GET with a foreign Origin (a cross-origin fetch) is refused too.
    headers = {**cookie, "Origin": "http://evil.example"}
    status, _ = await _request(daemon, "GET", "/api/v1/status", headers=headers)
    assert status == 403
    assert daemon.cli_json("jobs")["jobs"] == []  # nothing was queued by the refusals

    own = {**cookie, "Origin": f"http://{_host(daemon)}"}
    status, body = await _request(daemon, "POST", "/api/v1/jobs", headers=own, body=job)
    assert status == 201, body
    (created,) = body["jobs"]
    status, body = await _request(
        daemon, "POST", f"/api/v1/jobs/{created['id']}/cancel", headers=own
    )
    assert status == 200 and body["status"] in ("cancelled", "completed")
    # A browser session may not mint login tickets for other browsers.
    status, body = await _request(daemon, "POST", "/api/v1/ui/tickets", headers=own)
    assert status == 403


async def test_cookie_websocket_needs_our_origin(daemon: Meshd) -> None:
    name, value = await _login(daemon)
    url = f"{daemon.url}/api/v1/events"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for origin in ("http://evil.example", None):
            headers = {"Cookie": f"{name}={value}"}
            if origin is not None:
                headers["Origin"] = origin
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url, headers=headers)
            assert refused.value.status == 403
        own = {"Cookie": f"{name}={value}", "Origin": f"http://{_host(daemon)}"}
        async with session.ws_connect(url, headers=own) as ws:
            assert not ws.closed


async def test_session_cookie_is_signed_and_expires() -> None:
    token = "t" * 43
    now = 1_800_000_000
    value = session_value(token, issued=now)
    assert session_issued(token, value, now=now + 10) == now
    assert session_issued("u" * 43, value, now=now) is None  # another daemon's token
    assert session_issued(token, value, now=now + SESSION_MAX_AGE + 1) is None
    assert session_issued(token, session_value(token, issued=now + 3600), now=now) is None
    tampered = value.replace(f".{now}.", f".{now + 1}.")
    assert session_issued(token, tampered, now=now) is None
    for junk in ("", "v1", "v1..", "v2.1.x", f"v1.{'9' * 40}.x", "v1.-5.abc"):
        assert session_issued(token, junk, now=now) is None


def test_login_tickets_are_single_use_and_expire() -> None:
    now = [0.0]
    tickets = LoginTickets(ttl=120, clock=lambda: now[0])
    first, second = tickets.issue(), tickets.issue()
    assert first != second
    assert tickets.redeem(first) and not tickets.redeem(first)
    now[0] = 121
    assert not tickets.redeem(second)
    assert not tickets.redeem("made-up")
    many = [tickets.issue() for _ in range(100)]  # bounded: the oldest are dropped
    assert not tickets.redeem(many[0]) and tickets.redeem(many[-1])
