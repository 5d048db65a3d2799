"""``meshd --help`` in sections, and click's shell completion (``meshd completion``), run
as a user's shell runs them: the real ``meshd`` in a fresh process."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from meshd.cli.app import OTHER, SectionedGroup
from tests.daemon.conftest import base_env


def meshd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd", *args],
        env=base_env({"COLUMNS": "80", **env}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def sections(help_text: str) -> dict[str, list[str]]:
    """Heading → the command names listed under it."""
    found: dict[str, list[str]] = {}
    current = None
    for line in help_text.splitlines():
        if re.fullmatch(r"[A-Z]\w*:", line):
            current = line[:-1]
            found[current] = []
        elif current and (match := re.match(r"  (\S+)", line)):
            found[current].append(match.group(1))
        elif not line.strip():
            current = None
    return found


def test_help_lists_commands_by_what_a_user_does() -> None:
    result = meshd("--help")
    assert result.returncode == 0, result.stderr
    found = sections(result.stdout)
    assert list(found)[:1] == ["Options"]
    headings = [h for h in found if h != "Options"]
    assert headings[0] == "Jobs" and headings.index("Mesh") < headings.index("Daemon")
    assert {"install", "compile", "jobs", "show", "logs", "cancel", "wait"} <= set(found["Jobs"])
    assert {"peers", "identity", "trust", "trusted", "pair"} <= set(found["Mesh"])
    assert {"serve", "status", "ui"} <= set(found["Daemon"])
    assert "completion" in found[OTHER]
    listed = [name for h in headings for name in found[h]]
    assert len(listed) == len(set(listed)), "every command once"
    assert all(len(line) <= 80 for line in result.stdout.splitlines())


def test_a_module_only_names_its_section() -> None:
    """What fleet.py and cache.py do: pass a section; unknown or none go under Other."""

    @click.group(cls=SectionedGroup)
    def group() -> None:
        """A group."""

    @group.command(section="fleet")
    def devices() -> None:
        """The devices."""

    @group.command(section="Jobs")
    def install() -> None:
        """Install."""

    @group.command(section="cache-ish")
    def cache() -> None:
        """The cache."""

    @group.command()
    def misc() -> None:
        """Other things."""

    @group.group(section="mesh")
    def pair() -> None:
        """Pairing."""

    found = sections(CliRunner().invoke(group, ["--help"]).output)
    assert found == {
        "Options": ["--help"],
        "Jobs": ["install"],
        "Fleet": ["devices"],
        "Mesh": ["pair"],
        OTHER: ["cache", "misc"],
    }


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_clicks_script(shell: str) -> None:
    result = meshd("completion", shell)
    assert result.returncode == 0, result.stderr
    assert "_MESHD_COMPLETE" in result.stdout
    assert f"{shell}_complete" in result.stdout


def test_completion_of_a_command_name_and_a_bad_shell() -> None:
    result = meshd(_MESHD_COMPLETE="bash_complete", COMP_WORDS="meshd ins", COMP_CWORD="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain,install"]
    result = meshd("completion", "tcsh")
    assert result.returncode == 2 and "tcsh" in result.stderr
