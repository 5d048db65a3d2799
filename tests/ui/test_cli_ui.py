"""``meshd ui``: the login link's address, and the command against a real daemon."""

from __future__ import annotations

from meshd.cli.ui import page_base
from tests.daemon.conftest import Meshd


def test_page_base_names_an_address_a_browser_can_open() -> None:
    assert page_base("http://127.0.0.1:6055") == "http://127.0.0.1:6055"
    # A wildcard bind is reachable from here on loopback.
    assert page_base("http://0.0.0.0:6055") == "http://127.0.0.1:6055"
    assert page_base("http://[::]:6055") == "http://[::1]:6055"
    # --host: the name a phone on the LAN uses.
    assert page_base("http://0.0.0.0:6055", "192.168.1.10") == "http://192.168.1.10:6055"
    assert page_base("http://0.0.0.0:6055", "pi.local") == "http://pi.local:6055"
    assert page_base("http://[::]:6055", "fd00::5") == "http://[fd00::5]:6055"


def test_meshd_ui_prints_a_fresh_one_time_link(daemon: Meshd) -> None:
    first, second = daemon.cli("ui"), daemon.cli("ui")
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    links = [r.stdout.split()[0] for r in (first, second)]
    assert all(link.startswith(f"{daemon.url}/login?ticket=") for link in links)
    assert links[0] != links[1] and daemon.token not in first.stdout
    assert "good once" in first.stdout
    # Without the token the command cannot mint one.
    denied = daemon.cli("ui", "--api", daemon.url, "--token", "wrong", data_dir=False)
    assert denied.returncode == 2 and "token" in denied.stderr
