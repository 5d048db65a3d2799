"""Loads protocol/vectors/generate.py as a module (it is a script, not a package)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("meshd_vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())
