"""Per-offloader content on a real receiver: one peer cannot see another's blobs, and
what one peer may make the receiver store is bounded (docs/SECURITY.md).

Offloader ``pi`` builds on ``rx`` with the real daemons; ``eve`` is a second offloader
``rx`` also trusts, speaking the link protocol from this test with its own key.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from meshd.link.errors import RequestFailed
from meshd.link.messages import BlobRequest, HaveQuery, HaveReply
from meshd.link.server import connect
from meshd.mesh.security.identity import load_or_create
from tests.cluster.conftest import identity, link, node, wait_peer
from tests.daemon.conftest import MeshdFactory
from tests.support.daemon import host_config


async def _probe(port: int, key_dir: Path, digest: bytes) -> tuple[bool, str]:
    """Eve asks rx whether it lacks ``digest`` and then for the blob itself."""
    eve = load_or_create(key_dir)
    session = await connect("127.0.0.1", port, eve, authorize=lambda _c: True)
    try:
        reply = await session.request(HaveQuery((digest,)), HaveReply)
        missing = digest in reply.missing
        try:
            await session.request(BlobRequest((digest,)), HaveReply)
            served = "served"
        except RequestFailed as exc:
            served = str(exc)
        return missing, served
    finally:
        await session.close()


def test_one_offloader_cannot_see_anothers_blobs(meshd: MeshdFactory, tmp_path: Path) -> None:
    rx = node(meshd, "rx", "--no-offload", "--no-mdns")
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns", "--no-include-local")
    _, rx_fp = link(pi, rx)
    wait_peer(pi, rx_fp, connected=True, idle=True)
    config = host_config(tmp_path / "cfg", "kitchen")
    (config.parent / "secrets.yaml").write_text("api_password: PIS-SECRET\n")
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    assert pi.wait_status(ids["upload"], "completed", "failed")["status"] == "completed"
    secret_digest = hashlib.sha256((config.parent / "secrets.yaml").read_bytes()).digest()
    # The blob is on rx, in pi's store.
    pi_store = rx.data_dir / "mesh" / "cas" / identity(pi)["fingerprint"][:16]
    assert (pi_store / secret_digest.hex()[:2] / secret_digest.hex()).is_file()

    eve_dir = tmp_path / "eve"
    eve_dir.mkdir(mode=0o700)
    eve_fp = load_or_create(eve_dir).fingerprint_hex
    assert rx.cli("trust", eve_fp, "--no-build-for-me", "--name", "eve").returncode == 0
    missing, served = asyncio.run(_probe(identity(rx)["peer_port"], eve_dir, secret_digest))
    assert missing, "rx must answer 'missing' for a digest only pi sent"
    assert served != "served" and "no blob" in served


@pytest.mark.parametrize("stored", ["600"])
def test_a_peer_over_its_stored_quota_is_refused(
    meshd: MeshdFactory, tmp_path: Path, stored: str
) -> None:
    rx = node(meshd, "rx", "--no-offload", "--no-mdns", env={"MESHD_PEER_MAX_STORED": stored})
    pi = node(meshd, "pi", "--no-receiver", "--no-mdns")
    _, rx_fp = link(pi, rx)
    wait_peer(pi, rx_fp, connected=True, idle=True)
    config = host_config(tmp_path / "cfg", "kitchen")
    (config.parent / "secrets.yaml").write_text("api_password: x\n# " + "p" * 1000 + "\n")
    ids = pi.cli_json("install", str(config), "--device", "192.0.2.9", "--detach")
    # The receiver refuses the oversize blob; the offloader builds it itself.
    assert pi.wait_status(ids["upload"], "completed", "failed")["status"] == "completed"
    assert pi.job(ids["compile"])["runner"] != rx_fp
    assert "over quota" in rx.log()
    pi_store = rx.data_dir / "mesh" / "cas" / identity(pi)["fingerprint"][:16]
    held = sum(p.stat().st_size for p in pi_store.glob("??/*"))
    assert held <= int(stored)
