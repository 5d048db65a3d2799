"""Several real ``meshd serve`` processes on loopback, meshed, driven by the CLI only.

Nodes pin their peer link to 127.0.0.1 and zeroconf to 127.0.0.1 (the daemon fixture
does that for every node); the suite itself runs in a private network namespace.
Heartbeats are short so a dead peer is noticed within a couple of seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.daemon.conftest import Meshd, MeshdFactory, meshd  # noqa: F401 - fixture
from tests.support.waits import poll_until

HEARTBEAT = "0.5"
WAIT = 60.0  # safety net, not a speed assertion


def node(factory: MeshdFactory, name: str, *args: str, env: dict[str, str] | None = None) -> Meshd:
    daemon = factory(name, env=env, args=("--name", name, "--heartbeat", HEARTBEAT, *args))
    return daemon.start()


def identity(daemon: Meshd) -> dict[str, Any]:
    result: dict[str, Any] = daemon.cli_json("identity")
    return result


def peers(daemon: Meshd) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = daemon.cli_json("peers")["peers"]
    return result


def until(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    return poll_until(check, timeout=timeout, what=what, interval=0.1)


def peer(daemon: Meshd, fingerprint: str, **fields: Any) -> dict[str, Any] | None:
    for entry in peers(daemon):
        if entry["fingerprint"] == fingerprint and all(
            entry.get(k) == v for k, v in fields.items()
        ):
            return entry
    return None


def wait_peer(daemon: Meshd, fingerprint: str, **fields: Any) -> dict[str, Any]:
    try:
        found: dict[str, Any] = until(
            f"peer {fingerprint[:12]} with {fields}", lambda: peer(daemon, fingerprint, **fields)
        )
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; peers now: {peers(daemon)}\n{daemon.log()}") from None
    return found


def link(offloader: Meshd, receiver: Meshd, *, address: bool = True) -> tuple[str, str]:
    """Both ``meshd trust`` commands: the receiver takes work, the offloader sends it."""
    rx, ox = identity(receiver), identity(offloader)
    args = ["trust", rx["fingerprint"], "--no-send-work", "--name", rx["name"]]
    if address:
        args += ["--address", f"127.0.0.1:{rx['peer_port']}"]
    assert offloader.cli(*args).returncode == 0
    trusted = receiver.cli("trust", ox["fingerprint"], "--no-build-for-me", "--name", ox["name"])
    assert trusted.returncode == 0
    return ox["fingerprint"], rx["fingerprint"]


def remote_jobs(receiver: Meshd) -> list[dict[str, Any]]:
    return [j for j in receiver.cli_json("jobs", "--all")["jobs"] if j["args"].get("offloader")]
