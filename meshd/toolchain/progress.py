"""Turn esphome/PlatformIO/esptool output lines into a progress fraction.

The formats come from the installed tools, not from guesses:

* OTA: ``esphome.helpers.ProgressBar`` writes ``\\rUploading: [=====     ] 42% `` (and
  ``... 100% Done...`` at the end) to stderr, but only on a TTY or with
  ``--dashboard``. A reader that splits on ``\\r`` as well as ``\\n`` (as ESPHome's
  dashboard does) sees one line per percent.
* esptool 5 (``esptool.logger.progress_bar``): ``Writing at 0x00010000 [==>   ]  12.3%
  32768/262144 bytes...``; esptool 4: ``Writing at 0x00010000... (12 %)``. One bar per
  flashed image (bootloader, partitions, app), each from 0 to 100%.
* Compile: ESPHome logs ``Compiling app... Build path: PATH`` after generating the
  sources; PlatformIO's builder then prints ``Compiling .pioenvs/.../x.o`` per object
  (its ``CXXCOMSTR``) and ``Linking ...``. The estimate is objects compiled over the
  sources in ``PATH/src``: exact for a cold build, and a warm build that recompiles
  two files simply jumps to linking.

ESPHome colours its log lines; with ``--dashboard`` the escape byte arrives as the
four characters ``\\033``. :func:`clean_line` strips both forms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

_ANSI_RE = re.compile(r"(?:\x1b|\\033)\[[0-9;?]*[A-Za-z]")

_OTA_RE = re.compile(r"Uploading: \[[= ]*\] (\d{1,3})%")
_ESPTOOL_V5_RE = re.compile(r"Writing at (0x[0-9a-fA-F]+) \[[=> ]*\]\s+([\d.]+)%")
_ESPTOOL_V4_RE = re.compile(r"Writing at (0x[0-9a-fA-F]+)\.\.\. \((\d{1,3}) ?%\)")
_ESPTOOL_IMAGE_RE = re.compile(r"^Writing '.+' at 0x[0-9a-fA-F]+\.\.\.$")
_BUILD_PATH_RE = re.compile(r"Compiling app\.\.\. Build path: (.+?)\s*$")
_COMPILING_RE = re.compile(r"^Compiling \S")
_LINKING_RE = re.compile(r"^Linking \S")

# Source suffixes PlatformIO compiles into objects (one "Compiling" line each).
SOURCE_SUFFIXES = frozenset({".c", ".cc", ".cpp", ".cxx", ".S", ".s"})

# Compile progress bands: validation and code generation happen before the first
# object, linking after the last; both are short next to compiling on a Pi.
_COMPILE_START = 0.05
_COMPILE_END = 0.95
_LINKING = 0.97


def clean_line(line: str) -> str:
    """Drop ANSI colour codes (raw or dashboard-escaped) and trailing whitespace."""
    return _ANSI_RE.sub("", line).rstrip()


def iter_segments(chunk: str) -> Iterator[str]:
    """Split terminal output the way ESPHome's dashboard does: on ``\\r`` and ``\\n``."""
    for segment in re.split(r"[\r\n]", chunk):
        if segment:
            yield segment


class ProgressParser(Protocol):
    def feed(self, line: str) -> float | None:
        """Return the new overall fraction in [0, 1] if ``line`` tells one, else None."""


class OtaProgress:
    """ESPHome's OTA upload bar."""

    def feed(self, line: str) -> float | None:
        match = _OTA_RE.search(line)
        if match is None:
            return None
        return min(int(match.group(1)), 100) / 100


class EsptoolProgress:
    """esptool's per-image write bars folded into one fraction over ``images`` images.

    esptool 5 announces each image (``Writing 'FILE' at 0x10000...``); esptool 4 does
    not, so there a bar that restarts lower at a new address marks the next image.
    When the image count is unknown the fraction is that of the current image.
    """

    def __init__(self, images: int | None = None) -> None:
        self._images = images if images and images > 0 else None
        self._index = -1
        self._announced = False
        self._last: float | None = None
        self._address: str | None = None

    def feed(self, line: str) -> float | None:
        if _ESPTOOL_IMAGE_RE.search(line):
            self._announced = True
            self._index += 1
            self._last = None
            return self._overall(0.0)
        match = _ESPTOOL_V5_RE.search(line) or _ESPTOOL_V4_RE.search(line)
        if match is None:
            return None
        address, fraction = match.group(1), min(float(match.group(2)), 100.0) / 100
        if self._index < 0:
            self._index = 0
        elif (
            not self._announced
            and self._last is not None
            and fraction < self._last
            and address != self._address
        ):
            self._index += 1
        self._last = fraction
        self._address = address
        return self._overall(fraction)

    def _overall(self, fraction: float) -> float:
        if self._images is None:
            return fraction
        done = min(max(self._index, 0), self._images - 1)
        return (done + fraction) / self._images


def count_sources(build_path: Path) -> int:
    """Count the sources under ``build_path/src`` that PlatformIO will compile."""
    src = build_path / "src"
    if not src.is_dir():
        return 0
    return sum(1 for p in src.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file())


class CompileProgress:
    """Estimate compile progress from PlatformIO's per-object lines."""

    def __init__(self, count: Callable[[Path], int] = count_sources) -> None:
        self._count = count
        self._total = 0
        self._compiled = 0

    def feed(self, line: str) -> float | None:
        match = _BUILD_PATH_RE.search(line)
        if match is not None:
            self._total = self._count(Path(match.group(1)))
            return _COMPILE_START
        if _COMPILING_RE.match(line):
            self._compiled += 1
            if self._total <= 0:
                return None
            done = min(self._compiled / self._total, 1.0)
            return _COMPILE_START + (_COMPILE_END - _COMPILE_START) * done
        if _LINKING_RE.match(line):
            return _LINKING
        return None


class Monotonic:
    """Forward only increases to ``report``: bars restart per image, jobs should not."""

    def __init__(self, report: Callable[[float], None]) -> None:
        self._report = report
        self.value = 0.0

    def __call__(self, fraction: float) -> None:
        fraction = max(0.0, min(fraction, 1.0))
        if fraction > self.value:
            self.value = fraction
            self._report(fraction)


class Banded:
    """Map ``parser``'s [0, 1] onto [``low``, ``high``]: one stage of a multi-stage job."""

    def __init__(self, parser: ProgressParser, low: float, high: float) -> None:
        self._parser = parser
        self._low = low
        self._span = high - low

    def feed(self, line: str) -> float | None:
        fraction = self._parser.feed(line)
        return None if fraction is None else self._low + self._span * fraction


class Combined:
    """Feed every line to each parser; the last one that speaks wins."""

    def __init__(self, *parsers: ProgressParser) -> None:
        self._parsers = parsers

    def feed(self, line: str) -> float | None:
        result = None
        for parser in self._parsers:
            fraction = parser.feed(line)
            if fraction is not None:
                result = fraction
        return result
