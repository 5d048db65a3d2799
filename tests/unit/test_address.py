"""The one HOST:PORT parser (meshd/address.py): every form it accepts, every one it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.address import AddressError, HostPort, format_host_port, parse_host_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:6056", HostPort("127.0.0.1", 6056)),
        ("desk.local:1", HostPort("desk.local", 1)),
        ("  desk:6056\n", HostPort("desk", 6056)),
        ("[::1]:6056", HostPort("::1", 6056)),
        ("[fe80::1%eth0]:6056", HostPort("fe80::1%eth0", 6056)),
        ("127.0.0.1:0", HostPort("127.0.0.1", 0)),
        ("h:65535", HostPort("h", 65535)),
    ],
)
def test_accepted_forms(text: str, expected: HostPort) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("desk", HostPort("desk", 7)),
        ("[::1]", HostPort("::1", 7)),
        ("fe80::1", HostPort("fe80::1", 7)),
        ("desk:8", HostPort("desk", 8)),
    ],
)
def test_default_port_for_a_bare_host(text: str, expected: HostPort) -> None:
    assert parse_host_port(text, default_port=7) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("desk", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        (":80", "missing host"),
        ("desk:", "missing port"),
        ("[::1]:", "missing port"),
        ("[::1", "unbalanced"),
        ("[::1]6056", "expected ':PORT' after ']'"),
        ("[]:80", "empty host"),
        ("::1:6056", "needs brackets"),
        ("desk:http", "not a number"),
        ("desk:-1", "not a number"),
        ("desk:٣", "not a number"),  # a digit to str.isdigit, not a port
        ("desk:70000", "out of range"),
        ("de sk:80", "not a host name"),
        ("http://desk:80", "not a URL"),
        ("desk/x:80", "not a host name"),
    ],
)
def test_refused_forms_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message.replace("[", r"\[")) as info:
        parse_host_port(text)
    assert repr(text.strip()) in str(info.value)  # the message quotes the input
    assert isinstance(info.value, ValueError)


def test_formatting_round_trips() -> None:
    for address in (HostPort("10.0.0.2", 6056), HostPort("::1", 1), HostPort("fe80::1%eth0", 2)):
        assert parse_host_port(str(address)) == address
    assert format_host_port("::1", 6056) == "[::1]:6056"
    assert format_host_port("desk", 6056) == "desk:6056"


def test_is_a_light_leaf() -> None:
    """Config, the CLI and the API may import it: it must not pull in the link or the engine."""
    code = (
        "import sys, meshd.address; "
        "bad = [m for m in sys.modules if m.startswith('meshd.') and m != 'meshd.address']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
