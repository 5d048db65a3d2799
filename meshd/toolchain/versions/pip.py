"""The pip command lines that provision one toolchain: options as settings, passed explicitly.

An air-gapped LAN provisions from a local wheelhouse (``--toolchain-find-links DIR``,
repeatable); a LAN with a mirror names it (``--toolchain-index-url URL``). With
find-links and no index URL, pip gets ``--no-index`` so it never reaches for PyPI
behind the operator's back. With neither, pip's own defaults and configuration apply
(pip.conf, ``PIP_*``), as for any pip run on that machine.

Every value is checked before it reaches an argv: a value beginning with ``-`` would
be read by pip as another option, and whitespace or control characters have no place
in a URL or a path meshd hands to pip.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from meshd.release_version import check_version

_URL_SCHEMES: Final = frozenset({"http", "https", "file"})
# `pip --python` (run the host's pip against another environment) arrived in pip 22.3.
_PIP_PYTHON_OPTION: Final = (22, 3)

# Never prompt (a daemon has no terminal), never nag about pip's own version, and no
# progress bars: each redraw would be a job-log line.
_QUIET_FLAGS: Final = ("--disable-pip-version-check", "--no-input", "--progress-bar", "off")


class PipOptionError(ValueError):
    """A pip setting (index URL, find-links entry) is unusable; the message names it."""


def _check_text(value: str, what: str) -> str:
    if not value or value != value.strip() or value.startswith("-"):
        raise PipOptionError(f"{what} {value!r} must be non-empty and not start with '-'")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise PipOptionError(f"{what} {value!r} contains whitespace or control characters")
    return value


def _check_url(value: str, what: str) -> str:
    _check_text(value, what)
    parts = urlsplit(value)
    if parts.scheme not in _URL_SCHEMES or not (parts.netloc or parts.scheme == "file"):
        raise PipOptionError(f"{what} {value!r} is not an http(s):// or file:// URL")
    return value


def _check_find_links(value: str) -> str:
    """A wheelhouse directory (absolute path) or a URL of a page of links."""
    _check_text(value, "find-links entry")
    if "://" in value:
        return _check_url(value, "find-links entry")
    if not Path(value).is_absolute():
        raise PipOptionError(f"find-links entry {value!r} must be an absolute path or a URL")
    return value


@dataclass(frozen=True)
class PipOptions:
    """Where pip finds esphome and its dependencies (settings ``toolchain_*``)."""

    index_url: str | None = None
    find_links: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.index_url is not None:
            _check_url(self.index_url, "index URL")
        object.__setattr__(self, "find_links", tuple(self.find_links))
        for entry in self.find_links:
            _check_find_links(entry)

    @property
    def no_index(self) -> bool:
        """Only a wheelhouse was given: pip must not fall back to an index."""
        return self.index_url is None and bool(self.find_links)

    def source_args(self) -> list[str]:
        """``--index-url``/``--no-index`` and every ``--find-links``, in that order."""
        args: list[str] = []
        if self.index_url is not None:
            args += ["--index-url", self.index_url]
        elif self.no_index:
            args.append("--no-index")
        for entry in self.find_links:
            args += ["--find-links", entry]
        return args

    def describe(self) -> str:
        """One line for the job log: where this provisioning installs from."""
        if self.index_url is None and not self.find_links:
            return "pip's configured index"
        where = []
        if self.index_url is not None:
            where.append(f"index {self.index_url}")
        where += [f"wheelhouse {entry}" for entry in self.find_links]
        if self.no_index:
            where.append("no index")
        return ", ".join(where)


def host_pip_usable() -> bool:
    """Whether this interpreter's own pip can install into another venv (``--python``).

    That saves ``ensurepip`` (~3 s) per toolchain and uses one, current pip for all of
    them; a daemon installed without pip falls back to the venv's bundled pip.
    """
    try:
        version = metadata.version("pip")
    except metadata.PackageNotFoundError:
        return False
    numbers = []
    for part in version.split(".")[:2]:
        if not part.isdigit():
            return False
        numbers.append(int(part))
    return tuple(numbers) >= _PIP_PYTHON_OPTION


def install_argv(
    venv_python: Path,
    version: str,
    options: PipOptions,
    *,
    host_python: str | None = None,
) -> list[str]:
    """``pip install esphome==VERSION`` into the venv of ``venv_python``.

    With ``host_python`` the host's pip runs with ``--python venv_python``; without,
    the venv's own pip runs. ``version`` is re-checked: it is about to become a
    requirement string.
    """
    requirement = f"esphome=={check_version(version)}"
    if host_python is not None:
        prefix: Sequence[str] = (host_python, "-m", "pip", "--python", str(venv_python))
    else:
        prefix = (str(venv_python), "-m", "pip")
    return [*prefix, "install", *_QUIET_FLAGS, *options.source_args(), requirement]


def default_python() -> str:
    """The interpreter new venvs are made from: the daemon's own."""
    return sys.executable
