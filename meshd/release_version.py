"""What counts as an esphome version meshd may provision: strict, canonical, ASCII.

A requested version comes from a peer (a compile request) or a user (a fleet pin)
and becomes both a directory name (``toolchains/esphome-<version>``) and a pip
requirement (``esphome==<version>``). So it is checked against the shape ESPHome's
releases actually have on PyPI (``2026.6.5``, ``2026.7.0b1``, ``1.20.4``) and
nothing else: no separators, no whitespace, no specifier operators, no extras, no
local versions, no Unicode digits. Leading zeros are refused too: pip would normalise
``2026.06.5`` to ``2026.6.5``, and then ``esphome version`` would never answer the
string that was asked for.

A leaf (standard library only): the settings check a fleet pin with it, and the CLI
loads the settings.
"""

from __future__ import annotations

import re
from typing import Final

# YYYY.M.P (or the 1.x series' M.m.p), optionally a pre-release aN / bN / rcN.
# ``[0-9]`` and re.ASCII: ``\d`` would accept Arabic-Indic or full-width digits.
_NUMBER: Final = r"(?:0|[1-9][0-9]{0,3})"
_VERSION_RE: Final = re.compile(
    rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}(?:(?:a|b|rc){_NUMBER})?",
    re.ASCII,
)
# Longer than any real release string ("2026.12.31rc10" is 14); a cheap first gate.
MAX_VERSION_LENGTH: Final = 24


class ToolchainVersionError(ValueError):
    """The text is not an esphome release version meshd can provision."""


def check_version(text: object) -> str:
    """Return ``text`` if it is a canonical esphome release version; raise otherwise."""
    if not isinstance(text, str):
        raise ToolchainVersionError(f"an esphome version is a string, not {type(text).__name__}")
    if not text:
        raise ToolchainVersionError("the esphome version is empty")
    if len(text) > MAX_VERSION_LENGTH or not _VERSION_RE.fullmatch(text):
        raise ToolchainVersionError(
            f"{text[:40]!r} is not an esphome release version "
            "(expected YYYY.M.P, optionally with aN/bN/rcN, no leading zeros)"
        )
    return text


def is_version(text: object) -> bool:
    """Whether :func:`check_version` would accept ``text``."""
    try:
        check_version(text)
    except ToolchainVersionError:
        return False
    return True
