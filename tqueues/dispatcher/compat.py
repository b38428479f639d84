"""The TQueues (2016) root API, kept working for its clients.

``GET /?queue=q`` claims (blocks until a job, 404 to retry), ``POST /`` creates (form or
JSON), ``PUT /?queue=q`` creates a queue, ``PATCH /?queue=q&id=x`` updates the job's data,
``DELETE /?queue=q&id=x`` marks it finished and ``GET /ws?queue=q`` streams ``new_val``
documents. Unlike TQueues, claims are atomic and leased: a compat worker that dies has its job
requeued when the lease expires.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import models
from ..errors import InvalidRequest, JobNotFound, NoJobAvailable
from ..store import Outcome
from .app import app_state
from .feeds import Feed, run_feed
from .http import field, is_form, json_response, query_float, query_str, read_form_job, read_object
from .auth import principal_of, require_lease, require_queue
from .views import check_enqueue, claim_wait, enqueue_jobs, single


def _queue(request: web.Request) -> str:
    queue = models.check_queue(query_str(request, "queue", required=True))
    require_queue(request, queue)
    return queue


async def _job_in_queue(request: web.Request) -> dict[str, Any]:
    store, _, _ = app_state(request)
    queue = _queue(request)
    ident = query_str(request, "id", required=True)
    assert ident is not None
    job = await store.get(ident)
    if job["queue"] != queue:
        raise JobNotFound(f"no job {ident!r} in queue {queue!r}", id=ident)
    return job


async def root_get(request: web.Request) -> web.Response:
    store, settings, hub = app_state(request)
    if "queue" not in request.query:
        raise InvalidRequest("queue: the query parameter is required (GET /?queue=NAME claims a job)", field="queue")
    queue = _queue(request)
    wait = query_float(request, "wait", settings.compat_wait, minimum=0.0, maximum=settings.max_wait)
    worker = query_str(request, "worker") or "tqueues-compat"
    jobs = await claim_wait(store, hub, [queue], worker, 1, settings.lease, wait, request,
                            principal_of(request).lease_prefix)
    if not jobs:
        raise NoJobAvailable(f"no job available in queue {queue!r}; retry later", queue=queue)
    return json_response(jobs[0])


async def root_post(request: web.Request) -> web.Response:
    body = await read_form_job(request) if is_form(request) else await read_object(request)
    jobs, _ = models.parse_jobs(body, default_queue=query_str(request, "queue"))
    await check_enqueue(request, jobs)
    ((job, _created),) = await enqueue_jobs(request, jobs)
    return json_response(models.public_job(job))


async def root_put(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    queue = await store.set_queue(_queue(request))
    return json_response({"ok": True, "queue": queue})


async def root_patch(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    job = await _job_in_queue(request)
    body = await read_object(request)
    lease = field(body, "lease", str, required=False) or query_str(request, "lease")
    if set(body) - {"lease"} == {"data"}:
        data = field(body, "data", dict)
    else:
        data = {k: v for k, v in body.items() if k != "lease"}
    if not data:
        raise InvalidRequest("the body holds no field to update")
    require_lease(request, lease)
    return json_response(models.public_job(await store.update_data(job["id"], data, lease)))


async def root_delete(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    job = await _job_in_queue(request)
    lease = query_str(request, "lease")
    require_lease(request, lease)   # with --auth a worker finishes only what it was handed
    return single(await store.complete([Outcome(id=job["id"], lease=lease, status=models.FINISHED)]))


async def root_ws(request: web.Request) -> web.StreamResponse:
    _, _, hub = app_state(request)
    queue = _queue(request)
    return await run_feed(request, hub, Feed(queue=queue, kinds=set(models.JOB_KINDS)), since=None, documents_only=True)


ROUTES = [
    ("GET", "/", root_get),
    ("POST", "/", root_post),
    ("PUT", "/", root_put),
    ("PATCH", "/", root_patch),
    ("DELETE", "/", root_delete),
    ("GET", "/ws", root_ws),
]
