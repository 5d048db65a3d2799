"""The ``meshd`` command: ``serve`` runs the daemon; every other command is an API client.

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
from meshd.cli.render import (
    TERMINAL,
    Follower,
    describe,
    job_table,
    jobs_table,
    peers_table,
    status_tables,
)
from meshd.config import ConfigError, VersionPolicy, load_settings

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class Exit(Exception):
    """Leave with ``code`` after printing ``message`` (if any) to stderr."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(message or "")
        self.code = code
        self.message = message


def _fail(code: int, message: str) -> NoReturn:
    raise Exit(code, message)


# -- plumbing: endpoint options, running a coroutine with error → exit-code mapping -------


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
            help="Daemon URL, e.g. http://127.0.0.1:6055 (default: from api.json).",
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


def _endpoint(data_dir: Path | None, api_url: str | None, token: str | None) -> Endpoint:
    if api_url and not token and data_dir is None:
        # Fall back to api.json for the token only if it exists; else say what is missing.
        try:
            return find_endpoint(url=api_url)
        except DaemonUnreachable:
            _fail(EXIT_USAGE, "--api needs --token (or a readable api.json via --data-dir)")
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
            _error(exc.message)
        code = exc.code
    except DaemonUnreachable as exc:
        _error(str(exc))
        code = EXIT_UNREACHABLE
    except ApiRequestError as exc:
        _error(exc.message)
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


def _error(message: str) -> None:
    err_console.print(Text("error: ", style="red") + Text(message), highlight=False)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _exit_for(jobs: list[dict[str, Any]]) -> int:
    return EXIT_OK if all(job["status"] == "completed" for job in jobs) else EXIT_JOB_FAILED


def _config_arg(path: Path) -> str:
    # The daemon does not share our working directory: send an absolute path.
    return str(path.expanduser().absolute())


# -- the group and `serve` ---------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="meshd")
def cli() -> None:
    """meshd: a peer-to-peer build mesh for ESPHome firmware."""


@cli.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where jobs, logs and keys live [$MESHD_DATA_DIR, $STATE_DIRECTORY, "
    "~/.local/share/meshd].",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML settings file [$MESHD_CONFIG, else <data-dir>/meshd.toml].",
)
@click.option("--api", metavar="HOST:PORT", help="Control API address [127.0.0.1:6055].")
@click.option("--peer-listen", metavar="HOST:PORT", help="Peer link address [0.0.0.0:6056].")
@click.option(
    "--mdns-interface",
    "mdns_interfaces",
    multiple=True,
    metavar="IP",
    help="Announce/browse mDNS only on this interface address (repeatable).",
)
@click.option("--mdns/--no-mdns", default=None, help="Find peers with mDNS [on].")
@click.option("--name", help="This node's name [hostname].")
@click.option("--esphome", metavar="CMD", help="The esphome command (shell-split) [esphome].")
@click.option("--upload-slots", type=int, metavar="N", help="Concurrent uploads [4].")
@click.option("--receiver/--no-receiver", default=None, help="Accept compiles from peers.")
@click.option("--offload/--no-offload", default=None, help="Send compiles to peers.")
@click.option(
    "--peer", "peers", multiple=True, metavar="HOST:PORT", help="A static peer (repeatable)."
)
@click.option(
    "--version-policy",
    type=click.Choice([p.value for p in VersionPolicy]),
    help="Which receivers' esphome versions are compatible [release].",
)
@click.option(
    "--include-local/--no-include-local",
    default=None,
    help="Use the local compile lane while receivers are busy.",
)
@click.option("--heartbeat", type=float, metavar="SECONDS", help="Peer heartbeat interval.")
@click.option(
    "--metrics-listen", metavar="HOST:PORT", help="Serve /metrics here without a token [off]."
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(config_file: Path | None, verbose: bool, **flags: Any) -> None:
    """Run the meshd daemon in the foreground (systemd: Type=notify)."""
    from meshd.daemon import serve as run_daemon

    try:
        settings = load_settings(flags, config_file=config_file)
    except ConfigError as exc:
        _error(str(exc))
        sys.exit(EXIT_USAGE)
    sys.exit(run_daemon(settings, verbose=verbose))


# -- job submission ----------------------------------------------------------------------


def _submit(
    opts: dict[str, Any],
    body: dict[str, Any],
    *,
    detach: bool,
    as_json: bool,
    output: bool = True,
) -> NoReturn:
    """Submit a job request; print ids (--detach) or follow it to the end."""
    body = {**body, "cwd": str(Path.cwd())}
    followers: list[Follower] = []

    async def run(client: Client) -> int:
        if detach:
            created = await client.create(body)
            _show_created(created, as_json)
            return EXIT_OK
        follower = Follower(client, None if as_json else console, show_output=output)
        followers.append(follower)
        final = await follower.submit_and_follow(body)
        if as_json:
            _print_json({**_ids(final), "jobs": final})
        else:
            _summarise(final)
        return _exit_for(final)

    def note() -> str | None:
        ids = [job_id for follower in followers for job_id in follower.jobs]
        if not ids:
            return None
        return "job(s) " + ", ".join(ids) + " keep running in meshd"

    run_client(opts, run, detach_note=note)


def _ids(jobs: list[dict[str, Any]]) -> dict[str, str]:
    """``{"compile": ID, "upload": ID}``: one key per job type."""
    return {job["type"]: job["id"] for job in jobs}


def _show_created(created: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _print_json(_ids(created))
        return
    for job in created:
        console.print(f"queued {describe(job)}: [bold]{job['id']}[/bold]", highlight=False)


def _summarise(final: list[dict[str, Any]]) -> None:
    for job in final:
        style = "green" if job["status"] == "completed" else "red"
        console.print(
            f"[{style}]{job['status']}[/{style}] {describe(job)} ({job['id']})", highlight=False
        )


_detach = click.option("--detach", is_flag=True, help="Queue and return at once.")
_json = click.option("--json", "as_json", is_flag=True, help="Print JSON (see docs/API.md).")
_local = click.option("--local", is_flag=True, help="Compile on this node, never on a peer.")
_config = click.argument("configuration", type=click.Path(path_type=Path, dir_okay=False))


@cli.command()
@_config
@click.option("--device", required=True, help="OTA address/hostname or serial port.")
@_local
@_detach
@_json
@client_options
def install(
    configuration: Path, device: str, local: bool, detach: bool, as_json: bool, **opts: Any
) -> None:
    """Compile CONFIGURATION, then upload it to --device (a chain)."""
    body = {
        "type": "install",
        "configuration": _config_arg(configuration),
        "device": device,
        "local": local,
    }
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command(name="compile")
@_config
@_local
@_detach
@_json
@client_options
def compile_(configuration: Path, local: bool, detach: bool, as_json: bool, **opts: Any) -> None:
    """Compile CONFIGURATION."""
    body = {"type": "compile", "configuration": _config_arg(configuration), "local": local}
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command()
@_config
@click.option("--device", required=True, help="OTA address/hostname or serial port.")
@_detach
@_json
@client_options
def upload(configuration: Path, device: str, detach: bool, as_json: bool, **opts: Any) -> None:
    """Upload the last build of CONFIGURATION to --device."""
    body = {"type": "upload", "configuration": _config_arg(configuration), "device": device}
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command()
@_config
@_detach
@_json
@client_options
def clean(configuration: Path, detach: bool, as_json: bool, **opts: Any) -> None:
    """Delete CONFIGURATION's build files (cancels its active build jobs)."""
    body = {"type": "clean", "configuration": _config_arg(configuration)}
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command()
@click.argument(
    "config_dir", required=False, default=".", type=click.Path(path_type=Path, file_okay=True)
)
@_detach
@_json
@client_options
def reset(config_dir: Path, detach: bool, as_json: bool, **opts: Any) -> None:
    """Reset the build environment of CONFIG_DIR (esphome clean-all; cancels all jobs)."""
    body = {"type": "reset_build_env", "configuration": _config_arg(config_dir)}
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command()
@_config
@click.argument("new_name")
@_detach
@_json
@client_options
def rename(configuration: Path, new_name: str, detach: bool, as_json: bool, **opts: Any) -> None:
    """Rename the device of CONFIGURATION to NEW_NAME (rewrite, compile, upload over OTA)."""
    body = {"type": "rename", "configuration": _config_arg(configuration), "new_name": new_name}
    _submit(opts, body, detach=detach, as_json=as_json)


# -- inspecting and controlling jobs -----------------------------------------------------


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Every job, not only the last 50.")
@click.option("--active", is_flag=True, help="Only queued and running jobs.")
@_json
@client_options
def jobs(show_all: bool, active: bool, as_json: bool, **opts: Any) -> None:
    """List jobs, oldest first."""

    async def run(client: Client) -> int:
        found = await client.jobs(status="active" if active else None, limit=0 if show_all else 50)
        if as_json:
            _print_json({"jobs": found})
        elif not found:
            console.print("no jobs")
        else:
            console.print(jobs_table(found))
        return EXIT_OK

    run_client(opts, run)


@cli.command()
@click.argument("job_id")
@_json
@client_options
def show(job_id: str, as_json: bool, **opts: Any) -> None:
    """Show one job."""

    async def run(client: Client) -> int:
        job = await client.job(job_id)
        if as_json:
            _print_json(job)
        else:
            console.print(job_table(job))
        return EXIT_OK

    run_client(opts, run)


@cli.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@client_options
def logs(job_id: str, follow: bool, **opts: Any) -> None:
    """Print a job's log (tool output and meshd's notes)."""

    async def run(client: Client) -> int:
        async for line in client.log_lines(job_id, follow=follow):
            click.echo(line)
        if not follow:
            return EXIT_OK
        job = await client.job(job_id)
        if job["status"] not in TERMINAL:
            err_console.print(
                f"the log stream ended while {job_id} is {job['status']} (meshd is shutting down)"
            )
            return EXIT_UNREACHABLE
        return EXIT_OK if job["status"] == "completed" else EXIT_JOB_FAILED

    run_client(opts, run, detach_note=lambda: f"job {job_id} keeps running in meshd")


@cli.command()
@click.argument("job_id")
@_json
@client_options
def cancel(job_id: str, as_json: bool, **opts: Any) -> None:
    """Cancel a job (a running one is stopped; its dependents are cancelled too)."""

    async def run(client: Client) -> int:
        before = await client.job(job_id)
        job = await client.cancel(job_id)
        if as_json:
            _print_json(job)
        elif before["status"] in TERMINAL:
            console.print(f"{job_id} had already ended: {job['status']}")
        else:
            console.print(f"cancelled {describe(job)} ({job_id})", highlight=False)
        return EXIT_OK

    run_client(opts, run)


@cli.command()
@click.argument("job_ids", nargs=-1, required=True)
@_json
@client_options
def wait(job_ids: tuple[str, ...], as_json: bool, **opts: Any) -> None:
    """Wait until every JOB_ID has ended; exit 0 only if all completed."""

    async def run(client: Client) -> int:
        follower = Follower(client, None if as_json else console, show_output=False)
        final = await follower.follow(list(job_ids))
        if as_json:
            _print_json({"jobs": final})
        else:
            _summarise(final)
        return _exit_for(final)

    run_client(opts, run, detach_note=lambda: "the jobs keep running in meshd")


@cli.command()
@_json
@client_options
def status(as_json: bool, **opts: Any) -> None:
    """This node, its two lanes and its peers."""

    async def run(client: Client) -> int:
        body = await client.status()
        if as_json:
            _print_json(body)
        else:
            for warning in body["node"].pop("warnings", None) or []:
                err_console.print(Text("warning: ", style="bold yellow") + Text(str(warning)))
            for table in status_tables(body):
                console.print(table)
                console.print()
        return EXIT_OK

    run_client(opts, run)


@cli.command()
@_json
@client_options
def peers(as_json: bool, **opts: Any) -> None:
    """The peers this node knows."""

    async def run(client: Client) -> int:
        found = await client.peers()
        if as_json:
            _print_json({"peers": found})
        elif not found:
            console.print("no peers")
        else:
            console.print(peers_table(found))
        return EXIT_OK

    run_client(opts, run)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="meshd")


# The mesh commands register themselves on ``cli``; imported last because they use
# the plumbing above.
from meshd.cli import mesh as _mesh_commands  # noqa: E402, F401 - importing registers the commands
from meshd.cli import ui as _ui_command  # noqa: E402, F401 - importing registers `meshd ui`
