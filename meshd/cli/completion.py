"""``meshd completion bash|zsh|fish``: print click's completion script for a shell.

The script calls ``meshd`` back with ``_MESHD_COMPLETE=<shell>_complete``; click's own
entry point answers that (``meshd.cli.main`` names the program ``meshd``, which is
what makes the variable ``_MESHD_COMPLETE``). docs/OPERATIONS.md says where to put it.
"""

from __future__ import annotations

import click

from meshd.cli.app import cli

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_MESHD_COMPLETE"


@cli.command()  # no section: listed under "Other"
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script (eval "$(meshd completion bash)")."""
    from click.shell_completion import get_completion_class

    completer = get_completion_class(shell)
    if completer is None:  # click knows every shell of SHELLS; a future click may not
        raise click.UsageError(f"click has no completion for {shell}")
    click.echo(completer(cli, {}, "meshd", COMPLETE_VAR).source())
