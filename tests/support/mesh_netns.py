"""Multi-host mesh tests: N host namespaces on a Linux bridge, plus a loopback probe.

``tests/support/netns.py`` only wraps a command in a fresh, loopback-only namespace
(``unshare -n``), which isolates downloads but cannot put several hosts on one network.
Here a *bridge namespace* holds ``br0``; each *host namespace* gets a veth pair whose
one end (``eth0``, 10.231.0.<i+1>/24) sits in the host and whose other end (``p<i>``)
is a port of ``br0``. Every interface and address exists only inside namespaces created
here: the root namespace gains nothing but the namespace names in /run/netns, and those
are deleted on exit, also on failure, by name (each run has a unique prefix that
embeds the pid, so a crashed run's leftovers can be recognised and swept).

A partition is ``ip link set p<i> down`` in the bridge namespace: the host keeps its
address and does not notice, like an unplugged switch port.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

NS_PREFIX = "meshd-disc-"
SUBNET = "10.231.0"
_NETNS_DIR = Path("/run/netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_permitted() -> str | None:
    """None when ``ip netns`` works here, else why not (for a skip reason)."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "`ip netns add` needs root"
    name = f"{NS_PREFIX}{os.getpid()}-probe"
    result = _ip("netns", "add", name, check=False)
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    _ip("netns", "del", name, check=False)
    return None


def sweep_stale() -> None:
    """Delete namespaces left by runs of this helper whose process is gone."""
    if not _NETNS_DIR.is_dir():
        return
    for entry in _NETNS_DIR.iterdir():
        if not entry.name.startswith(NS_PREFIX):
            continue
        pid = entry.name[len(NS_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", entry.name, check=False)


def loopback_multicast_works(timeout: float = 1.0) -> bool:
    """Whether a multicast datagram sent out 127.0.0.1 comes back to a member socket.

    That is what two zeroconf instances pinned to 127.0.0.1 rely on. It holds in a
    namespace whose ``lo`` has the MULTICAST flag (scripts/test sets it) and, on Linux,
    also without the flag, because IP_MULTICAST_LOOP delivers the sender's own
    datagrams locally. Uses an administratively scoped group and a private port, not
    224.0.0.251:5353, so it cannot disturb or be disturbed by real mDNS traffic.
    """
    group = "239.255.77.77"
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind((group, 0))
        port = rx.getsockname()[1]
        membership = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        rx.settimeout(timeout)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        token = secrets.token_bytes(8)
        tx.sendto(token, (group, port))
        while True:
            data = rx.recv(64)
            if data == token:
                return True
    except OSError:
        return False
    finally:
        rx.close()
        tx.close()


@dataclass
class MeshNet:
    """Namespaces ``<prefix>br`` (the bridge) and ``<prefix>h<i>`` (the hosts)."""

    hosts: int
    prefix: str = field(default_factory=lambda: f"{NS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-")
    created: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def host(self, i: int) -> str:
        return f"{self.prefix}h{i}"

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def exec_prefix(self, i: int) -> list[str]:
        """argv prefix that runs a command inside host ``i``."""
        return ["ip", "netns", "exec", self.host(i)]

    def _add_ns(self, name: str) -> None:
        _ip("netns", "add", name)
        self.created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def create(self) -> None:
        self._add_ns(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        # Without IGMP snooping the bridge floods multicast to every port, as a plain
        # home switch does; with it, mDNS would depend on an IGMP querier.
        _ip("-n", self.bridge, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for i in range(self.hosts):
            host = self.host(i)
            self._add_ns(host)
            port = f"p{i}"
            # Created inside the bridge namespace with its peer moved straight into the
            # host namespace: no interface ever appears in the root namespace.
            _ip("-n", self.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", host)  # fmt: skip
            _ip("-n", self.bridge, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge, "link", "set", port, "up")
            _ip("-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "multicast", "on")
            _ip("-n", host, "link", "set", "eth0", "up")

    def partition(self, i: int) -> None:
        """Cut host ``i`` off the bridge (its switch port goes down)."""
        _ip("-n", self.bridge, "link", "set", f"p{i}", "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.bridge, "link", "set", f"p{i}", "up")

    def destroy(self) -> None:
        """Delete every namespace this net created (veths and the bridge go with them)."""
        errors = []
        for name in reversed(self.created):
            result = _ip("netns", "del", name, check=False)
            if result.returncode != 0 and (_NETNS_DIR / name).exists():
                errors.append(f"{name}: {result.stderr.strip()}")
        self.created.clear()
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))

    def leftovers(self) -> list[str]:
        """Namespaces with this net's prefix that still exist (should be none after destroy)."""
        if not _NETNS_DIR.is_dir():
            return []
        return [e.name for e in _NETNS_DIR.iterdir() if e.name.startswith(self.prefix)]


@contextlib.contextmanager
def mesh_net(hosts: int) -> Iterator[MeshNet]:
    """A bridged net of ``hosts`` namespaces, destroyed on exit whatever happens."""
    sweep_stale()
    net = MeshNet(hosts)
    try:
        net.create()
        yield net
    finally:
        net.destroy()
