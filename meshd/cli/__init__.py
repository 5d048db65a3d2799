"""The ``meshd`` command line: client commands that talk to a daemon's local API."""

from meshd.cli.main import main

__all__ = ["main"]
