"""``meshd serve``: the one command that runs the daemon rather than talking to one.

The daemon's modules (engine, SQLite, aiohttp.web, the mesh) are imported inside the
command, so every other command starts without them (tests/unit/test_layering.py).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from meshd.cli.app import EXIT_USAGE, cli, error
from meshd.config import (
    DEFAULT_API,
    DEFAULT_HEARTBEAT,
    DEFAULT_PEER_LISTEN,
    DEFAULT_UPLOAD_SLOTS,
    DEFAULT_VERIFY_TIMEOUT,
    DEFAULT_VERSION_POLICY,
    ConfigError,
    VersionPolicy,
    load_settings,
)


@cli.command(section="daemon")
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
@click.option("--api", metavar="HOST:PORT", help=f"Control API address [{DEFAULT_API}].")
@click.option(
    "--peer-listen", metavar="HOST:PORT", help=f"Peer link address [{DEFAULT_PEER_LISTEN}]."
)
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
@click.option(
    "--upload-slots", type=int, metavar="N", help=f"Concurrent uploads [{DEFAULT_UPLOAD_SLOTS}]."
)
@click.option("--receiver/--no-receiver", default=None, help="Accept compiles from peers.")
@click.option("--offload/--no-offload", default=None, help="Send compiles to peers.")
@click.option(
    "--peer", "peers", multiple=True, metavar="HOST:PORT", help="A static peer (repeatable)."
)
@click.option(
    "--version-policy",
    type=click.Choice([p.value for p in VersionPolicy]),
    help=f"Which receivers' esphome versions are compatible [{DEFAULT_VERSION_POLICY}].",
)
@click.option(
    "--include-local/--no-include-local",
    default=None,
    help="Use the local compile lane while receivers are busy.",
)
@click.option(
    "--heartbeat",
    type=float,
    metavar="SECONDS",
    help=f"Peer heartbeat interval [{DEFAULT_HEARTBEAT:g}].",
)
@click.option(
    "--compile-cache/--no-compile-cache",
    default=None,
    help="Put ccache under every compile (<data-dir>/ccache) [on].",
)
@click.option(
    "--compile-cache-size",
    metavar="SIZE",
    help="Budget of each compile cache directory, e.g. 500M, 5G [5G].",
)
@click.option(
    "--unsafe-no-sandbox",
    "unsafe_no_sandbox",
    is_flag=True,
    default=None,
    help="Run peers' builds UNSANDBOXED as this user (they can read its keys) [off].",
)
@click.option(
    "--sandbox-network/--no-sandbox-network",
    default=None,
    help="Peers' sandboxed builds may use the network [on].",
)
@click.option(
    "--metrics-listen", metavar="HOST:PORT", help="Serve /metrics here without a token [off]."
)
@click.option(
    "--config-dir",
    "config_dirs",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="A directory of ESPHome configurations: the fleet (repeatable) [$MESHD_CONFIG_DIRS].",
)
@click.option(
    "--verify-timeout",
    metavar="SECONDS",
    help=f"How long a flashed device has to come back [{DEFAULT_VERIFY_TIMEOUT:g}].",
)
@click.option(
    "--toolchain-provision/--no-toolchain-provision",
    default=None,
    help="Provision (pip) the esphome version a job or an offloader asks for [on].",
)
@click.option(
    "--toolchain-index-url", metavar="URL", help="pip index for provisioning [pip's default]."
)
@click.option(
    "--toolchain-find-links",
    multiple=True,
    metavar="DIR|URL",
    help="A wheelhouse for provisioning (repeatable); alone, installs offline.",
)
@click.option(
    "--toolchain-max-idle",
    metavar="DURATION",
    help="Remove a provisioned toolchain unused this long (e.g. 30d) [30d].",
)
@click.option(
    "--toolchain-disk-budget",
    metavar="SIZE",
    help="Disk all provisioned toolchains may take (e.g. 4G) [4G].",
)
@click.option(
    "--esphome-pin",
    "esphome_pins",
    multiple=True,
    metavar="CONFIG=VERSION",
    help="Build CONFIG with esphome VERSION unless a job asks for another (repeatable).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(config_file: Path | None, verbose: bool, **flags: Any) -> None:
    """Run the meshd daemon in the foreground (systemd: Type=notify)."""
    from meshd.daemon import serve as run_daemon  # see the module docstring

    try:
        settings = load_settings(flags, config_file=config_file)
    except ConfigError as exc:
        error(str(exc))
        sys.exit(EXIT_USAGE)
    sys.exit(run_daemon(settings, verbose=verbose))
