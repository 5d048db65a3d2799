"""A receiver that returns malformed artifacts is a receiver fault: re-route, exclude it.

In-process nodes (tests/mesh/nodes.py) with real engines, real link sessions and the
stand-in esphome. The hostile receiver builds for real; only its answer to
``artifact_request`` is replaced with what a broken or malicious receiver could send
(PROTOCOL.md 12.5/12.6): a manifest that is not JSON, one without the ``app`` a flash
needs, a storage record that is not JSON. The offloader must never call that an
internal error: the compile goes to the honest receiver, the hostile one is excluded,
and the device is flashed once, with the honest build.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd.jobs.model import JobStatus
from meshd.link import LinkSession
from meshd.link.messages import ArtifactReply, ArtifactRequest
from meshd.mesh.content.artifacts import ArtifactManifest
from meshd.mesh.content.store import ContentStore
from tests.mesh.nodes import Node, host_yaml, start_node, stop_node, trust

ENDED = tuple(status for status in JobStatus if status.terminal)


def _not_json(node: Node, manifest: dict[str, Any], store: ContentStore) -> bytes:
    return b'{"name": "kitchen", "files": [truncated'


def _no_app(node: Node, manifest: dict[str, Any], store: ContentStore) -> bytes:
    manifest["files"] = [f for f in manifest["files"] if f["role"] != "app"]
    return json.dumps(manifest).encode()


def _storage_not_json(node: Node, manifest: dict[str, Any], store: ContentStore) -> bytes:
    garbage = b"<html>storage record</html>"
    digest = store.put_bytes(garbage)
    for entry in manifest["files"]:
        if entry["role"] == "storage":
            entry["digest"], entry["size"] = digest, len(garbage)
    return json.dumps(manifest).encode()


Tamper = Callable[[Node, dict[str, Any], ContentStore], bytes]


def _hostile(node: Node, tamper: Tamper) -> None:
    """Make ``node`` answer artifact requests with a tampered manifest."""
    handlers = node.mesh.receiver.handlers
    honest = handlers._on_artifacts

    async def lie(session: LinkSession, message: ArtifactRequest) -> ArtifactReply:
        reply = await honest(session, message)
        store = handlers.blobs.store_for(session)  # that offloader's own store
        manifest = json.loads(store.path(reply.manifest_digest.hex()).read_bytes())
        ArtifactManifest.from_wire(manifest)  # the honest one is fine
        data = tamper(node, manifest, store)
        digest = store.put_bytes(data)
        # A hostile receiver signs what it sends: the provenance checks out, so what is
        # tested is the offloader's handling of the malformed content itself.
        record = sig = None
        try:
            tampered = ArtifactManifest.from_wire(json.loads(data))
        except (ValueError, TypeError):
            tampered = None  # unparseable: the offloader refuses it before provenance
        if tampered is not None:
            job = handlers.jobs.find(session, message.job_id)
            assert job is not None
            signed = handlers._provenance(session, message.job_id, job, tampered)
            record, sig = signed.record, signed.signature
        return ArtifactReply(
            message.job_id, bytes.fromhex(digest), len(data), provenance=record, provenance_sig=sig
        )

    node.mesh.router.on(ArtifactRequest, lie)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_not_json, "not valid JSON|Expecting|Unterminated|delimiter"),
        (_no_app, "no app file for a ota flash"),
        (_storage_not_json, "artifact JSON record is malformed"),
    ],
    ids=["manifest-not-json", "missing-app", "storage-not-json"],
)
async def test_malformed_artifacts_reroute_and_exclude_the_receiver(
    tmp_path: Path, tamper: Tamper, reason: str
) -> None:
    pi = await start_node(tmp_path, "pi", receiver=False, include_local=False)
    liar = await start_node(tmp_path, "liar", offload=False)
    honest = await start_node(tmp_path, "honest", offload=False)
    try:
        _hostile(liar, tamper)
        trust(pi, liar)
        await pi.wait_peer(liar.fingerprint, connected=True, idle=True)
        await asyncio.sleep(0.05)  # `liar` has been idle longer: it is picked first
        trust(pi, honest)
        await pi.wait_peer(honest.fingerprint, connected=True, idle=True)
        cfg = tmp_path / "configs" / "kitchen.yaml"
        cfg.parent.mkdir(parents=True)
        cfg.write_text(host_yaml("kitchen"))
        compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
        done = await pi.wait_status(upload_job.id, *ENDED)
        log = "\n".join(pi.engine.logs.read_lines(compile_job.id))
        assert done.status is JobStatus.COMPLETED, log
        compiled = pi.engine.get(compile_job.id)
        assert compiled.runner == honest.fingerprint
        assert compiled.options.excluded_receivers == (liar.fingerprint,)
        assert "internal error" not in log
        pattern = f"re-routing \\(attempt 1\\): receiver sent unusable artifacts: .*({reason})"
        assert re.search(pattern, log), log
        assert len(pi.uploads(cfg)) == 1, "flashed once"
        assert liar.engine.jobs_where(lambda j: j.status is JobStatus.COMPLETED), "it did build"
    finally:
        for node in (pi, liar, honest):
            await stop_node(node)
