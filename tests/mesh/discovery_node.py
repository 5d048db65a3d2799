"""A discovery-only meshd node for multi-host tests: ``ip netns exec NS python -m ...``.

Runs ``Discovery`` pinned to ``--ip`` (advertising and browsing) and speaks JSON lines:

* stdout: ``{"event": "ready", "instance": ...}`` once registered, then
  ``{"event": "peers", "peers": [snapshot...]}`` after every registry change;
* stdin: ``{"cmd": "lane", "idle": bool, "idle_since": float|null}`` and
  ``{"cmd": "stop"}`` (a goodbye, then exit 0). EOF on stdin also stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from meshd.mesh.peering.discovery import AdvertInfo, Discovery
from meshd.mesh.peering.registry import Registry


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ip", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--fp", required=True)
    parser.add_argument("--port", type=int, default=7420)
    parser.add_argument("--ttl", type=int, default=120)
    parser.add_argument("--stale-check", type=float, default=10.0)
    args = parser.parse_args(argv)

    registry = Registry()
    registry.add_listener(lambda _c: emit({"event": "peers", "peers": registry.snapshot()}))
    advert = AdvertInfo(
        fingerprint=args.fp,
        name=args.name,
        port=args.port,
        protocol=1,
        esphome_version="2026.6.5",
        idle=True,
        idle_since=1_700_000_000.0,
        ttl=args.ttl,
    )
    discovery = Discovery(
        registry,
        interfaces=[args.ip],
        advertise=advert,
        browse=True,
        stale_check_interval=args.stale_check,
    )
    await discovery.start()
    emit({"event": "ready", "instance": discovery.instance_name})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "lane":
                discovery.update_lane(command["idle"], command["idle_since"])
            elif command["cmd"] == "stop":
                break
    finally:
        await discovery.stop()
    emit({"event": "stopped"})
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
