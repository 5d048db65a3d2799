"""Make text a peer wrote safe to print on the operator's terminal.

Peer names, a receiver's log lines and its error messages reach ``meshd`` output
verbatim. A terminal obeys what it is sent: ``ESC ] 52`` writes the clipboard,
``ESC ] 0`` retitles the window, ``ESC ] 8`` turns text into a link elsewhere, CSI
moves the cursor and erases lines (hiding what came before), DCS reaches the
terminal's own parser, and Unicode bidi overrides reorder what a line appears to
say. rich adds one more language: ``[link=...]`` markup in a string printed with
markup on, and a stray ``[/bold]`` raises ``MarkupError`` (a crash on a peer's name).

:func:`clean` removes every escape sequence (7-bit ``ESC`` and 8-bit C1 forms, with
their payloads) and bidi controls, and shows any other control character as a
visible ``\\xNN`` escape, so nothing invisible survives and nothing is silently
lost. :func:`clean_markup` also escapes rich markup. Both are pure and idempotent.
"""

from __future__ import annotations

import re
from typing import Final

from rich.markup import escape

# Escape sequences with their payloads (ECMA-48): CSI (ESC [ or 0x9B) parameters,
# intermediates and a final byte; OSC (ESC ] or 0x9D) up to BEL or ST; DCS, SOS, PM,
# APC (ESC P X ^ _ or 0x90 0x98 0x9E 0x9F) up to ST; and the short ESC forms. An
# unterminated string sequence runs to the end of the text: better to lose the rest
# of a hostile line than to hand its payload to the terminal.
_SEQUENCE: Final = re.compile(
    r"""
      (?:\x1b\[|\x9b) [\x30-\x3f]* [\x20-\x2f]* [\x40-\x7e]?
    | (?:\x1b\]|\x9d) [^\x07\x1b\x9c]* (?:\x07|\x1b\\|\x9c)?
    | (?:\x1b[PX^_]|[\x90\x98\x9e\x9f]) [^\x1b\x9c]* (?:\x1b\\|\x9c)?
    | \x1b [\x20-\x2f]* [\x30-\x7e]?
    """,
    re.VERBOSE,
)

# Unicode formatting characters that change how a line reads without being seen:
# the bidi embeddings, overrides and isolates ("Trojan Source"), the marks, and the
# line/paragraph separators some terminals break lines on.
_INVISIBLE: Final = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")

# C0 controls, DEL and C1 controls left after the sequences are gone.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")

ELLIPSIS: Final = "…"


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\t":
        return " "
    return f"\\x{ord(char):02x}"


def clean(text: object, *, multiline: bool = False, max_length: int | None = None) -> str:
    """``text`` (anything; ``str()`` of it) without escape sequences or invisible controls.

    A newline survives only with ``multiline`` (an error message of several lines);
    a tab becomes a space; every other control is shown as ``\\xNN``. ``max_length``
    cuts a long single value (a name) with an ellipsis.
    """
    value = text if isinstance(text, str) else str(text)
    value = _SEQUENCE.sub("", value)
    value = _INVISIBLE.sub("", value)
    if multiline:
        value = "\n".join(_CONTROL.sub(_visible, line) for line in value.split("\n"))
    else:
        value = _CONTROL.sub(_visible, value)
    if max_length is not None and len(value) > max_length:
        value = value[: max(0, max_length - 1)] + ELLIPSIS
    return value


def clean_markup(text: object, *, multiline: bool = False, max_length: int | None = None) -> str:
    """:func:`clean`, then rich markup escaped: for strings printed with markup on.

    Prefer ``rich.text.Text(clean(...))`` (no markup at all) where a renderable can be
    used; rich's ``escape`` doubles a trailing backslash, which then prints doubled.
    """
    return escape(clean(text, multiline=multiline, max_length=max_length))
