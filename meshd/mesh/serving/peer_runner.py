"""Run the compiles a receiver does for offloaders in the build sandbox.

A job with ``options.offloader`` set is a peer's configuration, and a configuration is
code (docs/SECURITY.md): it runs in bubblewrap (:mod:`meshd.toolchain.sandbox`) with
only its own work tree, that offloader's HOME and private PlatformIO core writable,
and nothing of the data dir visible. Every other compile is the operator's own and
goes to the local runner unchanged.

The daemon decides at start whether there is a sandbox (``sandbox``), whether the
operator opted out (``unsafe``), or why there is none (``error``: then peers' jobs
fail with it, and the receiver already declines their compiles ``busy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from meshd.jobs.runner import JobContext, JobFailed, Runner
from meshd.mesh.content.stores import peer_key
from meshd.toolchain.ccache import CompileCaches
from meshd.toolchain.commands import EsphomeFailed, invoke_esphome
from meshd.toolchain.progress import CompileProgress
from meshd.toolchain.runners import (
    RemoteStorage,
    built_with,
    compile_cache,
    pinned_toolchain,
    record_local_build,
)
from meshd.toolchain.sandbox import TIMEOUT_EXIT, Sandbox, SandboxArea, SandboxUnavailable
from meshd.toolchain.tools import Toolchain, ToolMissing
from meshd.toolchain.versions import ToolchainStore

# Directory overrides of the daemon that must not steer a peer's build (the sandbox
# drops them too): its records stay in the work tree, where the receiver collects them.
_DROPPED_ENV = ("ESPHOME_DATA_DIR",)


def shared_pio_core(env: dict[str, str]) -> Path | None:
    """The node's own PlatformIO core dir, whose packages are lent read-only."""
    core = Path(env.get("PLATFORMIO_CORE_DIR") or Path.home() / ".platformio")
    return core if core.is_dir() else None


class PeerCompileRunner:
    def __init__(self, local: Runner, toolchain: Toolchain, data_dir: Path) -> None:
        self.local = local
        self.toolchain = toolchain
        self.builds_root = data_dir / "mesh" / "builds"
        self.sandbox_root = data_dir / "mesh" / "sandbox"
        self.sandbox: Sandbox | None = None
        self.unsafe = False
        self.error: str | None = "the build sandbox has not been set up yet"
        self.extra_writable: tuple[Path, ...] = ()
        # The compile cache: that offloader's own directory, mounted writable in its
        # sandbox only, and the mesh-wide store reached through the cache gateway.
        self.caches: CompileCaches | None = None
        self.remote_storage: RemoteStorage | None = None
        # Toolchains by version: an offloader's compile pinned to another esphome.
        self.store: ToolchainStore | None = None
        self.default_version: Callable[[], str | None] = lambda: None

    @property
    def state(self) -> str:
        """One word for ``/status``: sandboxed, UNSANDBOXED (opt-out) or unavailable."""
        if self.sandbox is not None:
            return "bubblewrap" + ("" if self.sandbox.network else " (no network)")
        if self.unsafe:
            return "UNSANDBOXED (--unsafe-no-sandbox)"
        return f"unavailable: {self.error}"

    def use(self, sandbox: Sandbox | None, *, unsafe: bool, error: str | None) -> None:
        self.sandbox, self.unsafe, self.error = sandbox, unsafe, error

    async def run(self, ctx: JobContext) -> None:
        offloader = ctx.job.options.offloader
        if not offloader:
            await self.local.run(ctx)
            return
        config, own_tree, ok = await asyncio.to_thread(
            _locate, Path(ctx.job.configuration), self.builds_root / peer_key(offloader)
        )
        if not ok:
            raise JobFailed(f"a peer's configuration must be in its work tree {own_tree}")
        workdir = config.parent
        env = {k: v for k, v in self.toolchain.environ().items() if k not in _DROPPED_ENV}
        toolchain = dataclasses.replace(self.toolchain, env={})
        if self.sandbox is None and not self.unsafe:
            raise JobFailed(f"peers' builds are not accepted here: {self.error}")
        extra = self.extra_writable
        if self.caches is not None:
            # A bad fingerprint: compile_cache logs it and builds without the cache.
            with contextlib.suppress(ValueError):
                extra = (*extra, self.caches.for_offloader(offloader).directory)
        default = self.default_version()
        async with (
            pinned_toolchain(_with_env(toolchain, env), self.store, default, ctx) as pinned,
            compile_cache(pinned, self.caches, ctx, config, self.remote_storage) as cached,
        ):
            if self.sandbox is None:
                await self._compile(ctx, cached, config)
                await record_local_build(ctx, built_with(ctx, default), config, env)
                return
            area = SandboxArea.for_offloader(
                workdir,
                self.sandbox_root / peer_key(offloader),
                shared_pio_core=shared_pio_core(env),
                extra_writable=extra,
            )
            try:
                await asyncio.to_thread(area.prepare)
                wrapped = self.sandbox.wrap(cached, area)
            except (OSError, SandboxUnavailable) as exc:
                raise JobFailed(f"cannot set up the build sandbox: {exc}") from exc
            await self._compile(ctx, wrapped, config)
        await record_local_build(ctx, built_with(ctx, default), config, env)

    async def _compile(self, ctx: JobContext, toolchain: Toolchain, config: Path) -> None:
        try:
            await invoke_esphome(
                toolchain,
                ["compile", str(config)],
                log=ctx.log,
                on_start=ctx.on_process,
                progress=ctx.progress,
                parser=CompileProgress(),
            )
        except ToolMissing as exc:
            raise JobFailed(f"esphome command not found: {exc}") from exc
        except EsphomeFailed as exc:
            if self.sandbox is not None and exc.returncode == TIMEOUT_EXIT:
                limit = self.sandbox.limits.wall_time or 0
                raise JobFailed(
                    f"the build ran past this receiver's wall-time limit ({limit:.0f} s) "
                    "and was stopped"
                ) from exc
            raise JobFailed(str(exc)) from exc


def _locate(config: Path, own_tree: Path) -> tuple[Path, Path, bool]:
    """The resolved configuration and tree, and whether the one is a file directly in
    a configuration directory of the other (``<builds>/<offloader>/<config>/x.yaml``)."""
    config, own_tree = config.resolve(), own_tree.resolve()
    return config, own_tree, config.parent.parent == own_tree and config.is_file()


def _with_env(toolchain: Toolchain, env: dict[str, str]) -> Toolchain:
    """``toolchain`` with ``env`` laid over the daemon's environment. (Unsandboxed, a
    variable set in the daemon's own environment still reaches esphome; the sandbox
    clears the environment and passes only its allow-list.)"""
    return dataclasses.replace(toolchain, env=env)
