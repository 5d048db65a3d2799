"""The ``meshd`` command line: client commands that talk to a daemon's local API.

* ``app``: the click group, shared options, exit codes, running against the daemon;
* ``jobs``: submit, list, show, logs, cancel, wait, status;
* ``mesh``: peers, identity, trust, pairing;
* ``daemon``: ``serve`` (imports the daemon inside the command, nowhere else);
* ``ui``: ``meshd ui``, a login link to the daemon's status page;
* ``cache``: ``meshd cache stats|clear``, the compile cache;
* ``render``: tables and live progress for humans.

Importing this package loads no daemon code: no engine, no SQLite, no aiohttp.web, no
mesh (pinned by tests/unit/test_layering.py).
"""

from meshd.cli import cache, daemon, jobs, mesh, ui  # noqa: F401 - importing registers the commands
from meshd.cli.app import cli


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="meshd")


__all__ = ["cli", "main"]
