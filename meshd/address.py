"""The one HOST:PORT parser and formatter: config, the API, pairing and the peer link.

A leaf module (standard library only) so every layer may import it, the CLI included,
without paying for the link's crypto or the engine. It lives beside ``meshd.link``
rather than inside it because importing any ``meshd.link`` module first runs the link
package, and the client commands must stay light.

Accepted forms: ``host:6056``, ``192.0.2.1:6056``, ``[::1]:6056``,
``[fe80::1%eth0]:6056``, and, where the caller gives a default port, a bare host, a
bare IPv6 address or a bracketed one. An IPv6 address with a port needs its brackets:
``::1:6056`` is ambiguous and refused with a message that says so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

MAX_PORT = 65535


class AddressError(ValueError):
    """Text that is not a usable HOST:PORT; the message quotes it and says what is wrong."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        """``host:port``, with brackets around an IPv6 host (the form this module parses)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def format_host_port(host: str, port: int) -> str:
    """``host:port`` as :func:`parse_host_port` reads it back (IPv6 in brackets)."""
    return str(HostPort(host, port))


def parse_host_port(text: str, *, default_port: int | None = None) -> HostPort:
    """``HOST:PORT``, ``[V6]:PORT`` or (with ``default_port``) a bare host; port 0 is allowed
    (a listener picks a free port). Raises :class:`AddressError`."""
    text = text.strip()
    if "://" in text:
        raise AddressError(f"{text!r}: give HOST:PORT, not a URL")
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AddressError(f"{text!r}: unbalanced '[' in address")
        host, rest = text[1:close], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise AddressError(f"{text!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
        if rest and not port_text:
            raise AddressError(f"{text!r}: missing port after ':'")
        if not host:
            raise AddressError(f"{text!r}: empty host in brackets")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text:
            raise AddressError(f"{text!r}: missing port after ':'")
    elif ":" in text:
        if default_port is not None and _is_ipv6(text):
            return HostPort(text, default_port)
        raise AddressError(f"{text!r}: an IPv6 address with a port needs brackets, e.g. [::1]:6056")
    if any(ch.isspace() for ch in host) or "/" in host:
        raise AddressError(f"{text!r}: {host!r} is not a host name or IP address")
    if not port_text:
        if default_port is None:
            raise AddressError(f"{text!r}: expected HOST:PORT")
        if not host:
            raise AddressError(f"{text!r}: missing host")
        return HostPort(host, default_port)
    if not host:
        raise AddressError(f"{text!r}: missing host before ':PORT'")
    if not port_text.isascii() or not port_text.isdigit():
        raise AddressError(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 <= port <= MAX_PORT:
        raise AddressError(f"{text!r}: port {port} out of range 0-{MAX_PORT}")
    return HostPort(host, port)
