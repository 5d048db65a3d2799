"""A second process using the same toolchain store, for the cross-process tests.

    python versions_worker.py provision DATA_DIR WHEELHOUSE VERSION
    python versions_worker.py lease DATA_DIR WHEELHOUSE VERSION

``provision`` runs ``ToolchainStore.ensure`` and prints every log line (flushed), then
``READY <path>``. ``lease`` holds ``ToolchainStore.use`` and prints ``LEASED`` until
its standard input closes. Errors print ``FAILED <message>`` and exit 1.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from meshd.toolchain.versions import PipOptions, ProvisionError, ToolchainStore


def _say(line: str) -> None:
    print(line, flush=True)


async def _main(command: str, data_dir: str, wheelhouse: str, version: str) -> int:
    store = ToolchainStore(Path(data_dir), pip=PipOptions(find_links=(wheelhouse,)))
    try:
        if command == "provision":
            toolchain = await store.ensure(version, on_line=_say)
            _say(f"READY {toolchain.path}")
        elif command == "lease":
            async with store.use(version, on_line=_say):
                _say("LEASED")
                await asyncio.to_thread(sys.stdin.read)
        else:
            _say(f"FAILED unknown command {command}")
            return 2
    except ProvisionError as exc:
        _say(f"FAILED {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(*sys.argv[1:5])))
