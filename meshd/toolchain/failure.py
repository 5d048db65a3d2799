"""Collect the lines that explain a failed esphome run, for the job's ``error``.

Every line already goes to the job log; the error is the part a user must see
without opening it. ESPHome reports failures in three shapes:

* ``ERROR <message>`` log records, whose message may span several lines (a YAML
  syntax error, an OTA error such as ``Authentication invalid``);
* a ``Failed config`` block (schema validation), printed without a log prefix and
  running to the end of the output;
* compiler and SCons errors from PlatformIO (``file.cpp:3:1: error: ...``,
  ``*** [target] Error 1``).

Lines are cleaned of colour codes before they get here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# The job error is shown in lists and events; the full text stays in the job log.
MAX_ERROR_CHARS = 4000
# With nothing recognisable, the last lines of output are the best explanation.
FALLBACK_TAIL_LINES = 12

_LOG_PREFIX_RE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
_ERROR_START_RE = re.compile(r"^(ERROR|CRITICAL) ")
_FAILED_CONFIG = "Failed config"
_TOOL_ERROR_RE = re.compile(
    r"(: (fatal )?error: )|(^\*\*\* \[)|(^Error: )|(^A fatal error occurred)"
)


class FailureCollector:
    """Feed every output line; ask for :meth:`summary` when the run failed."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._in_block = False
        self._tail: list[str] = []

    def feed(self, line: str) -> None:
        if line.strip():
            self._tail.append(line)
            if len(self._tail) > FALLBACK_TAIL_LINES:
                del self._tail[0]
        if _ERROR_START_RE.match(line):
            self._in_block = True
            self._lines.append(_LOG_PREFIX_RE.sub("", line, count=1))
            return
        if line.strip() == _FAILED_CONFIG:
            self._in_block = True
            self._lines.append(line.strip())
            return
        if _LOG_PREFIX_RE.match(line):
            self._in_block = False
            return
        if self._in_block:
            if line.strip():
                self._lines.append(line.rstrip())
            return
        if _TOOL_ERROR_RE.search(line):
            self._lines.append(line.strip())

    def summary(self, headline: str) -> str:
        """``headline`` followed by the error lines seen (or the output's tail)."""
        body: Sequence[str] = self._lines or self._tail
        text = "\n".join([headline, *body]) if body else headline
        if len(text) > MAX_ERROR_CHARS:
            text = text[: MAX_ERROR_CHARS - 1] + "…"
        return text
