"""Run one esphome command and read its answer: the core under runners and helpers.

:func:`invoke_esphome` is what every runner uses; :func:`validate_config`,
:func:`create_bundle` and :func:`list_bundle_files` are the helpers later parts of
meshd use (remote compile ships an ``esphome bundle``; the API validates configs).

``esphome bundle CFG -o OUT`` exists in esphome 2026.6.5 (``esphome/bundle.py``): it
writes a ``.esphomebundle.tar.gz`` with the YAML, its includes and secrets and a
``manifest.json``, which ``esphome compile BUNDLE`` extracts and builds.
``--list-only`` prints the files it would pack, one per line, indented two spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from meshd.toolchain.failure import FailureCollector
from meshd.toolchain.progress import Monotonic, ProgressParser, clean_line
from meshd.toolchain.tools import Toolchain

BUNDLE_SUFFIX = ".esphomebundle.tar.gz"

_LOG_LINE_RE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


class EsphomeFailed(Exception):
    """esphome exited non-zero; ``str(exc)`` is a headline plus the explaining lines."""

    def __init__(self, message: str, returncode: int, lines: list[str]) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.lines = lines


async def invoke_esphome(
    toolchain: Toolchain,
    args: list[str],
    *,
    log: Callable[[str], None],
    on_start: Callable[[int], None] | None,
    progress: Callable[[float], None] | None = None,
    parser: ProgressParser | None = None,
) -> list[str]:
    """Run ``esphome ARGS``; log every cleaned line; return them all.

    ``on_start`` gets esphome's process group (see :meth:`Toolchain.run`).

    Raises ``ToolMissing`` when the command cannot start and ``EsphomeFailed`` on a
    non-zero exit. Progress from ``parser`` is forwarded to ``progress``, never
    backwards, and completes at 1.0 on success.
    """
    report = Monotonic(progress) if progress is not None else None
    failure = FailureCollector()
    lines: list[str] = []

    def on_line(raw: str) -> None:
        line = clean_line(raw)
        lines.append(line)
        log(line)
        failure.feed(line)
        if parser is not None and report is not None:
            fraction = parser.feed(line)
            if fraction is not None:
                report(fraction)

    argv = toolchain.esphome_argv(*args)
    log("$ " + " ".join(argv))
    result = await toolchain.run(argv, on_line=on_line, on_start=on_start)
    if result.returncode != 0:
        headline = f"esphome {args[0]} failed (exit status {result.returncode})"
        raise EsphomeFailed(failure.summary(headline), result.returncode, lines)
    if report is not None:
        report(1.0)
    return lines


async def validate_config(
    toolchain: Toolchain,
    config: Path,
    *,
    log: Callable[[str], None],
    on_start: Callable[[int], None] | None,
    show_secrets: bool = False,
) -> str:
    """``esphome config CFG``: the validated configuration as YAML text.

    esphome prints the YAML on stdout and its log records on stderr; both arrive on
    one stream, so the YAML is every line that is not a log record.
    """
    args = ["config", str(config)]
    if show_secrets:
        args.append("--show-secrets")
    lines = await invoke_esphome(toolchain, args, log=log, on_start=on_start)
    yaml_lines = [line for line in lines if not _LOG_LINE_RE.match(line)]
    return "\n".join(yaml_lines).strip("\n") + "\n"


def default_bundle_path(config: Path) -> Path:
    """Where ``esphome bundle`` writes without ``-o``: next to the YAML."""
    return config.parent / f"{config.stem}{BUNDLE_SUFFIX}"


async def create_bundle(
    toolchain: Toolchain,
    config: Path,
    *,
    log: Callable[[str], None],
    on_start: Callable[[int], None] | None,
    output: Path | None = None,
) -> Path:
    """``esphome bundle CFG -o OUT``: pack the config and everything it includes."""
    target = output if output is not None else default_bundle_path(config)
    await invoke_esphome(
        toolchain, ["bundle", str(config), "-o", str(target)], log=log, on_start=on_start
    )
    if not target.is_file():
        raise EsphomeFailed(f"esphome bundle reported success but wrote no {target}", 0, [])
    return target


async def list_bundle_files(
    toolchain: Toolchain,
    config: Path,
    *,
    log: Callable[[str], None],
    on_start: Callable[[int], None] | None,
) -> list[str]:
    """``esphome bundle CFG --list-only``: the files a bundle would carry, relative paths."""
    lines = await invoke_esphome(
        toolchain, ["bundle", str(config), "--list-only"], log=log, on_start=on_start
    )
    return [line[2:] for line in lines if line.startswith("  ") and line.strip()]
