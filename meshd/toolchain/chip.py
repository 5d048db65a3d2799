"""verify-chip: ask the chip on a serial port what it is before flashing it.

Flashing an ESP32-S3 build onto an ESP32-C3 fails late and confusingly (or, with a
merged image, bricks the boot until a manual reflash). So before a serial upload
meshd runs ``esptool --port PORT chip-id`` (chip autodetection, no ``--chip``) and
compares the answer with the platform ESPHome recorded for the build.

esptool 5 prints ``Detecting chip type... ESP32-S3`` and ``Chip type:  ESP32-S3
(QFN56) (revision v0.0)``; esptool 4 printed ``Chip is ESP32-S3 (revision v0.1)``.
ESPHome records the variant without the dash (``ESP32S3``), so names are compared
after dropping everything but letters and digits.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from meshd.toolchain.failure import FailureCollector
from meshd.toolchain.progress import clean_line
from meshd.toolchain.storage import StorageRecord
from meshd.toolchain.tools import Toolchain

_CHIP_RES = (
    re.compile(r"Detecting chip type\.\.\. (ESP[\w-]+)"),
    re.compile(r"^Chip type:\s+(ESP[\w-]+)"),
    re.compile(r"^Chip is (ESP[\w-]+)"),
    re.compile(r"^Connected to (ESP[\w-]+) on "),
)


class ChipError(Exception):
    """The chip could not be identified, or is not the one the build is for."""


class ChipMismatch(ChipError):
    def __init__(self, expected: str, found: str) -> None:
        super().__init__(f"chip mismatch (expected {expected}, found {found})")
        self.expected = expected
        self.found = found


def normalise_chip(name: str) -> str:
    """``ESP32-S3`` and ``ESP32S3`` compare equal; ``ESP8266EX`` is an ``ESP8266``."""
    norm = re.sub(r"[^A-Z0-9]", "", name.upper())
    return "ESP8266" if norm.startswith("ESP8266") else norm


def expected_chip(record: StorageRecord) -> str | None:
    """The chip a build targets, or None for platforms esptool does not flash."""
    if record.family in ("esp32", "esp8266"):
        return record.target_platform
    return None


def parse_chip(line: str) -> str | None:
    for pattern in _CHIP_RES:
        match = pattern.search(line)
        if match is not None:
            return match.group(1)
    return None


async def detect_chip(
    toolchain: Toolchain,
    port: str,
    log: Callable[[str], None],
    *,
    on_start: Callable[[int], None] | None,
) -> str:
    """Run ``esptool chip-id`` on ``port`` and return the chip name it reports.

    Cancellation kills esptool's process group and propagates; ``on_start`` gets the
    group (see :meth:`Toolchain.run`).
    """
    found: list[str] = []
    failure = FailureCollector()

    def on_line(raw: str) -> None:
        line = clean_line(raw)
        log(line)
        failure.feed(line)
        chip = parse_chip(line)
        if chip is not None and not found:
            found.append(chip)

    argv = toolchain.esptool_argv("--port", port, "chip-id")
    result = await toolchain.run(argv, on_line=on_line, on_start=on_start)
    if found:
        return found[0]
    raise ChipError(
        failure.summary(f"could not identify the chip on {port} (esptool exit {result.returncode})")
    )


async def verify_chip(
    toolchain: Toolchain,
    port: str,
    expected: str,
    log: Callable[[str], None],
    *,
    on_start: Callable[[int], None] | None,
) -> str:
    """Detect the chip on ``port``; raise ``ChipMismatch`` unless it is ``expected``."""
    found = await detect_chip(toolchain, port, log, on_start=on_start)
    if normalise_chip(found) != normalise_chip(expected):
        raise ChipMismatch(expected, found)
    log(f"verify-chip: {found} on {port} matches the build ({expected})")
    return found
