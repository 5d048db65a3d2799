"""How meshd invokes the ESPHome CLI and esptool: argv prefixes plus environment.

The esphome command is configurable (``--esphome``) so a node can use an esphome
installed elsewhere, and tests can substitute a stand-in that speaks the same CLI
or wrap the real one (e.g. in ``unshare -n``). Every child inherits the daemon's
environment at the moment it starts, so PLATFORMIO_CORE_DIR, ESPHOME_DATA_DIR and
friends pass through untouched; ``env`` only adds or overrides.
"""

from __future__ import annotations

import enum
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshd.toolchain.process import DEFAULT_KILL_GRACE, ProcessResult, run_process

# Python children block-buffer stdout on a pipe; esphome prints PlatformIO's output
# through stdout, so without this the job log would arrive in 8 KiB lumps.
_STREAMING_ENV = {"PYTHONUNBUFFERED": "1"}


class ToolMissing(Exception):
    """The configured esphome/esptool command could not be started."""


@dataclass(frozen=True)
class Toolchain:
    """The commands meshd runs, as argv prefixes, and extra environment for them."""

    esphome: tuple[str, ...] = ("esphome",)
    esptool: tuple[str, ...] = ("esptool",)
    env: Mapping[str, str] = field(default_factory=dict)
    kill_grace: float = DEFAULT_KILL_GRACE
    # ESPHome only prints its "\rUploading: [==  ] 42%" bar to a TTY or when run as
    # the dashboard runs it (``--dashboard``); meshd is in the dashboard's position.
    dashboard_mode: bool = True
    unset: frozenset[str] = frozenset()
    """Variables of the daemon's environment the commands must not inherit: a provisioned
    venv's esphome must not see the daemon's ``PYTHONPATH`` (``hermetic_environ``)."""

    def __post_init__(self) -> None:
        if not self.esphome:
            raise ValueError("the esphome command must not be empty")
        if not self.esptool:
            raise ValueError("the esptool command must not be empty")

    @classmethod
    def from_command(
        cls, esphome: str | Sequence[str], env: Mapping[str, str] | None = None
    ) -> Toolchain:
        """Build from a ``--esphome`` setting: a single program or an argv prefix."""
        prefix = (esphome,) if isinstance(esphome, str) else tuple(esphome)
        return cls(esphome=prefix, env=dict(env or {}))

    def esphome_argv(self, *args: str) -> list[str]:
        """The full argv for ``esphome ARGS`` (global options first, as argparse wants)."""
        options = ["--dashboard"] if self.dashboard_mode else []
        return [*self.esphome, *options, *args]

    def esptool_argv(self, *args: str) -> list[str]:
        return [*self.esptool, *args]

    def environ(self) -> dict[str, str]:
        """The daemon's current environment, plus streaming defaults, plus ``env``."""
        merged = {k: v for k, v in os.environ.items() if k not in self.unset}
        for key, value in _STREAMING_ENV.items():
            merged.setdefault(key, value)
        merged.update(self.env)
        return merged

    async def run(
        self,
        argv: Sequence[str],
        *,
        on_line: Callable[[str], None],
        on_start: Callable[[int], None] | None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ProcessResult:
        """Run ``argv`` in its own process group; a missing program raises ``ToolMissing``.

        ``on_start`` receives the group id as soon as the process exists. A job passes
        its ``JobContext.on_process`` so the engine records the group and a restart
        after a crash of the daemon can kill it; ``None`` is for runs outside a job
        (the version probe), and must be said explicitly.
        """
        try:
            return await run_process(
                argv,
                on_line=on_line,
                cwd=cwd,
                env=self.environ(),
                kill_grace=self.kill_grace,
                on_start=on_start,
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as exc:
            raise ToolMissing(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from exc


class ToolSource(enum.StrEnum):
    """Where :func:`locate_tool` found a command (``meshd status`` shows it)."""

    CONFIGURED = "configured"  # --esphome / MESHD_ESPHOME / the TOML file
    BESIDE_PYTHON = "beside-python"  # installed with meshd, e.g. .venv/bin/esphome
    PATH = "path"
    MISSING = "missing"


@dataclass(frozen=True)
class ToolLookup:
    """The command to run, where it came from, and a warning when it was not found."""

    command: tuple[str, ...]
    source: ToolSource
    warning: str | None = None


def locate_tool(
    name: str,
    configured: Sequence[str] = (),
    *,
    interpreter: str | None = None,
    path: str | None = None,
) -> ToolLookup:
    """Which ``name`` (esphome, esptool) the daemon runs.

    An explicit command wins. Otherwise the one installed beside the daemon's own
    interpreter: ``pip install 'meshd[esphome]'`` puts ``.venv/bin/esphome`` there, and
    ``.venv/bin/meshd serve`` run without activating the venv has no ``.venv/bin`` on
    PATH (the README's first command). It is also the version meshd was installed
    with, which the mesh advertises. Then PATH. ``sys.executable`` is not resolved:
    a venv's ``python`` is a symlink to the base interpreter, whose directory is not
    the venv's.
    """
    if configured:
        return ToolLookup(tuple(configured), ToolSource.CONFIGURED)
    beside = Path(interpreter or sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return ToolLookup((str(beside),), ToolSource.BESIDE_PYTHON)
    found = shutil.which(name, path=path)
    if found is not None:
        return ToolLookup((found,), ToolSource.PATH)
    return ToolLookup(
        (name,),
        ToolSource.MISSING,
        f"{name} not found (not beside {beside.parent}/python, not on PATH): "
        f"install it with `pip install 'meshd[esphome]'` or set --{name} CMD"
        if name == "esphome"
        else f"{name} not found (not beside {beside.parent}/python, not on PATH)",
    )
