"""The ``meshd`` command line: client commands that talk to a daemon's local API.

* ``app``: the click group, shared options, exit codes, running against the daemon;
* ``jobs``: submit, list, show, logs, cancel, wait, status;
* ``fleet``: devices, update, install (one or many), artifacts;
* ``mesh``: peers, identity, trust, pairing;
* ``daemon``: ``serve`` (imports the daemon inside the command, nowhere else);
* ``ui``: ``meshd ui``, a login link to the daemon's status page;
* ``cache``: ``meshd cache stats|clear``, the compile cache;
* ``completion``: ``meshd completion SHELL``, click's shell completion script;
* ``render``: tables that fit the terminal, and live progress for humans.

Importing this package loads no daemon code: no engine, no SQLite, no aiohttp.web, no
mesh (pinned by tests/unit/test_layering.py).
"""

from meshd.cli import (  # noqa: F401 - importing registers the commands
    cache,
    completion,
    daemon,
    fleet,
    jobs,
    mesh,
    ui,
)
from meshd.cli.app import cli


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="meshd")


__all__ = ["cli", "main"]
