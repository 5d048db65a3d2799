#!/usr/bin/env python3
"""The stand-in esphome, whose ``compile`` also compiles one real C file the way
PlatformIO does under meshd's pre-script: ``$MESHD_CCACHE gcc -c <absolute paths>``
from the configuration's build directory (plain ``gcc`` when the cache is off).

The source is the same for every configuration (a shared "core" file), so a second
configuration's compile is a cache hit exactly when the cache is shared across build
directories. Everything else is ``tests/support/standin_esphome.py``.
"""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

STANDIN = Path(__file__).resolve().parents[1] / "support" / "standin_esphome.py"
CORE = "int core_answer(int x) { return x * 6 + 6; }\n"


def _compile_core(config: Path) -> None:
    build = config.parent / ".esphome" / "build" / config.stem
    (build / "src").mkdir(parents=True, exist_ok=True)
    source = build / "src" / "core.c"
    source.write_text(CORE, encoding="utf-8")
    wrapper = [os.environ["MESHD_CCACHE"]] if os.environ.get("MESHD_CCACHE") else []
    argv = [*wrapper, "gcc", "-O2", "-c", str(source), "-o", str(build / "core.o")]
    subprocess.run(argv, cwd=build, check=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "compile" in args:
        _compile_core(Path(args[args.index("compile") + 1]).absolute())
    sys.argv = [str(STANDIN), *args]
    runpy.run_path(str(STANDIN), run_name="__main__")
