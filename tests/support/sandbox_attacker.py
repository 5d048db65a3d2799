"""What a hostile external component does once esphome runs it on a receiver.

tests/toolchain/test_sandbox.py copies this file into a sandboxed work directory (as
a bundle would deliver an external component) and runs it there. It tries every
theft and damage the threat model names and prints one JSON object with the outcome
of each attempt: ``"ok"`` plus what it got, or the error it met. It must run with
nothing but the standard library.

Usage: ``python sandbox_attacker.py SPEC_JSON`` where the spec names the paths to read
(``read``), to write (``write``), to look for (``exists``), and a loopback port to
connect to (``connect``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def attempt_read(path: str) -> dict[str, object]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": exc.errno}
    return {"ok": True, "data": data[:200].decode("utf-8", "replace")}


def attempt_write(path: str) -> dict[str, object]:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("pwned by a sandboxed build\n", encoding="utf-8")
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": exc.errno}
    return {"ok": True}


def attempt_connect(port: int) -> dict[str, object]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"hello from the sandbox\n")
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__, "errno": exc.errno}
    return {"ok": True}


def capabilities() -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return line.split()[1]
    return "unknown"


def main() -> None:
    spec = json.loads(sys.argv[1])
    report = {
        "read": {path: attempt_read(path) for path in spec.get("read", [])},
        "write": {path: attempt_write(path) for path in spec.get("write", [])},
        "connect": attempt_connect(spec["connect"]) if spec.get("connect") else None,
        "exists": {path: os.path.lexists(path) for path in spec.get("exists", [])},
        "root": sorted(os.listdir("/")),
        "tmp": sorted(os.listdir("/tmp")),
        "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "cap_eff": capabilities(),
        "env": dict(os.environ),
        "cwd": os.getcwd(),
    }
    print("ATTACK-REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
