"""Toolchains by esphome version: one venv each, provisioned with pip on first need.

* ``validate``: which version strings may become a path and a pip requirement;
* ``pip``: the pip options (index URL, wheelhouse) and the install command line;
* ``locks``: ``flock`` locks an asyncio task can wait for and cancel;
* ``store``: provision, lease (``use``) and sweep toolchains in the data directory;
* ``sweep``: which toolchains a sweep removes (a pure function).

The node's own default esphome (``--esphome``) is not managed here; the store only
holds the versions provisioned for builds that asked for another one.
"""

from meshd.release_version import ToolchainVersionError, check_version, is_version
from meshd.toolchain.versions.pip import PipOptionError, PipOptions
from meshd.toolchain.versions.store import (
    ProvisionedToolchain,
    ProvisionError,
    SweepReport,
    ToolchainStore,
    hermetic_environ,
)
from meshd.toolchain.versions.sweep import SweepDecision, SweepPolicy, plan_sweep

__all__ = [
    "PipOptionError",
    "PipOptions",
    "ProvisionError",
    "ProvisionedToolchain",
    "SweepDecision",
    "SweepPolicy",
    "SweepReport",
    "ToolchainStore",
    "ToolchainVersionError",
    "check_version",
    "hermetic_environ",
    "is_version",
    "plan_sweep",
]
