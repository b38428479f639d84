"""``GET /api/v1/enqueue``: a websocket that enqueues, for producers that send one job at a time.

An HTTP request per job costs a request's parsing, middlewares and headers on both sides; over
one open websocket an enqueue is one small frame each way, and a producer may send the next job
before the last answer (answers carry the ``ref`` they answer, so they may come back in any
order). Each message is acted on exactly as ``POST /api/v1/jobs`` would, with the same checks:

    → {"ref": 1, "job": {"queue": "default", "method": "app.tasks:add", "args": [1, 2]}}
    ← {"ref": 1, "status": 201, "job": {"id": "...", "status": "pending", ...}}
    → {"ref": 2, "jobs": [{...}, {...}]}
    ← {"ref": 2, "status": 201, "jobs": [{...}, {...}]}
    → {"ref": 3, "job": {"queue": "bad name!"}}
    ← {"ref": 3, "status": 400, "error": {"code": "invalid_request", "message": "queue: ...", ...}}

The token presented when the socket opened is checked again for every message (so a revoked
token stops working here as on HTTP), with the ``submit`` scope and the rate limit per message.
A malformed message gets an error answer and the socket stays open; a message larger than
``--max-body`` closes it (1009). At most MAX_IN_FLIGHT messages of one socket are worked on at
once; beyond that the dispatcher stops reading it until answers have gone out.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import WSMsgType, web

from .. import models
from ..errors import InvalidRequest, TQueuesError
from ..tasks import start_task
from . import auth
from .app import admit, app_state, error_answer
from .views import check_enqueue, documents_param, enqueue_jobs, enqueued

log = logging.getLogger("tqueues.dispatcher.channel")

MAX_IN_FLIGHT = 256
MAX_REF = 200          # characters of a string ref
SCOPES = auth.ROUTE_SCOPES[("POST", "/api/v1/jobs")] or ()


async def enqueue_channel(request: web.Request) -> web.StreamResponse:
    _, settings, hub = app_state(request)
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise InvalidRequest("GET /api/v1/enqueue is a websocket: open it with an Upgrade: websocket request "
                             "(or POST /api/v1/jobs over plain HTTP)")
    token = auth.bearer(request.headers, request.query, True)
    ws = web.WebSocketResponse(max_msg_size=settings.max_body, heartbeat=30.0)
    await ws.prepare(request)
    hub.sockets.add(ws)
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    working: set[asyncio.Task[None]] = set()

    async def answer(data: Any) -> None:
        try:
            reply = await handle(request, token, data)
            if not ws.closed:
                await ws.send_str(models.dumps_str(reply))
        except ConnectionResetError:
            pass   # the producer left: its job is enqueued all the same, as over HTTP
        finally:
            slots.release()

    try:
        async for message in ws:
            if message.type == WSMsgType.ERROR:   # a broken frame: aiohttp is closing the socket
                break
            await slots.acquire()
            data = message.data if message.type == WSMsgType.TEXT else None
            # Started at once where asyncio can (Python 3.12+): an enqueue that commits inline
            # is answered within this turn of the loop, without a task switch.
            task = start_task(answer(data))
            working.add(task)
            task.add_done_callback(working.discard)
            if hub.closing:
                break
    finally:
        if working:
            # What was read is answered (or, once the socket is gone, still enqueued).
            await asyncio.wait(set(working), timeout=settings.max_wait)
        hub.sockets.discard(ws)
        if not ws.closed:
            await ws.close()
    return ws


async def handle(request: web.Request, token: str | None, data: Any) -> dict[str, Any]:
    """The answer to one message: the enqueued job(s), or the error a POST would have had."""
    ref: Any = None
    try:
        if not isinstance(data, str):
            raise InvalidRequest("messages must be JSON text frames")
        try:
            message = models.loads(data)
        except ValueError as exc:
            raise InvalidRequest(f"the message is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise InvalidRequest('a message is an object: {"ref": R, "job": {...}} or {"ref": R, "jobs": [...]}')
        ref = message.get("ref")
        if not (ref is None or isinstance(ref, int) and not isinstance(ref, bool)
                or isinstance(ref, str) and len(ref) <= MAX_REF):
            ref = None
            raise InvalidRequest(f"ref: an integer or a string of at most {MAX_REF} characters", field="ref")
        if ("job" in message) == ("jobs" in message):
            raise InvalidRequest('the message needs "job" (one job object) or "jobs" (a list of them), not both')
        await admit(request, token, SCOPES)   # as for one POST /api/v1/jobs
        body = message["job"] if "job" in message else {"jobs": message["jobs"]}
        jobs, batch = models.parse_jobs(body)
        documents = documents_param(message)
        await check_enqueue(request, jobs)
        results = await enqueue_jobs(request, jobs)
        status = 201 if any(created for _, created in results) else 200
        if batch:
            return {"ref": ref, "status": status, "jobs": enqueued(results, documents)}
        return {"ref": ref, "status": status, "job": models.public_job(results[0][0])}
    except TQueuesError as exc:
        status, body, headers = error_answer(exc)
        reply = {"ref": ref, "status": status, **body}
        if "Retry-After" in headers:
            reply["retry_after"] = float(headers["Retry-After"])
        return reply
    except Exception:  # noqa: BLE001 - the socket and its other messages go on
        log.exception("unhandled error on an enqueue channel message")
        return {"ref": ref, "status": 500,
                "error": {"code": "internal", "message": "the dispatcher failed on this message; see its log"}}


ROUTES = [("GET", "/api/v1/enqueue", enqueue_channel)]

__all__ = ["ROUTES", "enqueue_channel"]
