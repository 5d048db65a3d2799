"""Peer-supplied text on the operator's terminal: what a hostile peer sends, what prints."""

from __future__ import annotations

import io
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from meshd.cli.sanitize import ELLIPSIS, clean, clean_markup

ESC = "\x1b"

# (what a peer sends, what the terminal may be shown)
HOSTILE = [
    # clipboard write (OSC 52), terminated by BEL and by ST
    (f"kitchen{ESC}]52;c;cm0gLXJmIH4K\x07", "kitchen"),
    (f"kitchen{ESC}]52;c;cm0gLXJmIH4K{ESC}\\", "kitchen"),
    # window title, and a hyperlink that points somewhere else than it says
    (f"{ESC}]0;owned{ESC}\\desktop", "desktop"),
    (f"{ESC}]8;;http://evil.example/{ESC}\\docs{ESC}]8;;{ESC}\\", "docs"),
    # clear the screen, home the cursor, erase the line, colours
    (f"{ESC}[2J{ESC}[H{ESC}[2Kcompiled OK{ESC}[31m{ESC}[0m", "compiled OK"),
    # 8-bit CSI and OSC (C1 controls)
    ("a\x9b2Jb\x9d0;title\x07c", "abc"),
    # DCS (a device control string reaching the terminal's parser), SOS, PM, APC
    (f"x{ESC}Pq#0;2;0;0;0#1~~@@{ESC}\\y", "xy"),
    (f"x{ESC}_payload{ESC}\\y{ESC}^pm{ESC}\\z{ESC}Xsos{ESC}\\", "xyz"),
    # short ESC forms: save/restore cursor, reset the terminal, charset switches
    (f"a{ESC}7b{ESC}8c{ESC}cd{ESC}(0e", "abcde"),
    # unterminated: the payload is dropped, never passed on
    (f"name{ESC}]52;c;secret-to-clipboard", "name"),
    (f"name{ESC}[", "name"),
    (f"name{ESC}", "name"),
    # bidi override (Trojan Source): the line reads differently from what it is
    ("pi \u202eelif.exe\u202c ok", "pi elif.exe ok"),
    ("a\u2066b\u2069c\u200fd", "abcd"),
    # other controls are shown, not obeyed and not lost
    (
        "bell\x07 backspace\x08 cr\r del\x7f nul\x00",
        "bell\\x07 backspace\\x08 cr\\x0d del\\x7f nul\\x00",
    ),
    ("tab\there", "tab here"),
]


@pytest.mark.parametrize(("sent", "shown"), HOSTILE)
def test_hostile_sequences_are_removed_or_shown(sent: str, shown: str) -> None:
    assert clean(sent) == shown
    assert clean(clean(sent)) == clean(sent)


def test_newlines_only_where_text_may_have_several_lines() -> None:
    message = f"line one\nline {ESC}[1Atwo\n\u2028three"
    assert clean(message) == "line one\\x0aline two\\x0athree"
    assert clean(message, multiline=True) == "line one\nline two\nthree"


def test_long_names_are_cut_with_an_ellipsis() -> None:
    assert clean("x" * 300, max_length=64) == "x" * 63 + ELLIPSIS
    assert clean("short", max_length=64) == "short"
    assert clean(12345) == "12345"


def _print(text: str, *, markup: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, emoji=False, width=200)
    console.print(text, markup=markup, highlight=False, soft_wrap=True)
    return out.getvalue()


def test_rich_markup_from_a_peer_is_text_and_cannot_crash_the_cli() -> None:
    name = "[link=http://evil.example]kitchen[/link] [/bold] [red]x"
    # Unescaped, rich would make a link, and the stray closing tag raises MarkupError.
    with pytest.raises(Exception, match="closing tag"):
        _print(name, markup=True)
    assert _print(clean_markup(name), markup=True).rstrip("\n") == name


CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
INVISIBLE = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


@given(st.text(max_size=200))
def test_nothing_invisible_survives_any_input(text: str) -> None:
    for multiline in (False, True):
        out = clean(text, multiline=multiline)
        assert not CONTROL_BUT_NEWLINE.search(out) and not INVISIBLE.search(out)
        assert multiline or "\n" not in out
        assert clean(out, multiline=multiline) == out


@given(st.text(max_size=100))
def test_escaped_markup_prints_as_the_cleaned_text(text: str) -> None:
    shown = _print(clean_markup(text), markup=True)
    expected = clean(text).rstrip()
    if expected.endswith("\\"):
        expected += "\\"  # rich's escape() doubles a trailing backslash, and it prints so
    assert shown.rstrip() == expected
