"""The ``meshd`` click group and what every client command shares: options, exit codes,
running a coroutine against the daemon with errors mapped to exit codes, JSON output.

Exit codes (documented in docs/API.md and relied on by scripts):

* 0: success (for commands that wait: every job completed);
* 1: a job failed or was cancelled;
* 2: bad usage or input (click's usage errors, and every 4xx the daemon answers:
  missing file, bad YAML, unknown job id, wrong token);
* 3: the daemon is unreachable (no ``api.json``, nothing listening, connection lost);
* 130: Ctrl-C while following: the CLI detached, the jobs keep running.

Client commands find the daemon through ``--api URL --token T``, else
``--data-dir``/``$MESHD_DATA_DIR``/... → ``api.json``. ``--json`` output is the API's own
JSON (job objects as in docs/API.md), so it is stable and documented in one place.

This module imports only the API client, ``meshd.config``, click and rich: the
command modules (``jobs``, ``mesh``, ``daemon``) import it, never the other way round.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.text import Text

from meshd import __version__
from meshd.api.client import ApiRequestError, Client, DaemonUnreachable, Endpoint, find_endpoint
from meshd.config import DEFAULT_API

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshd")
def cli() -> None:
    """meshd: a peer-to-peer build mesh for ESPHome firmware."""


class Exit(Exception):
    """Leave with ``code`` after printing ``message`` (if any) to stderr."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or "")
        self.code = code
        self.message = message


def fail(code: int, message: str) -> NoReturn:
    raise Exit(code, message)


# -- options shared by client commands ----------------------------------------------------


def client_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--data-dir``, ``--api URL`` and ``--token`` on every client command."""
    options = [
        click.option(
            "--token", envvar="MESHD_API_TOKEN", help="API token (with --api).", metavar="T"
        ),
        click.option(
            "--api",
            "api_url",
            envvar="MESHD_API_URL",
            metavar="URL",
            help=f"Daemon URL, e.g. http://{DEFAULT_API} (default: from api.json).",
        ),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path, file_okay=False),
            help="The daemon's data directory (default: $MESHD_DATA_DIR, ...).",
        ),
    ]
    for option in options:
        func = option(func)
    return func


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/API.md).")


# -- running a command against the daemon -------------------------------------------------


def _endpoint(data_dir: Path | None, api_url: str | None, token: str | None) -> Endpoint:
    if api_url and not token and data_dir is None:
        # Fall back to api.json for the token only if it exists; else say what is missing.
        try:
            return find_endpoint(url=api_url)
        except DaemonUnreachable:
            fail(EXIT_USAGE, "--api needs --token (or a readable api.json via --data-dir)")
    return find_endpoint(data_dir=data_dir, url=api_url, token=token)


def run_client(
    opts: dict[str, Any],
    body: Callable[[Client], Coroutine[Any, Any, int]],
    *,
    detach_note: Callable[[], str | None] = lambda: None,
) -> NoReturn:
    """Run ``body`` against the daemon and exit with its code, mapping errors to codes."""
    try:
        endpoint = _endpoint(opts.get("data_dir"), opts.get("api_url"), opts.get("token"))

        async def main() -> int:
            async with Client(endpoint) as client:
                return await body(client)

        code = asyncio.run(main())
    except Exit as exc:
        if exc.message:
            error(exc.message)
        code = exc.code
    except DaemonUnreachable as exc:
        error(str(exc))
        code = EXIT_UNREACHABLE
    except ApiRequestError as exc:
        error(exc.message)
        detail = exc.body.get("detail")
        if detail and detail != exc.message:
            err_console.print(str(detail), highlight=False, markup=False)
        code = EXIT_USAGE if exc.status < 500 else EXIT_UNREACHABLE
    except KeyboardInterrupt:
        note = detach_note()
        err_console.print(
            "\n[yellow]detached[/yellow]: "
            + (note or "the job(s) keep running in meshd")
            + " (`meshd cancel ID` cancels it)",
            highlight=False,
        )
        code = EXIT_INTERRUPTED
    sys.exit(code)


# -- output --------------------------------------------------------------------------------


def error(message: str) -> None:
    err_console.print(Text("error: ", style="red") + Text(message), highlight=False)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
