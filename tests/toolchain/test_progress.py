"""Progress parsing against output produced by the tools' own progress code."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

from meshd.toolchain.progress import (
    CompileProgress,
    EsptoolProgress,
    Monotonic,
    OtaProgress,
    clean_line,
    iter_segments,
)


def _esphome_ota_bar(steps: int) -> str:
    """What ``esphome --dashboard upload`` writes to stderr while uploading."""
    from esphome.core import CORE
    from esphome.helpers import ProgressBar

    was = CORE.dashboard
    CORE.dashboard = True
    buf = io.StringIO()
    old, sys.stderr = sys.stderr, buf
    try:
        bar = ProgressBar("Uploading")
        for i in range(steps + 1):
            bar.update(i / steps)
        bar.done()
    finally:
        sys.stderr = old
        CORE.dashboard = was
    return buf.getvalue()


def _esptool_bar(address: int, done: int, total: int) -> str:
    from esptool.logger import log

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        log.progress_bar(
            cur_iter=done,
            total_iters=total,
            prefix=f"Writing at {address:#010x} ",
            suffix=f" {done}/{total} bytes...",
        )
    return out.getvalue()


def test_ota_bar_segments_give_every_percentage() -> None:
    parser = OtaProgress()
    seen = [parser.feed(clean_line(s)) for s in iter_segments(_esphome_ota_bar(10))]
    values = [v for v in seen if v is not None]
    assert values == [i / 10 for i in range(11)]


def test_ota_bar_last_segment_is_done() -> None:
    # A reader that keeps only the last \r segment of a line still sees 100%.
    last = _esphome_ota_bar(4).rstrip("\r\n").rsplit("\r", 1)[-1]
    assert OtaProgress().feed(clean_line(last)) == 1.0


def test_ota_ignores_other_lines() -> None:
    assert OtaProgress().feed("INFO Uploading /x/program (123 bytes)") is None


def test_clean_line_strips_raw_and_dashboard_escapes() -> None:
    assert clean_line("\x1b[32mINFO ok\x1b[0m") == "INFO ok"
    assert clean_line("\\033[31mERROR bad\\033[0m  ") == "ERROR bad"


def test_esptool_v5_bars_fold_over_images() -> None:
    parser = EsptoolProgress(images=3)
    fractions = []
    for base in (0x0, 0x8000, 0x10000):
        for done in (0, 2048, 4096):
            line = clean_line(_esptool_bar(base + done, done, 4096))
            fractions.append(parser.feed(line))
    assert fractions[0] == 0.0
    assert fractions[2] is not None and abs(fractions[2] - 1 / 3) < 1e-9
    assert fractions[-1] == 1.0
    assert fractions == sorted(fractions)  # type: ignore[type-var]


def test_esptool_v4_format() -> None:
    parser = EsptoolProgress()
    assert parser.feed("Writing at 0x00010000... (50 %)") == 0.5


def test_compile_progress_counts_objects(tmp_path: Path) -> None:
    src = tmp_path / "build" / "src"
    (src / "esphome" / "core").mkdir(parents=True)
    for name in ("main.cpp", "esphome/core/log.cpp", "esphome/core/a.c", "esphome/core/x.h"):
        (src / name).write_text("")
    parser = CompileProgress()
    assert parser.feed(f"INFO Compiling app... Build path: {tmp_path / 'build'}") == 0.05
    first = parser.feed("Compiling .pioenvs/n/src/main.o")
    second = parser.feed("Compiling .pioenvs/n/src/esphome/core/log.o")
    third = parser.feed("Compiling .pioenvs/n/src/esphome/core/a.o")
    assert first is not None and second is not None and third is not None
    assert 0.05 < first < second < third
    assert abs(third - 0.95) < 1e-9
    assert parser.feed("Linking .pioenvs/n/program") == 0.97


def test_monotonic_never_goes_back() -> None:
    seen: list[float] = []
    report = Monotonic(seen.append)
    for value in (0.1, 0.5, 0.2, 0.5, 1.2):
        report(value)
    assert seen == [0.1, 0.5, 1.0]
