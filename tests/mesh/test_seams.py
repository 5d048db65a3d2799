"""The seams of the mesh split: the API sees the mesh only as a ``MeshControl``.

The API must not import the mesh's wiring (``meshd.mesh.node``) nor any of its role
modules; the daemon hands it a ``MeshNode``, which satisfies the protocol (mypy checks
that where the daemon wires them). Without a mesh the API still answers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meshd.api.state import ApiHooks
from tests.mesh.nodes import start_node, stop_node

ROOT = Path(__file__).resolve().parents[2]
API_MODULES = (
    "meshd.api.server",
    "meshd.api.routes",
    "meshd.api.state",
    "meshd.api.mesh_control",
    "meshd.api.mesh_routes",
)
MESH_ROLES = (
    "meshd.mesh.node",
    "meshd.mesh.service",
    "meshd.mesh.peering",
    "meshd.mesh.serving",
    "meshd.mesh.dispatch",
    "meshd.mesh.content",
)


def test_the_api_does_not_import_the_mesh_wiring() -> None:
    code = (
        f"import sys; import {', '.join(API_MODULES)}; "
        f"bad = sorted(m for m in sys.modules if m.startswith({MESH_ROLES!r})); "
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


def test_hooks_without_a_mesh_answer_empty() -> None:
    hooks = ApiHooks()
    assert hooks.fingerprint() is None and hooks.peers() == [] and hooks.node() == {}


async def test_hooks_answer_from_a_mesh_node(tmp_path: Path) -> None:
    node = await start_node(tmp_path, "desk", offload=False)
    try:
        hooks = ApiHooks(mesh=node.mesh)
        assert hooks.fingerprint() == node.fingerprint
        assert hooks.node()["peer_port"] == node.mesh.port
        assert hooks.node()["receiver"] is True and hooks.node()["offload"] is False
        assert hooks.peers() == []
        assert node.mesh.name == "desk" and node.mesh.trusted() == []
    finally:
        await stop_node(node)
