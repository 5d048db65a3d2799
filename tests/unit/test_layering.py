"""Every module imports on its own, and the layers import only downwards.

* Each module of meshd is imported alone in a fresh interpreter (python-zeroconf's
  ``test_circular_imports``): a cycle that a warm test process hides fails here, the
  day it appears, naming the module.
* The import direction of DESIGN.md is checked two ways: statically, over every
  ``import`` statement in a layer's files (also those inside functions, which a
  runtime check would miss), and at run time, over what a fresh interpreter has loaded
  after importing the layer (which catches what a dependency drags in).
* ``import meshd.cli`` must load no daemon code (aioesphomeapi pins its lazy imports
  the same way in ``test_lazy_imports.py``): a client command pays for its client only.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.daemon import REPO, base_env

PACKAGE = REPO / "meshd"
# Fresh interpreters are started in parallel; more would only queue on 2 cores.
PARALLEL = 4
IMPORT_TIMEOUT = 120.0  # a safety net on a loaded machine, not a speed limit


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> list[str]:
    """Every module of the package, from its files (nothing is imported to list them).

    ``meshd.__main__`` is left out: importing it runs the CLI.
    """
    names = {_module_name(path) for path in PACKAGE.rglob("*.py")}
    names.discard("meshd.__main__")
    return sorted(names)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        cwd=REPO,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def import_results() -> dict[str, subprocess.CompletedProcess[str]]:
    """``import M`` in its own interpreter, for every module M, run a few at a time."""
    modules = all_modules()
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = pool.map(lambda module: _run(f"import {module}"), modules)
        return dict(zip(modules, results, strict=True))


@pytest.mark.parametrize("module", all_modules())
def test_module_imports_alone(
    module: str, import_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    result = import_results[module]
    assert result.returncode == 0, f"import {module} failed:\n{result.stderr[-4000:]}"


def test_every_module_is_listed() -> None:
    """The listing is not silently empty or partial (the parametrization would pass)."""
    modules = all_modules()
    for expected in ("meshd.cli", "meshd.daemon", "meshd.link.session", "meshd.jobs.engine"):
        assert expected in modules
    assert len(modules) > 60


# -- static: every import statement of a layer -------------------------------------------


def imported_names(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for line, name in imported_names(path):
            if _within(name, forbidden):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    return bad


UPPER = ("meshd.daemon", "meshd.cli", "meshd.api")
LAYER_RULES = {
    # jobs defines the engine and the seams; the mesh and the toolchain plug into it.
    "jobs": ("meshd.mesh", "meshd.toolchain", "meshd.link", *UPPER),
    # the toolchain implements jobs' runner contract and knows nothing of the mesh.
    "toolchain": ("meshd.mesh", "meshd.link", *UPPER),
    "mesh": UPPER,
}


@pytest.mark.parametrize("layer", sorted(LAYER_RULES))
def test_layer_imports_point_down(layer: str) -> None:
    assert violations(layer, LAYER_RULES[layer]) == []


def test_link_imports_nothing_of_meshd() -> None:
    """The link is a library: only itself (and the root package's ``__version__``)."""
    bad = []
    for path in sorted((PACKAGE / "link").rglob("*.py")):
        for line, name in imported_names(path):
            if _within(name, ("meshd",)) and name != "meshd" and not _within(name, ("meshd.link",)):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert bad == []


# -- at run time: what a fresh interpreter has loaded ----------------------------------------


def loaded_by(*modules: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = (
        "import json, sys\n"
        + "".join(f"import {module}\n" for module in modules)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-4000:]
    return set(json.loads(result.stdout))


def _package_modules(package: str) -> list[str]:
    return [m for m in all_modules() if _within(m, (package,))]


def _hits(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in loaded if _within(name, forbidden))


def test_jobs_loads_no_mesh_toolchain_or_api() -> None:
    loaded = loaded_by(*_package_modules("meshd.jobs"))
    assert _hits(loaded, LAYER_RULES["jobs"]) == []


def test_link_loads_nothing_of_meshd() -> None:
    loaded = loaded_by(*_package_modules("meshd.link"))
    assert [m for m in _hits(loaded, ("meshd",)) if m != "meshd"] == _hits(loaded, ("meshd.link",))


# What only `meshd serve` may load: the daemon's code and its heavy dependencies.
# aiohttp as a whole, not only aiohttp.web: its client import alone is ~0.2 s, most of
# a command's budget (the events websocket imports it when a command follows jobs).
DAEMON_ONLY = (
    "meshd.daemon",
    "meshd.jobs",
    "meshd.mesh",
    "meshd.toolchain",
    "meshd.link",
    "meshd.api.server",
    "meshd.api.routes",
    "meshd.api.mesh_routes",
    "meshd.api.state",
    "meshd.api.validation",
    "aiohttp",
    "sqlite3",
    "zeroconf",
    "cryptography",
    "msgpack",
    "yaml",
)


def test_cli_loads_no_daemon_code() -> None:
    loaded = loaded_by("meshd.cli")
    assert "meshd.cli.jobs" in loaded and "meshd.api.client" in loaded  # it did import
    assert _hits(loaded, DAEMON_ONLY) == []


def test_api_client_loads_no_server() -> None:
    assert _hits(loaded_by("meshd.api.client"), DAEMON_ONLY) == []


# Standard-library-only modules any layer may import (the CLI included).
LEAVES = (
    "meshd.config",
    "meshd.db",
    "meshd.address",
    "meshd.version_policy",
    "meshd.release_version",
)


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaves_load_nothing_of_meshd(leaf: str) -> None:
    """Settings, the database, addresses and the version policy are used by the CLI, the
    engine and the mesh alike: they may load each other, nothing else of meshd."""
    loaded = loaded_by(leaf)
    assert [m for m in _hits(loaded, ("meshd",)) if m not in ("meshd", *LEAVES)] == []
