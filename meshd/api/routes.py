"""The ``/api/v1`` endpoints: jobs, logs, events, status, peers (see docs/API.md).

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
    bad_request,
    parse_job_request,
    query_bool,
    query_int,
    read_json,
)
from meshd.api.wire import EVENTS_HEARTBEAT
from meshd.jobs.engine import Engine, EngineStopped, InvalidJob, StorageUnavailable, UnknownJob
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
            "version": __version__,
            "data_dir": node.data_dir,
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


async def list_jobs(request: web.Request) -> web.Response:
    wanted = _status_filter(request.query.get("status"))
    limit = query_int(request, "limit", 0)
    jobs = [job for job in _engine(request).jobs() if wanted is None or job.status in wanted]
    if limit:
        jobs = jobs[-limit:]
    return web.json_response({"jobs": [job.to_dict() for job in jobs]})


async def get_job(request: web.Request) -> web.Response:
    return web.json_response(_job(request).to_dict())


async def create_job(request: web.Request) -> web.Response:
    body = await read_json(request)
    # File checks read the disk; keep the loop free for streams and the watchdog.
    job_request = await asyncio.to_thread(parse_job_request, body, request.app[CONFIG_RULES_KEY])
    engine = _engine(request)
    try:
        if job_request.kind == INSTALL:
            assert job_request.device is not None
            created = list(
                engine.install(
                    job_request.configuration, job_request.device, options=job_request.options
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
                await ws.send_json(event.to_wire())
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
        web.get(f"{prefix}/jobs/{{job_id}}", get_job),
        web.post(f"{prefix}/jobs/{{job_id}}/cancel", cancel_job),
        web.get(f"{prefix}/jobs/{{job_id}}/log", job_log),
        web.get(f"{prefix}/events", events_ws),
    ]
