"""A slow ``esphome version``: the mesh starts without it, and the advert catches up.

The mesh waits ``VERSION_WAIT`` for the daemon's version probe, then starts and
advertises anyway (a receiver must not be invisible because esphome is slow to
import). When the probe answers later, the mDNS advert must say the version, since
offloaders choose receivers by it. An in-process daemon (real engine, API, mesh,
zeroconf pinned to 127.0.0.1) and a real browser in the test.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from meshd.config import HostPort, Settings
from meshd.daemon import Daemon
from meshd.mesh import service
from meshd.mesh.peering.discovery import Discovery
from meshd.mesh.peering.registry import Registry
from tests.support.daemon import STANDIN
from tests.support.mesh_netns import loopback_multicast_works
from tests.support.waits import until_async, until_notified

LOOPBACK = "127.0.0.1"
VERSION = "2026.6.5"  # the stand-in's
WAIT = 30.0  # a safety net for an mDNS round trip on a loaded machine

pytestmark = pytest.mark.skipif(
    not loopback_multicast_works(),
    reason="needs multicast on loopback (run in scripts/test's network namespace)",
)


async def test_the_advert_gets_the_esphome_version_once_the_probe_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "version-may-answer"
    monkeypatch.setenv("STANDIN_VERSION_GATE", str(gate))
    monkeypatch.setattr(service, "VERSION_WAIT", 0.05)  # start the mesh without a version
    daemon = Daemon(
        Settings(
            data_dir=tmp_path / "data",
            api=HostPort(LOOPBACK, 0),
            peer_listen=HostPort(LOOPBACK, 0),
            mdns_interfaces=(LOOPBACK,),
            name="late-version",
            esphome=(sys.executable, str(STANDIN)),
        )
    )
    registry = Registry()
    browser = Discovery(registry, interfaces=[LOOPBACK])
    running = asyncio.create_task(daemon.run())
    await browser.start()
    try:
        await until_async(
            lambda: (daemon.settings.data_dir / "api.json").exists(), what="the daemon"
        )
        fingerprint = daemon.hooks.fingerprint()
        assert fingerprint is not None

        def advertised_version() -> str | None:
            peer = registry.get(fingerprint)
            return None if peer is None else (peer.esphome_version or "")

        await until_notified(registry.add_listener, lambda: advertised_version() is not None)
        assert advertised_version() == "", "the advert went out before the version was known"
        assert daemon.node.esphome_version is None

        gate.touch()
        await until_notified(
            registry.add_listener,
            lambda: advertised_version() == VERSION,
            timeout=WAIT,
            what=f"the advert to say esphome {VERSION}",
        )
        assert daemon.node.esphome_version == VERSION
    finally:
        gate.touch()
        await browser.stop()
        daemon.request_stop()
        assert await running == 0
