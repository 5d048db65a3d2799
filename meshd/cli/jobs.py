"""Job commands: submit (install, compile, upload, clean, reset, rename), list, show,
logs, cancel, wait, and ``status`` (this node and its two lanes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import click
from rich.text import Text

from meshd.api.client import Client
from meshd.cli.app import (
    EXIT_JOB_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    cli,
    client_options,
    console,
    err_console,
    json_option,
    print_json,
    run_client,
)
from meshd.cli.render import (
    TERMINAL,
    Follower,
    describe,
    job_table,
    jobs_table,
    status_tables,
    warning_lines,
)
from meshd.cli.sanitize import clean as clean_text

# `meshd jobs` without --all: the newest this many (the API's limit; 0 means all).
DEFAULT_JOB_LIST = 50


def _exit_for(jobs: list[dict[str, Any]]) -> int:
    return EXIT_OK if all(job["status"] == "completed" for job in jobs) else EXIT_JOB_FAILED


def _config_arg(path: Path) -> str:
    # The daemon does not share our working directory: send an absolute path.
    return str(path.expanduser().absolute())


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
            print_json({**_ids(final), "jobs": final})
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
        print_json(_ids(created))
        return
    for job in created:
        console.print(
            Text(f"queued {describe(job)}: ") + Text(clean_text(job["id"]), style="bold"),
            highlight=False,
        )


def _summarise(final: list[dict[str, Any]]) -> None:
    for job in final:
        style = "green" if job["status"] == "completed" else "red"
        console.print(
            Text(clean_text(job["status"]), style=style)
            + Text(f" {describe(job)} ({clean_text(job['id'])})"),
            highlight=False,
        )


_detach = click.option("--detach", is_flag=True, help="Queue and return at once.")
_local = click.option("--local", is_flag=True, help="Compile on this node, never on a peer.")
_config = click.argument("configuration", type=click.Path(path_type=Path, dir_okay=False))
_esphome_version = click.option(
    "--esphome-version",
    metavar="VERSION",
    help="Build with exactly this esphome (provisioned on the builder if need be).",
)


def submit_install(
    configuration: Path,
    device: str,
    *,
    local: bool,
    detach: bool,
    as_json: bool,
    opts: Any,
    esphome_version: str | None = None,
) -> NoReturn:
    """One install chain to ``device``, followed like any job (``meshd install``, in
    meshd/cli/fleet.py, which also takes many configurations)."""
    body: dict[str, Any] = {
        "type": "install",
        "configuration": _config_arg(configuration),
        "device": device,
        "local": local,
    }
    if esphome_version is not None:
        body["esphome_version"] = esphome_version
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command(name="compile", section="jobs")
@click.argument("configuration", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--all",
    "all_dir",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Compile every configuration in this directory (pre-build a fleet).",
)
@_local
@_esphome_version
@_detach
@json_option
@client_options
def compile_(
    configuration: Path | None,
    all_dir: Path | None,
    local: bool,
    esphome_version: str | None,
    detach: bool,
    as_json: bool,
    **opts: Any,
) -> None:
    """Compile CONFIGURATION (or, with --all DIR, every configuration in DIR)."""
    if (configuration is None) == (all_dir is None):
        raise click.UsageError("give a CONFIGURATION or --all DIR")
    if configuration is not None:
        body: dict[str, Any] = {
            "type": "compile",
            "configuration": _config_arg(configuration),
            "local": local,
        }
        if esphome_version is not None:
            body["esphome_version"] = esphome_version
        _submit(opts, body, detach=detach, as_json=as_json)
    assert all_dir is not None
    # As esphome's dashboard lists a directory: *.yaml/*.yml, not secrets, not hidden.
    paths = sorted(
        p
        for p in all_dir.iterdir()
        if p.suffix in (".yaml", ".yml")
        and p.name not in ("secrets.yaml", "secrets.yml")
        and not p.name.startswith(".")
        and p.is_file()
    )
    if not paths:
        raise click.UsageError(f"no configurations in {all_dir}")

    async def run(client: Client) -> int:
        created = [
            job
            for path in paths
            for job in await client.create(
                {"type": "compile", "configuration": _config_arg(path), "local": local}
                | ({"esphome_version": esphome_version} if esphome_version else {})
            )
        ]
        if detach:
            _show_created_many(created, as_json)
            return EXIT_OK
        follower = Follower(client, None if as_json else console, show_output=False)
        final = await follower.follow([job["id"] for job in created])
        if as_json:
            print_json({"jobs": final})
        else:
            _summarise(final)
        return _exit_for(final)

    run_client(opts, run, detach_note=lambda: "the compiles keep running in meshd")


def _show_created_many(created: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print_json({"jobs": created})
        return
    for job in created:
        console.print(f"queued {describe(job)}: [bold]{job['id']}[/bold]", highlight=False)


@cli.command(section="jobs")
@_config
@click.option(
    "--device",
    required=True,
    help="OTA address/hostname or serial port; OTA resolves it like esphome run.",
)
@click.option("--build", metavar="ID", help="Flash this kept build (see meshd artifacts).")
@_detach
@json_option
@client_options
def upload(
    configuration: Path, device: str, build: str | None, detach: bool, as_json: bool, **opts: Any
) -> None:
    """Upload the last build (or a kept --build) of CONFIGURATION to --device."""
    body = {"type": "upload", "configuration": _config_arg(configuration), "device": device}
    if build is not None:
        body["build"] = build
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command(section="jobs")
@_config
@_detach
@json_option
@client_options
def clean(configuration: Path, detach: bool, as_json: bool, **opts: Any) -> None:
    """Delete CONFIGURATION's build files (cancels its active build jobs)."""
    body = {"type": "clean", "configuration": _config_arg(configuration)}
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command(section="jobs")
@click.argument(
    "config_dir", required=False, default=".", type=click.Path(path_type=Path, file_okay=True)
)
@_detach
@json_option
@client_options
def reset(config_dir: Path, detach: bool, as_json: bool, **opts: Any) -> None:
    """Reset the build environment of CONFIG_DIR (esphome clean-all; cancels all jobs)."""
    body = {"type": "reset_build_env", "configuration": _config_arg(config_dir)}
    _submit(opts, body, detach=detach, as_json=as_json)


@cli.command(section="jobs")
@_config
@click.argument("new_name")
@_detach
@json_option
@client_options
def rename(configuration: Path, new_name: str, detach: bool, as_json: bool, **opts: Any) -> None:
    """Rename the device of CONFIGURATION to NEW_NAME (rewrite, compile, upload over OTA)."""
    body = {"type": "rename", "configuration": _config_arg(configuration), "new_name": new_name}
    _submit(opts, body, detach=detach, as_json=as_json)


# -- inspecting and controlling jobs -----------------------------------------------------


@cli.command(section="jobs")
@click.option(
    "--all", "show_all", is_flag=True, help=f"Every job, not only the last {DEFAULT_JOB_LIST}."
)
@click.option("--active", is_flag=True, help="Only queued and running jobs.")
@json_option
@client_options
def jobs(show_all: bool, active: bool, as_json: bool, **opts: Any) -> None:
    """List jobs, oldest first."""

    async def run(client: Client) -> int:
        limit = 0 if show_all else DEFAULT_JOB_LIST
        found = await client.jobs(status="active" if active else None, limit=limit)
        if as_json:
            print_json({"jobs": found})
        elif not found:
            console.print("no jobs")
        else:
            console.print(jobs_table(found, console.width))
        return EXIT_OK

    run_client(opts, run)


@cli.command(section="jobs")
@click.argument("job_id")
@json_option
@client_options
def show(job_id: str, as_json: bool, **opts: Any) -> None:
    """Show one job."""

    async def run(client: Client) -> int:
        job = await client.job(job_id)
        if as_json:
            print_json(job)
        else:
            console.print(job_table(job))
        return EXIT_OK

    run_client(opts, run)


@cli.command(section="jobs")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
@client_options
def logs(job_id: str, follow: bool, **opts: Any) -> None:
    """Print a job's log (tool output and meshd's notes)."""

    async def run(client: Client) -> int:
        async for line in client.log_lines(job_id, follow=follow):
            click.echo(clean_text(line))  # a receiver's tool output: no escapes reach the terminal
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


@cli.command(section="jobs")
@click.argument("job_id")
@json_option
@client_options
def cancel(job_id: str, as_json: bool, **opts: Any) -> None:
    """Cancel a job (a running one is stopped; its dependents are cancelled too)."""

    async def run(client: Client) -> int:
        before = await client.job(job_id)
        job = await client.cancel(job_id)
        if as_json:
            print_json(job)
        elif before["status"] in TERMINAL:
            console.print(
                Text(f"{clean_text(job_id)} had already ended: {clean_text(job['status'])}")
            )
        else:
            console.print(
                Text(f"cancelled {describe(job)} ({clean_text(job_id)})"), highlight=False
            )
        return EXIT_OK

    run_client(opts, run)


@cli.command(section="jobs")
@click.argument("job_ids", nargs=-1, required=True)
@json_option
@client_options
def wait(job_ids: tuple[str, ...], as_json: bool, **opts: Any) -> None:
    """Wait until every JOB_ID has ended; exit 0 only if all completed."""

    async def run(client: Client) -> int:
        follower = Follower(client, None if as_json else console, show_output=False)
        final = await follower.follow(list(job_ids))
        if as_json:
            print_json({"jobs": final})
        else:
            _summarise(final)
        return _exit_for(final)

    run_client(opts, run, detach_note=lambda: "the jobs keep running in meshd")


@cli.command(section="daemon")
@json_option
@client_options
def status(as_json: bool, **opts: Any) -> None:
    """This node, its two lanes and its peers."""

    async def run(client: Client) -> int:
        body = await client.status()
        if as_json:
            print_json(body)
        else:
            # Warnings first, on stderr: what the operator must fix is not lost in a table.
            for line in warning_lines(body["node"]):
                err_console.print(line, highlight=False)
            for table in status_tables(body, console.width):
                console.print(table)
                console.print()
        return EXIT_OK

    run_client(opts, run)
