"""The ``/api/v1`` endpoints: jobs, installs, kept builds, logs, events, status, peers
(see docs/API.md).

Handlers are thin: validate (``validation``), call the engine, answer JSON. Two
endpoints stream: a job log with ``?follow=1`` (chunked text until the job is
terminal) and ``/events`` (a websocket carrying every bus event as JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from meshd import __version__
from meshd.api.state import CLOSING_KEY, ENGINE_KEY, HOOKS_KEY, NODE_KEY, WEBSOCKETS_KEY
from meshd.api.validation import (
    CONFIG_RULES_KEY,
    INSTALL,
    ApiError,
    JobRequest,
    bad_request,
    parse_installs_request,
    parse_job_request,
    query_bool,
    query_int,
    read_json,
    resolve_path,
)
from meshd.api.wire import EVENTS_HEARTBEAT
from meshd.jobs.engine import (
    Engine,
    EngineStopped,
    InstallSpec,
    InvalidJob,
    StorageUnavailable,
    UnknownJob,
)
from meshd.jobs.events import Event, JobEvent
from meshd.jobs.model import Job, JobStatus, JobType, LaneName

_LOGGER = logging.getLogger(__name__)

# A follower with nothing new re-checks the job this often even without an event, so
# a missed wake-up (e.g. a job finished by a restore) cannot hang it.
FOLLOW_POLL_SECONDS = 1.0
# Read the log in blocks; a compile log can run to megabytes.
LOG_CHUNK = 64 * 1024
# Websocket pings (every EVENTS_HEARTBEAT) keep NAT/proxies from dropping an idle
# events stream and detect a vanished client.
# Close code for a subscriber that fell behind: "try again later" (RFC 6455 1013).
WS_OVERFLOW_CLOSE = 1013
# ``GET /jobs`` without ``limit``: the newest page. A fleet update is ~200 jobs, and the
# JSON of 200 jobs is ~150 KiB: quick for a Pi to serve and a CLI to render.
DEFAULT_PAGE = 200
MAX_PAGE = 1000
# ``limit=0`` (as clients before paging sent for "all"): the whole retained history,
# which the history limits bound; served by the same range scan.
_ALL = 10**9


def _engine(request: web.Request) -> Engine:
    return request.app[ENGINE_KEY]


def _job(request: web.Request) -> Job:
    job_id = request.match_info["job_id"]
    try:
        return _engine(request).get(job_id)
    except UnknownJob:
        raise ApiError(404, "unknown_job", f"no job with id {job_id!r}", id=job_id) from None


# -- status and peers --------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    engine = _engine(request)
    node = request.app[NODE_KEY]
    hooks = request.app[HOOKS_KEY]
    lanes = {}
    for name in LaneName:
        lane = engine.lane_status(name).to_dict()
        lane.pop("lane", None)
        lanes[name.value] = lane
    body = {
        "node": {
            **hooks.node(),
            "name": node.name,
            "fingerprint": hooks.fingerprint(),
            "esphome_version": node.esphome_version,
            "esphome": node.esphome,
            "sandbox": node.sandbox,
            "warnings": list(node.warnings),
            "version": __version__,
            "data_dir": node.data_dir,
            "compile_cache": node.compile_cache,
        },
        "lanes": lanes,
        "peers": hooks.peers(),
    }
    return web.json_response(body)


async def peers(request: web.Request) -> web.Response:
    return web.json_response({"peers": request.app[HOOKS_KEY].peers()})


# -- jobs --------------------------------------------------------------------------


def _status_filter(raw: str | None) -> set[JobStatus] | None:
    if not raw:
        return None
    wanted: set[JobStatus] = set()
    for part in raw.split(","):
        if part == "active":
            wanted |= {JobStatus.QUEUED, JobStatus.RUNNING}
            continue
        try:
            wanted.add(JobStatus(part))
        except ValueError:
            choices = ", ".join(["active", *(s.value for s in JobStatus)])
            raise bad_request(
                "invalid_query", f"unknown status {part!r} (one of: {choices})", field="status"
            ) from None
    return wanted


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    if request.query.get(name) is None:
        return default
    raw = request.query[name]
    value = query_int(request, name, default)  # ASCII digits only ("²" is isdigit())
    if not low <= value <= high:
        raise bad_request(
            "invalid_query",
            f"{name} must be a whole number from {low} to {high}, not {raw!r}",
            field=name,
        )
    return value


async def list_jobs(request: web.Request) -> web.Response:
    """One page of jobs, oldest first; ``next_before`` is the cursor of the older page."""
    wanted = _status_filter(request.query.get("status"))
    limit = _query_int(request, "limit", DEFAULT_PAGE, 0, MAX_PAGE)
    before = _query_int(request, "before", 0, 1, 2**63 - 1) or None
    page = _engine(request).page(limit=limit or _ALL, before=before, statuses=wanted)
    return web.json_response(
        {"jobs": [job.to_dict() for job in page.jobs], "next_before": page.next_before}
    )


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_job(request).to_dict())


async def create_job(request: web.Request) -> web.Response:
    body = await read_json(request)
    # File checks read the disk; keep the loop free for streams and the watchdog.
    job_request = await asyncio.to_thread(parse_job_request, body, request.app[CONFIG_RULES_KEY])
    engine = _engine(request)
    await _check_build(request, job_request)
    try:
        if job_request.kind == INSTALL:
            created = list(
                engine.install(
                    job_request.configuration,
                    job_request.device,
                    options=job_request.options,
                    upload_options=job_request.upload_options,
                )
            )
        else:
            created = [
                engine.submit(
                    JobType(job_request.kind),
                    job_request.configuration,
                    job_request.device,
                    options=job_request.options,
                )
            ]
    except InvalidJob as exc:
        raise bad_request("invalid_job", str(exc)) from None
    except EngineStopped as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None
    except StorageUnavailable as exc:
        raise ApiError(507, "no_space", str(exc)) from None
    return web.json_response({"jobs": [job.to_dict() for job in created]}, status=201)


async def _check_build(request: web.Request, job_request: JobRequest) -> None:
    """An upload of a kept build names one that exists (else a 400 now, not a failed job)."""
    build = job_request.options.build
    if build is None:
        return
    kept = await asyncio.to_thread(request.app[HOOKS_KEY].builds, job_request.configuration)
    if not any(entry.get("build_id") == build for entry in kept):
        raise bad_request(
            "unknown_build",
            f"no kept build {build!r} of {job_request.configuration} "
            "(meshd artifacts CONFIG lists them)",
            field="build",
        )


async def create_installs(request: web.Request) -> web.Response:
    """Many install chains in one request: all are queued, or none (docs/API.md)."""
    body = await read_json(request)
    requests = await asyncio.to_thread(parse_installs_request, body, request.app[CONFIG_RULES_KEY])
    specs = [InstallSpec(r.configuration, r.device, r.options, r.upload_options) for r in requests]
    try:
        chains = _engine(request).install_many(specs)
    except InvalidJob as exc:
        raise bad_request("invalid_job", str(exc)) from None
    except EngineStopped as exc:
        raise ApiError(503, "shutting_down", str(exc)) from None
    return web.json_response(
        {
            "installs": [
                {
                    "configuration": compile_job.configuration,
                    "compile": compile_job.to_dict(),
                    "upload": upload_job.to_dict(),
                }
                for compile_job, upload_job in chains
            ],
            "jobs": [job.to_dict() for chain in chains for job in chain],
        },
        status=201,
    )


async def list_artifacts(request: web.Request) -> web.Response:
    """The kept builds of ``?configuration=PATH`` (with ``&cwd=`` for a relative path)."""
    raw = request.query.get("configuration", "")
    if not raw:
        raise bad_request("invalid_query", "configuration is required", field="configuration")
    config = str(resolve_path(raw, request.query.get("cwd") or None))
    builds = await asyncio.to_thread(request.app[HOOKS_KEY].builds, config)
    return web.json_response({"configuration": config, "builds": builds})


async def cancel_job(request: web.Request) -> web.Response:
    job = _job(request)
    cancelled = await _engine(request).cancel(job.id)
    return web.json_response(cancelled.to_dict())


# -- logs --------------------------------------------------------------------------


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(LOG_CHUNK)
    except FileNotFoundError:
        return b""


async def job_log(request: web.Request) -> web.StreamResponse:
    """The job's log as text; with ``?follow=1`` kept open until the job is terminal."""
    job = _job(request)
    engine = _engine(request)
    follow = query_bool(request, "follow")
    path = engine.logs.path(job.id)
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    offset = 0
    async for chunk in _log_chunks(request, engine, job.id, path, follow):
        offset += len(chunk)
        await response.write(chunk)
    await response.write_eof()
    return response


async def _log_chunks(
    request: web.Request, engine: Engine, job_id: str, path: Path, follow: bool
) -> AsyncIterator[bytes]:
    """Whole lines of the log file, as they are appended while following.

    The engine writes a job's final line before it announces the terminal status, so
    reading to the end after seeing a terminal status loses nothing.
    """
    wake = asyncio.Event()

    def on_event(event: Event) -> None:
        if isinstance(event, JobEvent) and event.job.id == job_id:
            wake.set()

    closing = request.app[CLOSING_KEY]
    remove = engine.bus.add_listener(on_event)
    offset = 0
    try:
        while True:
            wake.clear()
            finished = not follow or engine.get(job_id).status.terminal
            while chunk := await asyncio.to_thread(_read_from, path, offset):
                # Only whole lines: a line being written is sent once it is complete.
                cut = chunk.rfind(b"\n") + 1 if not finished else len(chunk)
                if cut == 0:
                    break
                offset += cut
                yield chunk[:cut]
            if finished or closing.is_set():
                return
            waiter = asyncio.ensure_future(wake.wait())
            closer = asyncio.ensure_future(closing.wait())
            try:
                await asyncio.wait(
                    {waiter, closer},
                    timeout=FOLLOW_POLL_SECONDS,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
                closer.cancel()
    finally:
        remove()


# -- events ------------------------------------------------------------------------


async def events_ws(request: web.Request) -> web.WebSocketResponse:
    """Every job and lane event as one JSON text message each."""
    engine = _engine(request)
    # Subscribe before the handshake completes: a client that connects and then
    # submits a job must see that job's first event.
    subscription = engine.bus.subscribe()
    ws = web.WebSocketResponse(heartbeat=EVENTS_HEARTBEAT)
    sockets = request.app[WEBSOCKETS_KEY]
    try:
        await ws.prepare(request)
        sockets.add(ws)
        reader = asyncio.create_task(_drain_client(ws, subscription.close))
        try:
            while (event := await subscription.get()) is not None:
                await ws.send_str(event.wire_text)
            if subscription.overflowed:
                await ws.send_json({"type": "overflow", "message": "client fell behind; reconnect"})
                await ws.close(code=WS_OVERFLOW_CLOSE, message=b"fell behind")
        except ConnectionResetError:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    finally:
        subscription.close()
        sockets.discard(ws)
        if not ws.closed:
            await ws.close()
    return ws


async def _drain_client(ws: web.WebSocketResponse, on_close: Any) -> None:
    """Read (and ignore) client messages so close frames are seen; end the stream then."""
    try:
        async for message in ws:
            if message.type is WSMsgType.ERROR:
                break
    finally:
        on_close()


def routes(prefix: str) -> list[web.AbstractRouteDef]:
    return [
        web.get(f"{prefix}/status", status),
        web.get(f"{prefix}/peers", peers),
        web.get(f"{prefix}/jobs", list_jobs),
        web.post(f"{prefix}/jobs", create_job),
        web.post(f"{prefix}/installs", create_installs),
        web.get(f"{prefix}/artifacts", list_artifacts),
        web.get(f"{prefix}/jobs/{{job_id}}", get_job),
        web.post(f"{prefix}/jobs/{{job_id}}/cancel", cancel_job),
        web.get(f"{prefix}/jobs/{{job_id}}/log", job_log),
        web.get(f"{prefix}/events", events_ws),
    ]
