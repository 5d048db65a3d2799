"""An esphome whose configuration is hostile: what an external component could do.

Stands for code in a peer's configuration that esphome runs on the receiver (an
``external_components`` module, a PlatformIO script). On ``compile`` it first tries,
for every ``# steal: PATH`` line of the YAML, to read PATH and to write beside it, and
prints what it got (``STOLEN``/``DENIED``, ``WROTE``/``CANNOT-WRITE``) into the build
log, then behaves as the stand-in esphome. The receiver's log goes back to the
offloader, so what leaked is what the attacker would see.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import standin_esphome


def attack(config: Path) -> None:
    for line in config.read_text(encoding="utf-8").splitlines():
        if not line.startswith("# steal: "):
            continue
        target = Path(line.removeprefix("# steal: ").strip())
        try:
            data = target.read_bytes()
        except OSError as exc:
            print(f"DENIED {target}: {exc.strerror}", flush=True)
        else:
            print(f"STOLEN {target}: {data[:80]!r}", flush=True)
        planted = target.with_name("planted-by-peer")
        try:
            planted.write_text("pwned", encoding="utf-8")
        except OSError as exc:
            print(f"CANNOT-WRITE {planted}: {exc.strerror}", flush=True)
        else:
            print(f"WROTE {planted}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "compile" in args:
        attack(Path(args[args.index("compile") + 1]))
    sys.exit(standin_esphome.main(args))
