"""A stand-in ``esphome`` package as a real wheel, written at test time, offline.

Provisioning tests need something pip really installs from a wheelhouse with
``--no-index``: a wheel named ``esphome-<version>-py3-none-any.whl`` with a console
script ``esphome``. Its ``version`` command prints ``Version: <version>`` exactly as
the real CLI does (``esphome/__main__.py``: ``Version: 2026.6.5``). A wheel is a zip
with a ``.dist-info`` (METADATA, WHEEL, entry_points.txt, RECORD with sha256 of
every file), so it is written directly; no build backend is needed.

Knobs, baked into the package at build time so the installed command behaves the same
whatever environment pip or meshd give it:

* ``reports``: the version ``esphome version`` claims (a lying package);
* ``version_exit``: the exit status of ``esphome version``;
* ``gate``: a path; ``esphome version`` first creates ``<gate>.waiting``, then waits
  until ``<gate>`` exists, so a test can hold provisioning inside the version check;
* ``delegate``: a path to ``standin_esphome.py``; every other command is handed to it
  (as esphome ``<version>``, run by the interpreter that built the wheel, which has the
  stand-in's PyYAML), so a provisioned toolchain can really compile.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

_MAIN = '''\
"""meshd test stand-in for the esphome CLI (only `version` is real)."""
import os
import sys
import time

VERSION = {version!r}
REPORTS = {reports!r}
VERSION_EXIT = {version_exit!r}
GATE = {gate!r}
DELEGATE = {delegate!r}
DELEGATE_PYTHON = {delegate_python!r}
# The test that set a gate opens it within seconds; this bound only stops a stand-in
# that lost its test from running forever.
GATE_LIMIT = 300.0


def _wait_for_gate() -> None:
    with open(GATE + ".waiting", "w") as handle:
        handle.write(str(os.getpid()))
    deadline = time.monotonic() + GATE_LIMIT
    while not os.path.exists(GATE):
        if time.monotonic() > deadline:
            sys.exit("stand-in esphome: gate never opened")
        time.sleep(0.05)


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    if args[:1] == ["version"] or "--version" in sys.argv[1:]:
        if GATE:
            _wait_for_gate()
        print(f"Version: {{REPORTS}}", flush=True)
        return VERSION_EXIT
    if DELEGATE:
        os.environ["STANDIN_ESPHOME_VERSION"] = VERSION
        os.execv(DELEGATE_PYTHON, [DELEGATE_PYTHON, DELEGATE, *sys.argv[1:]])
    print(f"stand-in esphome {{VERSION}}: unsupported command {{sys.argv[1:]}}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
'''


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_standin_wheel(
    wheelhouse: Path,
    version: str,
    *,
    reports: str | None = None,
    version_exit: int = 0,
    gate: Path | None = None,
    delegate: Path | None = None,
) -> Path:
    """Write ``esphome-<version>-py3-none-any.whl`` into ``wheelhouse``; return its path."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    dist_info = f"esphome-{version}.dist-info"
    files: dict[str, bytes] = {
        "esphome/__init__.py": f'__version__ = "{version}"\n'.encode(),
        "esphome/__main__.py": _MAIN.format(
            version=version,
            reports=reports if reports is not None else version,
            version_exit=version_exit,
            gate=str(gate) if gate is not None else "",
            delegate=str(delegate) if delegate is not None else "",
            delegate_python=sys.executable,
        ).encode(),
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            "Name: esphome\n"
            f"Version: {version}\n"
            "Summary: meshd test stand-in for the esphome CLI\n"
            "Requires-Python: >=3.8\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: meshd-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        f"{dist_info}/entry_points.txt": b"[console_scripts]\nesphome = esphome.__main__:main\n",
    }
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = wheelhouse / f"esphome-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path
