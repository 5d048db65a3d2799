"""Signed build provenance and the receiver's version check, between in-process nodes.

The receiver signs what it serves; the offloader verifies before it writes. The
tampering tests swap the receiver's signer for one that lies (a flipped signature, a
digest other than the one served) and check that the job fails with the reason and
that nothing reached the offloader's ESPHome data directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from meshd.jobs.model import Job, JobStatus
from meshd.link.messages import CompileReject, CompileRequest
from meshd.link.session import LinkSession
from meshd.mesh.content.artifacts import ArtifactManifest
from meshd.mesh.security.provenance import SignedProvenance
from meshd.version_policy import VersionPolicy
from tests.mesh.nodes import Node, host_yaml, start_node, stop_node, trust

ENDED = tuple(status for status in JobStatus if status.terminal)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    pi = await start_node(tmp_path, "pi", receiver=False, include_local=False)
    desktop = await start_node(tmp_path, "desktop", offload=False)
    try:
        trust(pi, desktop)
        await pi.wait_peer(desktop.fingerprint, connected=True, idle=True)
        yield pi, desktop
    finally:
        await stop_node(pi)
        await stop_node(desktop)


def config(tmp_path: Path, name: str = "kitchen") -> Path:
    path = tmp_path / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(host_yaml(name))
    return path


def written(cfg: Path) -> list[Path]:
    """Files under the offloader's ESPHome data directory for ``cfg``."""
    root = cfg.parent / ".esphome"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def log_of(node: Node, job: Job) -> str:
    return "\n".join(node.engine.logs.read_lines(job.id))


async def test_a_remote_build_carries_a_verified_signed_provenance(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    pi, desktop = pair
    cfg = config(tmp_path)
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
    done = await pi.wait_status(upload_job.id, *ENDED)
    assert done.status is JobStatus.COMPLETED, pi.engine.get(compile_job.id).error
    log = log_of(pi, compile_job)
    assert "build provenance verified: built by " + desktop.mesh.identity.short in log
    assert "with esphome 2026.6.5 for HOST" in log
    assert len(pi.uploads(cfg)) == 1
    # What the lying-receiver tests check stays empty is really written after a good one.
    assert any(p.name == "kitchen.yaml.json" for p in written(cfg))


def _lying_signer(node: Node, lie: str) -> None:
    """Make ``node``'s receiver sign something other than the truth."""
    handlers = node.mesh.receiver.handlers
    honest = handlers._provenance

    def signer(
        session: LinkSession, job_id: str, job: Job, manifest: ArtifactManifest
    ) -> SignedProvenance:
        if lie == "signature":
            signed = honest(session, job_id, job, manifest)
            flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
            return SignedProvenance(signed.record, flipped)
        # Sign a digest other than the one served for the first file.
        first = manifest.files[0]
        other = replace(first, digest=("0" if first.digest[0] != "0" else "1") + first.digest[1:])
        return honest(session, job_id, job, replace(manifest, files=(other, *manifest.files[1:])))

    handlers._provenance = signer  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("lie", "reason"), [("signature", "bad_signature"), ("artifact", "artifact_mismatch")]
)
async def test_a_lying_receiver_fails_the_job_and_nothing_is_written(
    pair: tuple[Node, Node], tmp_path: Path, lie: str, reason: str
) -> None:
    pi, desktop = pair
    cfg = config(tmp_path)
    before = written(cfg)
    _lying_signer(desktop, lie)
    compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
    failed = await pi.wait_status(compile_job.id, *ENDED)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert f"build provenance check failed ({reason})" in failed.error
    assert "nothing was written" in failed.error
    # The receiver really built it; the offloader wrote none of it and flashed nothing.
    remote = desktop.engine.jobs_where(lambda j: j.options.remote_job == compile_job.id)
    assert [j.status for j in remote] == [JobStatus.COMPLETED]
    assert written(cfg) == before
    assert pi.uploads(cfg) == []
    ended = await pi.wait_status(upload_job.id, *ENDED)
    assert ended.status is not JobStatus.COMPLETED
    # A record that failed its check is not kept, nor passed on to the upload.
    stored = pi.engine.store.get(compile_job.id)
    assert stored is not None and stored.build is None
    assert ended.build is None


async def test_receiver_refuses_a_version_its_policy_does_not_allow(
    pair: tuple[Node, Node],
) -> None:
    pi, desktop = pair
    session = pi.mesh.connections.session_for(desktop.fingerprint)
    assert session is not None
    answer = await session.request(
        CompileRequest("abcdef123456", "x.yaml", "1999.1.0", b"\0" * 32, 10)
    )
    assert isinstance(answer, CompileReject)
    assert answer.reason == "version_mismatch"
    assert "runs esphome 2026.6.5, not 1999.1.0" in answer.message
    assert not any(desktop.engine.jobs())


async def test_a_version_mismatch_reroutes_to_a_receiver_that_matches(tmp_path: Path) -> None:
    # The offloader takes any receiver; the first one only builds its own release.
    pi = await start_node(
        tmp_path, "pi", receiver=False, include_local=False, policy=VersionPolicy.ANY
    )
    old = await start_node(tmp_path, "old", offload=False, version="2025.12.1")
    same = await start_node(tmp_path, "same", offload=False)
    try:
        trust(pi, old)
        await pi.wait_peer(old.fingerprint, connected=True, idle=True)
        trust(pi, same)  # idle later than `old`: `old` is picked first
        await pi.wait_peer(same.fingerprint, connected=True, idle=True)
        cfg = config(tmp_path)
        compile_job, upload_job = pi.engine.install(str(cfg), "192.0.2.10")
        done = await pi.wait_status(upload_job.id, *ENDED)
        assert done.status is JobStatus.COMPLETED, pi.engine.get(compile_job.id).error
        rerouted = pi.engine.get(compile_job.id)
        assert rerouted.runner == same.fingerprint
        assert rerouted.options.excluded_receivers == (old.fingerprint,)
        log = log_of(pi, compile_job)
        assert "version_mismatch: this receiver runs esphome 2025.12.1, not 2026.6.5" in log
        assert not any(old.engine.jobs())
    finally:
        for node in (pi, old, same):
            await stop_node(node)
