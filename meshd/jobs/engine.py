"""The job engine: two lanes, install chains, queue rules, persistence, restore.

Theory of operation
-------------------
Every job lives in exactly one place while active:

* **held** - a dependent whose prerequisite has not completed; off every lane;
* **armed** - an upload with ``when_online`` whose prerequisite completed, parked on
  the upload lane until its device announces itself (``device_seen``) or its deadline
  passes (status ``queued``, ``waiting = "device"``, both persisted);
* **queued on its lane** - waiting for a slot (and, for uploads, the build gate and
  device exclusivity);
* **running** - in a lane slot, as an asyncio task around its runner.

All bookkeeping happens synchronously on the event loop (no ``await`` between reading
and changing state), so rules never race each other. Each status change is written to
SQLite before its event is published. A terminal status releases or cancels the
job's held dependents: completed places them on their lane, failed or cancelled
cancels them, so a build that did not complete can never be flashed.

Shutdown cancels both lanes; jobs interrupted by it go back to ``queued`` (not
``cancelled``): a daemon restart is not the user changing their mind. Restore applies
the same rules to whatever the database holds, computed over the whole set so the
result does not depend on row order. Terminal jobs past the history limits are
pruned at start and periodically (``meshd.jobs.history``).

A full disk (or an I/O error) never wedges a lane. A new job that cannot be recorded
is refused (``StorageUnavailable``), so nothing unrecorded is acknowledged. A running
job whose log or row cannot be written fails with "no space left on <path>" and its
dependents are cancelled as after any failure. A status that could not be saved is
kept in memory (``get`` and ``jobs`` show it) and written as soon as the database
takes writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshd.config import DEFAULT_UPLOAD_SLOTS
from meshd.db import database_path
from meshd.jobs.armed import (
    DEFAULT_ARMED_UPLOAD_TTL,
    ExpiryTimer,
    describe_duration,
    no_device_name,
    no_device_online,
)
from meshd.jobs.build import StoredBuild
from meshd.jobs.diskio import LocalWriteError, describe, is_write_error
from meshd.jobs.events import (
    EventBus,
    JobArmed,
    JobFinished,
    JobOutput,
    JobProgress,
    JobQueued,
    JobReleased,
    JobStarted,
    LaneStatusChanged,
)
from meshd.jobs.history import HistoryLimits, prune_history
from meshd.jobs.lanes import Lane, LaneSnapshot
from meshd.jobs.logs import JobLogs
from meshd.jobs.model import WAITING_DEVICE, Job, JobStatus, JobType, LaneName, now
from meshd.jobs.options import JobOptions
from meshd.jobs.orphans import kill_orphan_group, process_identity
from meshd.jobs.placement import LocalPlacer, Placement, Placer, ReasonCode, Where
from meshd.jobs.runner import JobContext, JobFailed, Reroute, Runner
from meshd.jobs.store import JobStore

_LOGGER = logging.getLogger(__name__)


# The job types a newer job (or a clean) of the same configuration replaces.
SUPERSEDABLE = frozenset({JobType.COMPILE, JobType.UPLOAD, JobType.RENAME})

# job_progress is published only when progress moves by at least this much, so a
# tool printing every 0.1 % does not flood websocket clients.
PROGRESS_STEP = 0.01

# Most installs one request may create: a fleet of a few hundred devices, well inside
# the API's body limit, and a bound on the work one transaction does.
MAX_INSTALLS = 500

# How often job rows that could not be saved (disk full) are tried again.
UNSAVED_RETRY = 2.0


class EngineError(Exception):
    """Root of the errors the engine raises to its callers."""


class InvalidJob(EngineError, ValueError):
    """The request cannot become a job (missing device, unknown prerequisite...)."""


class UnknownJob(EngineError, KeyError):
    """No job with that id exists."""

    def __str__(self) -> str:
        return f"unknown job {self.args[0]!r}"


class EngineStopped(EngineError):
    """The engine is shutting down and takes no new work."""


class StorageUnavailable(EngineError):
    """The job could not be recorded (disk full, I/O error); it was not accepted."""


class Outcome(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # by shutdown: back to queued
    REROUTE = "reroute"  # the runner could not run it there: back to the queue


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: str | None = None
    reroute: Reroute | None = None
    """For REROUTE: the runner's exception, with the options to queue the job with."""


@dataclass(frozen=True)
class InstallSpec:
    """One install chain of ``Engine.install_many``: a compile, then an upload."""

    configuration: str
    device: str | None = None
    """Where to upload; None only with ``upload_options.when_online`` (the address the
    device announces itself with is used)."""
    options: JobOptions = field(default_factory=JobOptions)
    """The compile's options (``force_local``...)."""
    upload_options: JobOptions = field(default_factory=JobOptions)
    """The upload's options (``when_online``, ``device_name``...)."""


@dataclass(frozen=True)
class JobPage:
    """One page of the job history, oldest first, and the cursor of the next (older) one."""

    jobs: list[Job]
    next_before: int | None
    """Pass as ``before`` for the page of older jobs; None when this page is the oldest."""


AfterCompile = Callable[[JobContext], Awaitable[None]]
"""Runs inside a compile job once its runner completed (local or remote), e.g. to keep
the firmware. Its failure is logged, never the compile's failure."""


class Engine:
    def __init__(
        self,
        data_dir: Path,
        runners: Mapping[JobType, Runner],
        *,
        bus: EventBus | None = None,
        upload_slots: int = DEFAULT_UPLOAD_SLOTS,
        armed_upload_ttl: float = DEFAULT_ARMED_UPLOAD_TTL,
        history: HistoryLimits | None = None,
    ) -> None:
        if armed_upload_ttl <= 0:
            raise ValueError(f"armed_upload_ttl must be positive, got {armed_upload_ttl}")
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.bus = bus or EventBus()
        self.store = JobStore(database_path(data_dir))
        self.logs = JobLogs(data_dir / "logs")
        self._runners = dict(runners)
        self._active: dict[str, Job] = {}
        self._held: dict[str, list[Job]] = {}
        self._cancel_requested: set[str] = set()
        self._stopping = False
        self._seq = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._unsaved: dict[str, Job] = {}
        self._retry: asyncio.TimerHandle | None = None
        self.remote_runner: Runner | None = None
        """Runs compiles the placer sends to a receiver (set by the mesh)."""
        self.armed_upload_ttl = armed_upload_ttl
        self.history = history or HistoryLimits()
        self.devices_online: Callable[[str], str | None] = no_device_online
        """Hook (the fleet's device monitor): the address of device NAME if it is online
        now, else None. Asked when an armed upload's prerequisite completes."""
        self.device_name_of: Callable[[str], str | None] = no_device_name
        """Hook (the daemon, from esphome's build record): the device name a
        configuration builds, for an armed upload that was not given ``device_name``."""
        self.after_compile: AfterCompile | None = None
        """Hook (the daemon: keep the firmware): see ``AfterCompile``."""
        self._expiry = ExpiryTimer(self._expire_due)
        self.compile_lane = Lane(
            LaneName.COMPILE,
            1,
            execute=self._execute,
            on_finished=self._on_finished,
            on_status=self._publish_lane_status,
            local=Placement(Where.LOCAL, ReasonCode.NO_MESH, "local compile lane"),
            placer=LocalPlacer(),
        )
        self.upload_lane = Lane(
            LaneName.UPLOAD,
            upload_slots,
            execute=self._execute,
            on_finished=self._on_finished,
            on_status=self._publish_lane_status,
            can_start=self._upload_may_start,
            local=Placement(
                Where.LOCAL,
                ReasonCode.UPLOAD_LOCAL,
                "uploads always run on the node that reaches the device",
            ),
        )

    def use_mesh(self, placer: Placer, remote_runner: Runner) -> None:
        """Let the compile lane dispatch compiles to receivers (the dispatch pool)."""
        self.compile_lane.placer = placer
        self.remote_runner = remote_runner
        self.compile_lane.wake()

    def reschedule(self) -> None:
        """Re-run placement now: a peer, its status or trust changed."""
        self.compile_lane.wake()

    # -- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        """Restore persisted jobs, then start both lanes (and the history prune)."""
        self._restore()
        self._supervisor = asyncio.create_task(self._supervise(), name="meshd-lanes")

    async def _supervise(self) -> None:
        # TaskGroup: a lane that dies cancels (and so drains) its sibling before the
        # error propagates to whoever awaits join().
        async with asyncio.TaskGroup() as group:
            group.create_task(self.compile_lane.run(), name="compile-lane")
            group.create_task(self.upload_lane.run(), name="upload-lane")
            group.create_task(self._housekeep(), name="job-history")

    async def _housekeep(self) -> None:
        """Prune the history now and every ``history.interval``; never ends with an error."""
        while True:
            try:
                await self.prune_history()
            except Exception:
                _LOGGER.exception("pruning the job history failed; retrying later")
            await asyncio.sleep(self.history.interval)

    async def prune_history(self) -> list[str]:
        """Delete terminal jobs past the history limits, and their logs; return their ids."""
        return await prune_history(
            self.store, self.logs, self.history, active=frozenset(self._active)
        )

    async def join(self) -> None:
        """Wait for the lanes to end; raises if a lane crashed."""
        if self._supervisor is not None:
            await self._supervisor

    async def stop(self) -> None:
        """Stop taking work, interrupt and drain both lanes, persist, close files."""
        self._stopping = True
        self._expiry.cancel()
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            except BaseException:
                _LOGGER.exception("a lane ended with an error during shutdown")
        if self._retry is not None:
            self._retry.cancel()
        self._flush_unsaved(reschedule=False)
        if self._unsaved:
            _LOGGER.error(
                "could not save %d job(s) before stopping (%s); they restart as the "
                "database last recorded them",
                len(self._unsaved),
                ", ".join(self._unsaved),
            )
        self.logs.close_all()
        self.store.close()

    # -- persistence ------------------------------------------------------------

    def _persist(self, job: Job) -> str | None:
        """Save ``job``'s row; on a write failure keep it for a retry and say why."""
        try:
            self.store.save(job)
        except Exception as exc:
            if not is_write_error(exc):
                raise
            error = describe(exc, self.store.path)
            if job.id not in self._unsaved:
                _LOGGER.error(  # noqa: TRY400 - the sentence is the point, not a traceback
                    "cannot save job %s (%s); keeping it in memory, retrying", job.id, error
                )
            self._unsaved[job.id] = job
            self._schedule_retry()
            return error
        self._unsaved.pop(job.id, None)
        return None

    def _schedule_retry(self) -> None:
        if self._retry is None and not self._stopping:
            with contextlib.suppress(RuntimeError):  # no running loop: stop() flushes
                loop = asyncio.get_running_loop()
                self._retry = loop.call_later(UNSAVED_RETRY, self._flush_unsaved)

    def _flush_unsaved(self, *, reschedule: bool = True) -> None:
        """Write the rows that could not be saved; stop at the first that still fails."""
        self._retry = None
        for job_id, job in list(self._unsaved.items()):
            try:
                self.store.save(job)
            except Exception as exc:
                if not is_write_error(exc):
                    raise
                if reschedule:
                    self._schedule_retry()
                return
            del self._unsaved[job_id]
            _LOGGER.info("saved job %s, which the full disk had held back", job_id)

    def _forget_processes(self, job_id: str) -> None:
        try:
            self.store.forget_processes(job_id)
        except Exception as exc:
            if not is_write_error(exc):
                raise
            # Harmless: the next start finds the group gone (or not ours) and skips it.
            _LOGGER.warning("job %s: %s", job_id, describe(exc, self.store.path))

    # -- queries --------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        job = self._active.get(job_id) or self._unsaved.get(job_id) or self.store.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    def last_flashed(self, configuration: str) -> Job | None:
        """The newest completed upload of ``configuration``; its ``build`` is the record of
        the compile it flashed (None for an upload of a build meshd did not make)."""
        return self.store.last_flashed(configuration)

    def jobs(self) -> list[Job]:
        """Every job the store knows, active ones as they are in memory, oldest first.

        Loads the whole table: for tests and tools; the API reads ``page``.
        """
        merged = {job.id: job for job in self.store.load_all()}
        merged.update(self._unsaved)
        merged.update(self._active)
        return sorted(merged.values(), key=lambda job: job.seq)

    def page(
        self,
        *,
        limit: int,
        before: int | None = None,
        statuses: Collection[JobStatus] | None = None,
    ) -> JobPage:
        """The newest ``limit`` jobs with ``seq < before`` (and one of ``statuses``).

        One keyed store query; active jobs appear as they are in memory (progress).
        """
        if limit < 1:
            raise ValueError(f"a page holds at least one job, not {limit}")
        wanted = None if statuses is None else sorted(s.value for s in statuses)
        rows = self.store.page(limit=limit + 1, before=before, statuses=wanted)
        more = len(rows) > limit
        rows = rows[:limit]
        jobs = [self._active.get(job.id, job) for job in reversed(rows)]
        return JobPage(jobs, rows[-1].seq if more and rows else None)

    def armed_uploads(self) -> list[Job]:
        """Uploads waiting for their device, oldest first."""
        return self.upload_lane.parked_jobs()

    def active_jobs(self) -> list[Job]:
        """Queued, held and running jobs, oldest first."""
        return sorted(self._active.values(), key=lambda job: job.seq)

    def jobs_where(self, predicate: Callable[[Job], bool]) -> list[Job]:
        """Every job (active or stored) matching ``predicate``, oldest first."""
        return [job for job in self.jobs() if predicate(job)]

    def lane(self, name: LaneName) -> Lane:
        return self.compile_lane if name is LaneName.COMPILE else self.upload_lane

    def lane_status(self, name: LaneName) -> LaneSnapshot:
        return self.lane(name).status()

    def is_held(self, job_id: str) -> bool:
        return any(job.id == job_id for deps in self._held.values() for job in deps)

    # -- submitting -----------------------------------------------------------

    def submit(
        self,
        job_type: JobType,
        configuration: str,
        device: str | None = None,
        *,
        options: JobOptions | None = None,
    ) -> Job:
        """Queue one job, superseding other active jobs of its configuration."""
        job = Job(
            type=job_type,
            configuration=configuration,
            device=device,
            options=options or JobOptions(),
        )
        self._admit([job])
        return job

    def install(
        self,
        configuration: str,
        device: str | None,
        *,
        options: JobOptions | None = None,
        upload_options: JobOptions | None = None,
    ) -> tuple[Job, Job]:
        """Queue a compile (with ``options``) and an upload held until the compile completes."""
        spec = InstallSpec(
            configuration, device, options or JobOptions(), upload_options or JobOptions()
        )
        return self.install_many([spec])[0]

    def install_many(self, specs: Sequence[InstallSpec]) -> list[tuple[Job, Job]]:
        """Queue one install chain per spec, all or nothing (one transaction).

        Every chain is validated before any is persisted; two specs for one
        configuration are refused (the second would supersede the first).
        """
        if not specs:
            raise InvalidJob("no configurations to install")
        if len(specs) > MAX_INSTALLS:
            raise InvalidJob(f"at most {MAX_INSTALLS} installs per request, not {len(specs)}")
        seen: set[str] = set()
        chains: list[tuple[Job, Job]] = []
        for spec in specs:
            if spec.configuration in seen:
                raise InvalidJob(f"{spec.configuration} is listed twice")
            seen.add(spec.configuration)
            compile_job = Job(
                type=JobType.COMPILE,
                configuration=spec.configuration,
                device=spec.device,
                options=spec.options,
            )
            upload_job = Job(
                type=JobType.UPLOAD,
                configuration=spec.configuration,
                device=spec.device,
                depends_on=compile_job.id,
                options=spec.upload_options,
            )
            chains.append((compile_job, upload_job))
        self._admit_units([list(chain) for chain in chains])
        return chains

    def _validate(self, job: Job) -> None:
        if not job.configuration:
            raise InvalidJob("a job needs a configuration")
        if job.options.when_online and job.type is not JobType.UPLOAD:
            raise InvalidJob("only an upload can wait for its device (when_online)")
        if job.options.device_name == "":
            raise InvalidJob("an empty device name")
        if job.type is JobType.UPLOAD and not job.device and not job.options.when_online:
            raise InvalidJob("an upload needs a device (IP address, hostname or serial port)")
        if job.type is JobType.RENAME and not job.options.new_name:
            raise InvalidJob("a rename needs a new name")

    def _admit(self, unit: list[Job]) -> None:
        self._admit_units([unit])

    def _admit_units(self, units: list[list[Job]]) -> None:
        """Persist and queue units (a job, or a chain headed by its compile) together."""
        if self._stopping:
            raise EngineStopped("meshd is shutting down and takes no new jobs")
        every = [job for unit in units for job in unit]
        for job in every:
            self._validate(job)
        ids = {job.id for job in every}
        for job in every:
            self._seq += 1
            job.seq = self._seq
        # Persist the units before their rules cancel anything: a crash in between then
        # leaves the new work plus old work the restore rules still handle.
        try:
            self.store.save_many(every)
        except Exception as exc:
            if not is_write_error(exc):
                raise
            self._seq -= len(every)
            raise StorageUnavailable(
                f"{describe(exc, self.store.path)}: the job was not accepted; free some "
                "space and submit it again"
            ) from None
        for unit in units:
            head = unit[0]
            if head.type is JobType.RESET_BUILD_ENV:
                victims = [job for job in self._active.values() if job.id not in ids]
                reason = f"cancelled by reset of the build environment ({head.id})"
            else:
                # Only build work is superseded: a clean in progress is maintenance the
                # user asked for, and the build gate (not a cancel) orders uploads after it.
                victims = [
                    job
                    for job in self._active.values()
                    if job.configuration == head.configuration
                    and job.id not in ids
                    and job.type in SUPERSEDABLE
                ]
                verb = "clean" if head.type is JobType.CLEAN else "newer job"
                reason = f"superseded by {verb} {head.id}"
            for victim in victims:
                self._cancel_now(victim, reason)
        for job in every:
            self._active[job.id] = job
            self.logs.append(job.id, f"queued {job.type.value} for {job.configuration}")
            self.bus.publish(JobQueued(job.snapshot()))
        for job in every:
            self._place(job)
        # A cancelled gatekeeper or a new one changes what uploads may start.
        self.upload_lane.wake()

    def _place(self, job: Job) -> None:
        """Put an active queued job where it belongs: held, armed, or on its lane."""
        if job.depends_on is not None:
            prereq = self._active.get(job.depends_on)
            if prereq is not None:
                self._held.setdefault(prereq.id, []).append(job)
                return
        if job.waiting == WAITING_DEVICE:
            self._park(job)  # armed before a restart: keeps its deadline
        elif job.type is JobType.UPLOAD and job.options.when_online:
            self._arm(job)
        else:
            if job.waiting is not None:
                self.logs.append(job.id, f"ignoring unknown wait {job.waiting!r}")
                job.waiting = None
            self.lane(job.lane).enqueue(job)

    # -- armed uploads --------------------------------------------------------

    def device_seen(self, name: str, address: str | None = None) -> list[Job]:
        """Device ``name`` announced itself (at ``address``): release its armed uploads.

        Synchronous, call from the event loop (from a zeroconf thread, through
        ``loop.call_soon_threadsafe``): each released upload is on the upload lane when
        this returns and starts as soon as a slot is free. An upload with a
        fixed device keeps it; one without uses ``address`` (else ``NAME.local``).
        Returns the released jobs (none if nothing waited for ``name``).
        """
        if self._stopping:
            return []
        released = [
            job for job in self.upload_lane.parked_jobs() if job.options.device_name == name
        ]
        for job in released:
            self._release(job, name, address)
        if released:
            self._expiry.schedule(self._deadlines())
        return released

    def _arm(self, job: Job) -> None:
        """An armed upload's prerequisite is done: upload now if the device is online,
        else wait for it (persisted, with a deadline)."""
        name = job.options.device_name or self._ask(self.device_name_of, job.configuration)
        if not name:
            self._finish(
                job,
                Outcome.FAILED,
                "cannot wait for the device: its name is not known (give device_name, "
                "or compile the configuration first so its build record names it)",
            )
            return
        if job.options.device_name != name:
            job.options = replace(job.options, device_name=name)
        address = self._ask(self.devices_online, name)
        if address is not None:
            self._assign_device(job, name, address)
            self._persist(job)
            self.logs.append(job.id, f"device {name} is online at {address}: uploading now")
            self.upload_lane.enqueue(job)
            return
        started = now()
        job.waiting = WAITING_DEVICE
        job.waiting_since = job.waiting_since or started
        job.waiting_until = started + self.armed_upload_ttl
        job.reason = f"waiting for device {name} to come online"
        job.reason_code = ReasonCode.WAITING_FOR_DEVICE.value
        self._persist(job)
        self.logs.append(
            job.id,
            f"armed: waiting for device {name} to announce itself "
            f"(at most {describe_duration(self.armed_upload_ttl)})",
        )
        self.bus.publish(JobArmed(job.snapshot(), name))
        self._park(job)

    def _park(self, job: Job) -> None:
        if job.waiting_until is not None and job.waiting_until <= now():
            self._expire(job)
            return
        self.upload_lane.park(job)
        self._expiry.schedule(self._deadlines())

    def _release(self, job: Job, name: str, address: str | None) -> None:
        self.upload_lane.unpark(job.id)
        job.waiting = None
        job.waiting_until = None
        self._assign_device(job, name, address)
        self._persist(job)
        where = f" at {address}" if address else ""
        self.logs.append(
            job.id, f"device {name} announced itself{where}: uploading to {job.device}"
        )
        self.bus.publish(JobReleased(job.snapshot(), name, address))
        self.upload_lane.enqueue(job)

    def _assign_device(self, job: Job, name: str, address: str | None) -> None:
        """A fixed device (the request's) stays; otherwise the announced address."""
        if job.device is None or job.options.device_announced:
            job.device = address or f"{name}.local"
            if not job.options.device_announced:
                job.options = replace(job.options, device_announced=True)

    def _expire(self, job: Job) -> None:
        waited = (job.waiting_until or now()) - (job.waiting_since or now())
        name = job.options.device_name or "the device"
        job.reason = f"device {name} was not seen before the deadline"
        job.reason_code = ReasonCode.DEVICE_NOT_SEEN.value
        self._finish(
            job,
            Outcome.FAILED,
            f"device {name} did not come online within {describe_duration(waited)}",
        )

    def _expire_due(self) -> None:
        if self._stopping:
            return
        current = now()
        for job in self.upload_lane.parked_jobs():
            if job.waiting_until is not None and job.waiting_until <= current:
                self._expire(job)
        self._expiry.schedule(self._deadlines())

    def _deadlines(self) -> list[float]:
        return [j.waiting_until for j in self.upload_lane.parked_jobs() if j.waiting_until]

    def _ask(self, hook: Callable[[str], str | None], arg: str) -> str | None:
        """Call a fleet hook; its failure means "not known", never a broken rule."""
        try:
            return hook(arg)
        except Exception:
            _LOGGER.exception("the %s hook failed for %r", getattr(hook, "__name__", "device"), arg)
            return None

    # -- cancelling -----------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job; returns once it is terminal. Cancelling a terminal job is a no-op."""
        job = self._active.get(job_id)
        if job is None:
            return self.get(job_id)
        self._cancel_now(job, "cancelled by request")
        task = self.lane(job.lane).task_of(job.id)
        if task is not None:
            await asyncio.shield(asyncio.wait([task]))
        return job

    def _cancel_now(self, job: Job, reason: str) -> None:
        if job.status.terminal:
            return
        if job.status is JobStatus.RUNNING:
            task = self.lane(job.lane).task_of(job.id)
            if task is not None and job.id not in self._cancel_requested:
                self._cancel_requested.add(job.id)
                job.error = reason
                self.logs.append(job.id, reason)
                task.cancel()
            return
        self.lane(job.lane).remove_queued(job.id)
        self._unhold(job)
        self._finish(job, Outcome.CANCELLED, reason)

    def _unhold(self, job: Job) -> None:
        if job.depends_on is None:
            return
        dependents = self._held.get(job.depends_on)
        if dependents and job in dependents:
            dependents.remove(job)
            if not dependents:
                del self._held[job.depends_on]

    # -- running --------------------------------------------------------------

    def _upload_may_start(self, job: Job) -> bool:
        for running in self.upload_lane.running_jobs():
            if running.device == job.device:
                return False
        for other in self._active.values():
            if other.type is JobType.RESET_BUILD_ENV:
                return False
            if other.type is JobType.CLEAN and other.configuration == job.configuration:
                return False
        return True

    async def _execute(self, job: Job, placement: Placement) -> Result:
        """Run a job to an outcome; never raises (a runner's bug is a failed job)."""
        job.reason = placement.reason
        job.reason_code = placement.code.value
        if placement.where is Where.FAIL:
            return Result(Outcome.FAILED, placement.reason)
        remote = placement.where is Where.REMOTE
        job.status = JobStatus.RUNNING
        job.started_at = now()
        job.runner = placement.runner
        if job.type is JobType.COMPILE:
            job.build = None  # only this run's runner may say what built it
        elif job.type is JobType.UPLOAD and job.depends_on is not None and job.build is None:
            job.build = self._prerequisite_build(job.depends_on)
        if (error := self._persist(job)) is not None:
            # Never run what could not be recorded as running: after a crash nobody
            # would know to kill it or that it ran.
            return Result(Outcome.FAILED, f"{error}: could not record the job as running")
        self.logs.clear_error(job.id)
        self.logs.append(job.id, f"started on {job.runner}: {job.reason}")
        self.bus.publish(JobStarted(job.snapshot()))
        if (log_error := self.logs.write_error(job.id)) is not None:
            return Result(Outcome.FAILED, log_error)
        runner = self.remote_runner if remote else self._runners.get(job.type)
        if runner is None:
            return Result(Outcome.FAILED, f"no runner for {job.type.value} jobs on this node")
        ctx = JobContext(
            job,
            self._log_for(job),
            self._progress_for(job),
            self._process_for(job),
            placement=placement,
        )
        try:
            await runner.run(ctx)
            if job.type is JobType.COMPILE and job.id not in self._cancel_requested:
                await self._after_compile(ctx)
        except asyncio.CancelledError:
            if job.id in self._cancel_requested:
                return Result(Outcome.CANCELLED, job.error)
            return Result(Outcome.INTERRUPTED)
        except Reroute as exc:
            if job.id in self._cancel_requested:
                return Result(Outcome.CANCELLED, job.error)
            return Result(Outcome.REROUTE, str(exc), reroute=exc)
        except JobFailed as exc:
            return Result(Outcome.FAILED, str(exc) or "failed")
        except Exception as exc:
            _LOGGER.exception("runner for %s crashed", job.id)
            return Result(Outcome.FAILED, f"internal error: {exc!r}")
        if job.id in self._cancel_requested:
            if job.type is JobType.UPLOAD:
                # The flash finished before the cancel could stop it: the device runs
                # the new build, and saying "cancelled" would be a lie about it.
                self._cancel_requested.discard(job.id)
                self.logs.append(job.id, "the cancel came too late: the upload had finished")
                return Result(Outcome.COMPLETED)
            # It finished between the cancel request and the signal: still cancelled,
            # because the user was told it would not flash.
            return Result(Outcome.CANCELLED, job.error)
        return Result(Outcome.COMPLETED)

    def _prerequisite_build(self, compile_id: str) -> StoredBuild | None:
        """The build record of the compile an upload flashes (a keyed read), if any."""
        prereq = self._unsaved.get(compile_id) or self.store.get(compile_id)
        return prereq.build if prereq is not None else None

    async def _after_compile(self, ctx: JobContext) -> None:
        if self.after_compile is None:
            return
        try:
            await self.after_compile(ctx)
        except Exception as exc:
            # The build itself is fine: it can still be flashed, only not kept.
            _LOGGER.exception("after-compile hook failed for %s", ctx.job.id)
            ctx.log(f"[meshd] warning: could not keep this build: {exc}")

    def _log_for(self, job: Job) -> Any:
        def log(line: str) -> None:
            self.logs.append(job.id, line)
            if (error := self.logs.write_error(job.id)) is not None:
                # Raised into the runner: its process is stopped and the job fails.
                raise LocalWriteError(error, self.logs.path(job.id))
            self.bus.publish(JobOutput(job.snapshot(), line))

        return log

    def _progress_for(self, job: Job) -> Any:
        def progress(fraction: float) -> None:
            fraction = min(1.0, max(0.0, fraction))
            last = job.progress
            if last is not None and abs(fraction - last) < PROGRESS_STEP and fraction < 1.0:
                return
            job.progress = fraction
            self.bus.publish(JobProgress(job.snapshot(), fraction))

        return progress

    def _process_for(self, job: Job) -> Any:
        def on_process(pgid: int) -> None:
            identity = process_identity(pgid)
            if identity is None:
                return
            try:
                self.store.record_process(job.id, pgid, identity)
            except Exception as exc:
                if not is_write_error(exc):
                    raise
                _LOGGER.warning(
                    "job %s: process group %d not recorded (%s)",
                    job.id,
                    pgid,
                    describe(exc, self.store.path),
                )

        return on_process

    def _on_finished(self, job: Job, result: Result) -> None:
        self._forget_processes(job.id)
        if result.outcome is Outcome.INTERRUPTED:
            _back_to_queued(job)
            self._persist(job)
            self.logs.append(job.id, "interrupted by meshd shutdown; it runs again after restart")
            self.logs.close(job.id)
            return
        if result.reroute is not None:
            self._requeue(job, result.reroute)
            return
        self._finish(job, result.outcome, result.error)

    def _requeue(self, job: Job, reroute: Reroute) -> None:
        """Put a job its runner could not run back in its queue, at its old place.

        The runner's side decided what changes (``reroute.options``: receivers to avoid,
        or local only); the engine only records it and lets placement run again.
        """
        for note in reroute.notes:
            self.logs.append(job.id, note)
        job.options = reroute.options
        _back_to_queued(job)
        self._persist(job)
        self.bus.publish(JobQueued(job.snapshot()))
        self.lane(job.lane).enqueue(job)

    def _finish(self, job: Job, outcome: Outcome, error: str | None) -> None:
        """Make a job terminal: persist, announce, then settle its held dependents."""
        job.status = JobStatus(outcome.value)
        job.finished_at = now()
        if job.type is JobType.COMPILE and outcome is not Outcome.COMPLETED:
            # Nothing usable was built (or it was never checked): no record of it.
            job.build = None
        job.error = None if outcome is Outcome.COMPLETED else (error or outcome.value)
        if job.waiting is not None:
            self.upload_lane.unpark(job.id)
            job.waiting = None
            self._expiry.schedule(self._deadlines())
        self._active.pop(job.id, None)
        self._cancel_requested.discard(job.id)
        self._persist(job)
        self.logs.append(job.id, f"{job.status.value}" + (f": {job.error}" if job.error else ""))
        self.logs.close(job.id)
        self.bus.publish(JobFinished(job.snapshot()))
        for dependent in self._held.pop(job.id, []):
            if job.status is JobStatus.COMPLETED:
                self._place(dependent)
            else:
                self._finish(
                    dependent,
                    Outcome.CANCELLED,
                    f"prerequisite {job.type.value} {job.id} {job.status.value}",
                )
        # A finished clean or reset may open the build gate for waiting uploads.
        self.upload_lane.wake()

    def _publish_lane_status(self, status: LaneSnapshot) -> None:
        self.bus.publish(LaneStatusChanged(status))

    # -- restore --------------------------------------------------------------

    def _restore(self) -> None:
        """Rebuild queues from the store; the outcome is independent of row order."""
        for job_id, pgid, identity in self.store.take_processes():
            if kill_orphan_group(pgid, identity):
                self.logs.append(job_id, f"killed process group {pgid} left by the previous run")
        # Active rows and their prerequisites are all the rules need: the history
        # (terminal jobs nothing active depends on) stays on disk.
        stored = {job.id: job for job in self.store.load_active()}
        self._seq = self.store.max_seq()
        for job in stored.values():
            if job.status is JobStatus.RUNNING:
                _back_to_queued(job)
                self._persist(job)
                self.logs.append(job.id, "restarted: meshd stopped while this job ran")
        verdicts: dict[str, str | None] = {}
        for job in stored.values():
            _restore_verdict(job, stored, verdicts)
        for job in sorted(stored.values(), key=lambda j: j.seq):
            if job.status.terminal:
                continue
            cancel_reason = verdicts[job.id]
            if cancel_reason is not None:
                self._finish(job, Outcome.CANCELLED, cancel_reason)
                continue
            self._active[job.id] = job
        for job in sorted(self._active.values(), key=lambda j: j.seq):
            self._place(job)
        self.logs.close_all()


def _restore_verdict(
    job: Job, stored: Mapping[str, Job], verdicts: dict[str, str | None]
) -> str | None:
    """None if an active job may stay, else why it must be cancelled (memoised, recursive)."""
    if job.id in verdicts:
        return verdicts[job.id]
    verdicts[job.id] = None  # guards against a (corrupt) dependency cycle
    verdict: str | None = None
    if job.status.active and job.depends_on is not None:
        prereq = stored.get(job.depends_on)
        if prereq is None:
            verdict = f"prerequisite {job.depends_on} is missing after restart"
        elif prereq.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            verdict = f"prerequisite {prereq.type.value} {prereq.id} {prereq.status.value}"
        elif prereq.status.active and _restore_verdict(prereq, stored, verdicts) is not None:
            verdict = f"prerequisite {prereq.type.value} {prereq.id} cancelled"
    verdicts[job.id] = verdict
    return verdict


def _back_to_queued(job: Job) -> None:
    """Forget a run that did not finish; where it runs next is decided afresh."""
    job.status = JobStatus.QUEUED
    job.started_at = None
    job.progress = None
    job.runner = None
    if job.type is JobType.COMPILE:
        job.build = None
