"""Provision a PlatformIO core dir that lets ESPHome's ``host:`` platform build offline.

PlatformIO normally downloads ``tool-scons`` and the ``native`` platform from its
registry on first use. Here there is no network, so we lay both down by hand in the
exact shape PlatformIO's package manager recognises:

* ``packages/tool-scons``: SCons copied from the installed PyPI package, a ``scons.py``
  entry point (what ``platformio/platform/_run.py`` executes), a ``package.json`` and
  a ``.piopm`` record (``platformio/package/meta.py``: type/name/version/spec). The
  version must satisfy ``platformio.dependencies``' ``~4.40801.0`` (SCons 4.8.1).
* ``platforms/native``: a ``platform.json`` manifest, a ``.piopm`` of type platform, and
  a short ``builder/main.py`` SConscript that uses PlatformIO's own ``BuildProgram`` so
  the output ("Compiling .pioenvs/...", "Linking ...") matches real platforms.

Every PlatformIO invocation must also get :func:`offline_env`, which turns off
telemetry and update checks so nothing tries to phone home.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

# SCons 4.8.1 encoded the way PlatformIO versions its tool-scons package (4.MMmmpp).
TOOL_SCONS_VERSION = "4.40801.0"
NATIVE_PLATFORM_VERSION = "1.2.1"

_SCONS_ENTRY = '''\
"""tool-scons entry point: run the SCons copied next to this file."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import SCons.Script  # noqa: E402

SCons.Script.main()
'''

# The SConscript PlatformIO runs for `platform = platformio/native`. PlatformIO's own
# builder (platformio/builder/main.py) has already set up the environment, the
# project sources and the "Compiling $TARGET" messages; a native platform only names
# the host toolchain and builds the program, as the upstream platform-native does.
_NATIVE_BUILDER = '''\
"""Offline stand-in for platformio/platform-native: build with the system gcc/g++."""
from SCons.Script import AlwaysBuild, Default, DefaultEnvironment

env = DefaultEnvironment()
env.Replace(
    AR="ar",
    AS="as",
    CC="gcc",
    CXX="g++",
    OBJCOPY="objcopy",
    RANLIB="ranlib",
    SIZETOOL="size",
    SIZEPRINTCMD="$SIZETOOL $SOURCES",
    PROGSUFFIX="",
)

target_bin = env.BuildProgram()
AlwaysBuild(env.Alias("upload", target_bin))
Default([target_bin])
'''


def _piopm(kind: str, name: str, version: str) -> dict[str, object]:
    return {
        "type": kind,
        "name": name,
        "version": version,
        "spec": {
            "owner": "platformio",
            "id": None,
            "name": name,
            "requirements": None,
            "uri": None,
        },
    }


def _write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def provision_offline_core(core_dir: Path) -> Path:
    """Lay down tool-scons and the native platform under ``core_dir``; return it."""
    spec = importlib.util.find_spec("SCons")
    if spec is None or spec.origin is None:
        raise RuntimeError("SCons is not installed; the test extras pin scons==4.8.1")
    scons_src = Path(spec.origin).parent

    scons_pkg = core_dir / "packages" / "tool-scons"
    scons_pkg.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        scons_src,
        scons_pkg / "SCons",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (scons_pkg / "scons.py").write_text(_SCONS_ENTRY, encoding="utf-8")
    _write_json(
        scons_pkg / "package.json",
        {"name": "tool-scons", "version": TOOL_SCONS_VERSION, "description": "SCons (offline)"},
    )
    _write_json(scons_pkg / ".piopm", _piopm("tool", "tool-scons", TOOL_SCONS_VERSION))

    native = core_dir / "platforms" / "native"
    (native / "builder").mkdir(parents=True, exist_ok=True)
    (native / "builder" / "main.py").write_text(_NATIVE_BUILDER, encoding="utf-8")
    _write_json(
        native / "platform.json",
        {
            "name": "native",
            "title": "Native",
            "description": "Native development platform (offline test stand-in)",
            "version": NATIVE_PLATFORM_VERSION,
            "engines": {"platformio": "^6"},
            "frameworks": {},
            "packages": {},
        },
    )
    _write_json(native / ".piopm", _piopm("platform", "native", NATIVE_PLATFORM_VERSION))
    return core_dir


def offline_env(core_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for esphome/PlatformIO runs against ``core_dir`` with no phoning home."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "PLATFORMIO_CORE_DIR": str(core_dir),
            "PLATFORMIO_SETTING_ENABLE_TELEMETRY": "No",
            "PLATFORMIO_SETTING_CHECK_PLATFORMIO_INTERVAL": "9999",
            "PLATFORMIO_SETTING_CHECK_PRUNE_SYSTEM_THRESHOLD": "0",
            "PLATFORMIO_NO_ANSI": "true",
            "PLATFORMIO_DISABLE_PROGRESSBAR": "true",
        }
    )
    return env
