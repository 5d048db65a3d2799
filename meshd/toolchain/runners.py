"""One Runner per job type, each a thin, faithful wrapper around one esphome command.

``compile`` → ``esphome compile CFG``; ``upload`` → ``esphome upload CFG --device DEV``
(after verify-chip for a serial port; a kept build, ``args.build``, is staged first and
flashed with ``ESPHOME_DATA_DIR`` pointing at it, see ``meshd.toolchain.archive``);
``clean`` → ``esphome clean CFG``; ``reset_build_env`` → ``esphome clean-all CFGDIR``;
``rename`` → ``esphome rename CFG NEW_NAME``. Every line goes to the job log as it
arrives; progress is parsed from it; a non-zero exit becomes ``JobFailed`` carrying the
lines that explain it. Cancellation kills the process group (``meshd.toolchain.process``)
and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path

from meshd.jobs.build import LOCAL_BUILDER, JobBuild
from meshd.jobs.model import Job, JobType
from meshd.jobs.runner import JobContext, JobFailed, Runner
from meshd.toolchain.archive import ArchiveError, BuildArchive
from meshd.toolchain.ccache import CacheStats, CompileCaches
from meshd.toolchain.chip import ChipError, expected_chip, verify_chip
from meshd.toolchain.commands import EsphomeFailed, invoke_esphome
from meshd.toolchain.progress import (
    Banded,
    Combined,
    CompileProgress,
    EsptoolProgress,
    OtaProgress,
    ProgressParser,
)
from meshd.toolchain.storage import (
    ArtifactError,
    FlashMethod,
    FlashPlan,
    data_dir,
    flash_plan,
    is_serial_device,
    load_storage,
)
from meshd.toolchain.tools import Toolchain, ToolMissing
from meshd.toolchain.versions import ProvisionError, ToolchainStore, ToolchainVersionError
from meshd.toolchain.versions.store import HERMETIC_UNSET

PROVISION_FAILED = "cannot provision esphome"
"""How a compile's error starts when its toolchain could not be provisioned: an
offloader reading it in a receiver's ``job_state`` re-routes instead of failing."""

OTA_DEVICE = "OTA"
"""esphome's ``--device OTA``: resolve the device's address from its configuration."""

ResolveDevice = Callable[[Path, str | None], Awaitable[tuple[str, str]]]
"""``(configuration, --device or None) -> (address, how it was found)``; raises
``ValueError`` with a sentence when it cannot. The daemon injects the fleet's
resolver (``meshd.fleet.resolve``) so the toolchain imports nothing of the fleet."""

VerifyFlash = Callable[[Path, str, Callable[[str], None]], Awaitable[tuple[str, str]]]
"""``(configuration, address, log) -> (reason_code, reason)`` after a successful OTA:
``verified``, ``not_verified`` or ``wrong_build`` (which fails the upload)."""

WRONG_BUILD = "wrong_build"

# rename compiles then uploads; compiling dominates the wall time.
_RENAME_COMPILE_SHARE = 0.8


def _config_file(ctx: JobContext) -> Path:
    path = Path(ctx.job.configuration)
    if not path.is_file():
        raise JobFailed(f"configuration not found: {path}")
    return path


def _config_dir(ctx: JobContext) -> Path:
    path = Path(ctx.job.configuration)
    directory = path.parent if path.is_file() else path
    if not directory.is_dir():
        raise JobFailed(f"configuration directory not found: {directory}")
    return directory


def _present_images(plan: FlashPlan) -> int | None:
    """How many images esptool will write (esphome skips declared images that are missing)."""
    return len([f for f in plan.images if f.required and f.path.is_file()]) or None


async def run_esphome(
    toolchain: Toolchain,
    ctx: JobContext,
    args: list[str],
    progress: ProgressParser | None = None,
) -> list[str]:
    """Run ``esphome ARGS`` for a job; a missing command or non-zero exit is ``JobFailed``."""
    try:
        return await invoke_esphome(
            toolchain,
            args,
            log=ctx.log,
            on_start=ctx.on_process,
            progress=ctx.progress,
            parser=progress,
        )
    except ToolMissing as exc:
        message = f"esphome command not found: {exc} (set --esphome to the esphome CLI)"
        ctx.log(message)
        raise JobFailed(message) from exc
    except EsphomeFailed as exc:
        raise JobFailed(str(exc)) from exc


RemoteStorage = Callable[[Job], AbstractAsyncContextManager[str | None]]
"""Gives a peer's compile its ``CCACHE_REMOTE_STORAGE`` URL for as long as it runs (the
mesh's per-job cache gateway, meshd/mesh/serving/cache_gateway.py), or None."""


@contextlib.asynccontextmanager
async def pinned_toolchain(
    toolchain: Toolchain, store: ToolchainStore | None, default: str | None, ctx: JobContext
) -> AsyncIterator[Toolchain]:
    """``toolchain``, or for a job pinned to another esphome (``options.esphome_version``)
    that version's toolchain from ``store``: provisioned first if needed, and leased for
    the whole compile so no sweep removes it meanwhile."""
    wanted = ctx.job.options.esphome_version
    if wanted is None or wanted == default:
        yield toolchain
        return
    if store is None:
        raise JobFailed(
            f"this node does not provision toolchains; cannot build with esphome {wanted}"
        )
    try:
        async with store.use(wanted, on_line=ctx.log, on_process=ctx.on_process) as tc:
            ctx.log(f"[meshd] building with esphome {tc.version} from {tc.path}")
            yield replace(toolchain, esphome=tc.esphome, unset=HERMETIC_UNSET)
    except ToolchainVersionError as exc:
        raise JobFailed(str(exc)) from None
    except ProvisionError as exc:
        raise JobFailed(f"{PROVISION_FAILED} {wanted} ({exc.stage}): {exc}") from None


def built_with(ctx: JobContext, default: str | None) -> str | None:
    """The esphome version ``pinned_toolchain`` builds ``ctx``'s job with: its pin (the
    store checked that the provisioned toolchain answers exactly it), else the node's
    own (None when that did not answer ``esphome version``)."""
    return ctx.job.options.esphome_version or default


async def record_local_build(
    ctx: JobContext, version: str | None, config: Path, env: Mapping[str, str] | None
) -> None:
    """Record on a completed compile that this node built it, with ``version``, for the
    platform its StorageJSON names (None if esphome wrote none)."""
    try:
        storage = await asyncio.to_thread(load_storage, config, env)
        platform: str | None = storage.target_platform
    except ArtifactError:
        platform = None
    ctx.record_build(JobBuild(esphome_version=version, builder=LOCAL_BUILDER, platform=platform))


@contextlib.asynccontextmanager
async def compile_cache(
    toolchain: Toolchain,
    caches: CompileCaches | None,
    ctx: JobContext,
    config: Path,
    remote_storage: RemoteStorage | None = None,
) -> AsyncIterator[Toolchain]:
    """``toolchain`` with the job's compile cache under it (``meshd.toolchain.ccache``).

    The node's own jobs use its local cache; a compile run for an offloader
    (``options.offloader``) uses that offloader's. Paths are hashed relative to the
    configuration's directory. Afterwards (also after a failure), if ccache ran, the job
    log gets the one-line summary and the job records its hits and misses
    (``options.cache_hits``, ``cache_misses``). ``caches`` None: the cache is off and
    nothing changes.

    Across the mesh: the node's own compiles also use its shared store as ccache file
    remote storage (``caches.shared``); a peer's compile uses the URL
    ``remote_storage`` gives it (its offloader's shared store, over the link).
    """
    if caches is None:
        yield toolchain
        return
    try:
        cache = caches.for_job(ctx.job.options.offloader)
    except ValueError as exc:
        ctx.log(f"[meshd] compile cache not used: {exc}")
        yield toolchain
        return
    log = cache.directory / "jobs" / f"{ctx.job.id}.log"
    await asyncio.to_thread(log.parent.mkdir, parents=True, exist_ok=True, mode=0o700)
    log.unlink(missing_ok=True)
    environ = cache.environ(
        base_dir=config.parent.absolute(), stats_log=log, inherited=toolchain.environ()
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            if ctx.job.options.offloader is None:
                environ["CCACHE_REMOTE_STORAGE"] = f"file:{caches.shared}"
            elif remote_storage is not None:
                url = await stack.enter_async_context(remote_storage(ctx.job))
                if url is not None:
                    environ["CCACHE_REMOTE_STORAGE"] = url
            yield replace(toolchain, env={**toolchain.env, **environ})
    finally:
        # No stats log: ccache never ran (nothing was compiled), so nothing to report.
        if log.exists():
            stats = CacheStats.from_stats_log(log)
            log.unlink(missing_ok=True)
            ctx.log(f"[meshd] {stats.summary()}")
            ctx.job.options = replace(
                ctx.job.options, cache_hits=stats.hits, cache_misses=stats.misses
            )


class CompileRunner:
    """``esphome compile CFG``, with progress estimated from PlatformIO's object lines.

    A job that names another esphome than the node's own (``options.esphome_version``)
    is built with that version's toolchain from ``store``, provisioned first if needed
    and leased for the whole compile so no sweep removes it meanwhile.
    """

    def __init__(
        self,
        toolchain: Toolchain,
        caches: CompileCaches | None = None,
        *,
        store: ToolchainStore | None = None,
        default_version: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.toolchain = toolchain
        self.caches = caches
        self.store = store
        self._default_version = default_version
        self.remote_storage: RemoteStorage | None = None
        """Set by the daemon once the mesh exists (the cache gateway's ``for_job``)."""

    async def run(self, ctx: JobContext) -> None:
        config = _config_file(ctx)
        default = self._default_version()
        async with (
            pinned_toolchain(self.toolchain, self.store, default, ctx) as base,
            compile_cache(base, self.caches, ctx, config, self.remote_storage) as toolchain,
        ):
            await run_esphome(toolchain, ctx, ["compile", str(config)], CompileProgress())
        await record_local_build(ctx, built_with(ctx, default), config, self.toolchain.environ())


class UploadRunner:
    """``esphome upload CFG --device DEV``; verify-chip first when DEV is a serial port."""

    def __init__(
        self,
        toolchain: Toolchain,
        *,
        verify_chip: bool = True,
        archive: BuildArchive | None = None,
        resolve: ResolveDevice | None = None,
        verify: VerifyFlash | None = None,
    ) -> None:
        self.toolchain = toolchain
        self.verify_chip = verify_chip
        self.archive = archive
        self.resolve = resolve
        self.verify = verify

    async def run(self, ctx: JobContext) -> None:
        config = _config_file(ctx)
        device = await self._device(ctx, config)
        await self._flash(ctx, config, device)
        if self.verify is None or is_serial_device(device):
            return
        if ctx.job.options.build is not None:
            # The verifier compares against the live build's record, not the kept one.
            ctx.log("[meshd] not verified: a kept build was flashed")
            ctx.job.reason, ctx.job.reason_code = "not verified (a kept build)", "not_verified"
        else:
            code, reason = await self.verify(config, device, ctx.log)
            ctx.job.reason, ctx.job.reason_code = reason, code
            if code == WRONG_BUILD:
                raise JobFailed(reason)

    async def _device(self, ctx: JobContext, config: Path) -> str:
        """The job's device; ``OTA`` (or none) resolved as ``esphome run`` would."""
        device = ctx.job.device
        if device and (device != OTA_DEVICE or self.resolve is None):
            return device
        if self.resolve is None:
            raise JobFailed("upload needs a device (an IP/hostname for OTA or a serial port)")
        try:
            address, how = await self.resolve(config, device or None)
        except ValueError as exc:
            raise JobFailed(str(exc)) from exc
        ctx.log(f"[meshd] uploading to {address}: {how}")
        return address

    async def _flash(self, ctx: JobContext, config: Path, device: str) -> None:
        build = ctx.job.options.build
        if build is None:
            await self._upload(ctx, self.toolchain, config, device)
            return
        staging = await self._stage(ctx, config, build)
        try:
            toolchain = replace(
                self.toolchain, env={**self.toolchain.env, "ESPHOME_DATA_DIR": str(staging)}
            )
            if data_dir(config, toolchain.environ()) != staging:
                raise JobFailed(
                    "kept builds cannot be flashed here: esphome ignores ESPHOME_DATA_DIR "
                    "(Home Assistant add-on)"
                )
            await self._upload(ctx, toolchain, config, device)
        finally:
            assert self.archive is not None
            await asyncio.to_thread(self.archive.unstage, staging)

    async def _stage(self, ctx: JobContext, config: Path, build: str) -> Path:
        if self.archive is None:
            raise JobFailed("this node keeps no builds (kept_builds is 0)")
        try:
            staging = await asyncio.to_thread(self.archive.stage, config, build, ctx.job.id)
        except ArchiveError as exc:
            raise JobFailed(str(exc)) from exc
        ctx.log(f"[meshd] flashing kept build {build} (checked against its manifest)")
        return staging

    async def _upload(
        self, ctx: JobContext, toolchain: Toolchain, config: Path, device: str
    ) -> None:
        parser: ProgressParser = OtaProgress()
        if is_serial_device(device):
            parser = EsptoolProgress(await self._prepare_serial(ctx, toolchain, config, device))
        await run_esphome(toolchain, ctx, ["upload", str(config), "--device", device], parser)

    async def _prepare_serial(
        self, ctx: JobContext, toolchain: Toolchain, config: Path, device: str
    ) -> int | None:
        """Verify the chip (unless disabled) and return how many images esptool will write."""
        env = toolchain.environ()
        try:
            record = load_storage(config, env)
            plan = flash_plan(record, FlashMethod.SERIAL, config, env)
        except ArtifactError as exc:
            raise JobFailed(str(exc)) from exc
        wanted = ctx.job.options.verify_chip
        if wanted is None:
            wanted = self.verify_chip
        expected = expected_chip(record)
        if wanted and expected is not None:
            try:
                await verify_chip(toolchain, device, expected, ctx.log, on_start=ctx.on_process)
            except ToolMissing as exc:
                raise JobFailed(f"esptool not found for verify-chip: {exc}") from exc
            except ChipError as exc:
                raise JobFailed(str(exc)) from exc
        return _present_images(plan)


class CleanRunner:
    """``esphome clean CFG``: delete the configuration's build tree."""

    def __init__(self, toolchain: Toolchain) -> None:
        self.toolchain = toolchain

    async def run(self, ctx: JobContext) -> None:
        config = _config_file(ctx)
        await run_esphome(self.toolchain, ctx, ["clean", str(config)])


class ResetBuildEnvRunner:
    """``esphome clean-all CFGDIR``: every build tree *and* PlatformIO's core dir.

    The configuration of this job is the configuration directory (a YAML file is
    taken to mean its directory). Note that clean-all deletes the PlatformIO
    packages and platforms, which the next compile downloads again.
    """

    def __init__(self, toolchain: Toolchain) -> None:
        self.toolchain = toolchain

    async def run(self, ctx: JobContext) -> None:
        directory = _config_dir(ctx)
        await run_esphome(self.toolchain, ctx, ["clean-all", str(directory)])


class _RenameGuard:
    """Keeps a rename atomic for the user: the old YAML or the new one, never both.

    ``esphome rename`` writes ``NEW.yaml`` first, then compiles and uploads it, and
    removes the old YAML only at the very end; it deletes ``NEW.yaml`` itself only on a
    failure it sees. A cancel (SIGTERM to its group), a supersede, or meshd dying leaves
    ``NEW.yaml`` behind. So before esphome starts, a marker beside the YAML records that
    ``NEW.yaml`` is this rename's to remove; whenever the rename does not finish (or an
    interrupted one is found on the next run), ``NEW.yaml`` goes while the old YAML still
    exists. A ``NEW.yaml`` that existed before is never touched (esphome refuses then).
    """

    def __init__(self, config: Path, new_path: Path) -> None:
        self.config = config
        self.new_path = new_path
        self.marker = new_path.with_name(f".{new_path.name}.meshd-rename")
        self._armed = False

    def arm(self, log: Callable[[str], None]) -> None:
        """Before esphome runs: clear an interrupted earlier rename, then own NEW.yaml."""
        if self.new_path.parent != self.config.parent:
            return  # not a plain name: esphome refuses it, nothing to guard
        if self._marker_is_ours() and self.new_path.exists() and self.config.exists():
            log(f"removing {self.new_path.name} left by an interrupted rename")
            self.new_path.unlink(missing_ok=True)
        self.marker.unlink(missing_ok=True)
        if self.new_path.exists():
            return  # someone else's file: esphome refuses to overwrite it
        self.marker.write_text(json.dumps({"from": str(self.config)}), encoding="utf-8")
        self._armed = True

    def undo(self, log: Callable[[str], None]) -> None:
        """The rename did not finish: remove NEW.yaml unless the old YAML is gone."""
        if self._armed and self.config.exists() and self.new_path.exists():
            self.new_path.unlink(missing_ok=True)
            log(f"rename did not finish: removed {self.new_path.name}; {self.config.name} is kept")
        self.disarm()

    def disarm(self) -> None:
        if self._armed:
            self.marker.unlink(missing_ok=True)
            self._armed = False

    def _marker_is_ours(self) -> bool:
        try:
            data = json.loads(self.marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("from") == str(self.config)


class RenameRunner:
    """``esphome rename CFG NEW_NAME``: rewrite the YAML, compile and upload it (OTA).

    All or nothing for the user: unless the rename completes, the old YAML stays and
    no new YAML is left behind (``_RenameGuard``).
    """

    def __init__(self, toolchain: Toolchain, caches: CompileCaches | None = None) -> None:
        self.toolchain = toolchain
        self.caches = caches
        self.remote_storage: RemoteStorage | None = None
        """Set by the daemon once the mesh exists (the cache gateway's ``for_job``)."""

    async def run(self, ctx: JobContext) -> None:
        config = _config_file(ctx)
        new_name = ctx.job.options.new_name
        if not new_name:
            raise JobFailed("rename needs args.new_name")
        progress = Combined(
            Banded(CompileProgress(), 0.0, _RENAME_COMPILE_SHARE),
            Banded(OtaProgress(), _RENAME_COMPILE_SHARE, 1.0),
        )
        guard = _RenameGuard(config.absolute(), config.absolute().parent / f"{new_name}.yaml")
        try:
            guard.arm(ctx.log)
        except OSError as exc:
            raise JobFailed(f"cannot prepare the rename in {config.parent}: {exc}") from exc
        try:
            async with compile_cache(
                self.toolchain, self.caches, ctx, config, self.remote_storage
            ) as toolchain:
                await run_esphome(toolchain, ctx, ["rename", str(config), new_name], progress)
        except BaseException:
            with contextlib.suppress(OSError):
                guard.undo(ctx.log)
            raise
        with contextlib.suppress(OSError):
            guard.disarm()
        ctx.log(f"renamed: configuration is now {config.parent / (new_name + '.yaml')}")


def make_runners(
    toolchain: Toolchain,
    *,
    verify_chip: bool = True,
    archive: BuildArchive | None = None,
    resolve: ResolveDevice | None = None,
    verify: VerifyFlash | None = None,
    caches: CompileCaches | None = None,
    store: ToolchainStore | None = None,
    default_version: Callable[[], str | None] = lambda: None,
) -> dict[JobType, Runner]:
    """One runner per job type, all driving ``toolchain`` (uploads may flash ``archive``'s
    kept builds, resolve ``--device OTA`` and verify the flash through the hooks;
    compiles and renames use ``caches``, None: no compile cache; compiles pinned to
    another esphome use ``store``'s toolchains)."""
    return {
        JobType.COMPILE: CompileRunner(
            toolchain, caches, store=store, default_version=default_version
        ),
        JobType.UPLOAD: UploadRunner(
            toolchain, verify_chip=verify_chip, archive=archive, resolve=resolve, verify=verify
        ),
        JobType.CLEAN: CleanRunner(toolchain),
        JobType.RESET_BUILD_ENV: ResetBuildEnvRunner(toolchain),
        JobType.RENAME: RenameRunner(toolchain, caches),
    }
