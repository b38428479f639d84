"""``/api/v1``: the dispatcher's REST API (described by ``/api/v1/openapi.json``)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from aiohttp import web

from .. import __version__, models
from ..errors import InvalidRequest, LeaseConflict, NotFound
from ..store import Outcome, Store
from .app import app_state
from .feeds import Feed, Hub, run_feed
from .http import (field, integer, json_response, leases, number, query_float, query_int, query_str,
                   read_json, read_object)
from .openapi import OPENAPI

MAX_TRACEBACK = 64 * 1024
BACKSTOP = 5.0   # longest sleep of a long-poll between checks, should an event be missed


# ---------------------------------------------------------------------------- helpers

def job_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not value or len(value) > 64:
        raise InvalidRequest("id: not a job id", field="id")
    return value


async def claim_wait(store: Store, hub: Hub, queues: list[str], worker: str, limit: int,
                     lease: float, wait: float, request: web.Request | None = None) -> list[dict[str, Any]]:
    """Claim, or wait up to ``wait`` seconds for a job to become ready and claim it.

    The waiter is registered before each claim, so an enqueue between an empty claim and the
    wait still wakes it. Jobs delayed into the future wake it at their ``run_at``.

    A job already due that the claim did not take is claimed again once at once (it may have
    become due meanwhile); if it is still there, its queue is paused, and only an event (resume,
    new job) is worth waking for. Queues are looked at one by one so that a paused queue's due
    jobs neither make the wait spin nor hide another queue's delayed job.

    Once the client of ``request`` has disconnected, it stops without claiming: a job leased to
    a client that is gone would sit out its lease, and use up an attempt, before running.
    """
    deadline = time.monotonic() + wait
    retried: set[tuple[str, float]] = set()
    while True:
        with hub.wait_queues(queues) as waiter:
            if request is not None and client_gone(request):
                return []
            jobs = await store.claim(queues, worker, limit, lease)
            if jobs:
                return jobs
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            timeout = min(remaining, BACKSTOP)
            now = models.now()
            for queue in queues:
                next_at = await store.next_run_at([queue])
                if next_at is None:
                    continue
                if next_at > now:
                    timeout = min(timeout, next_at - now + 0.001)
                elif (queue, next_at) not in retried:
                    retried.add((queue, next_at))
                    timeout = 0.0
            if timeout > 0:
                await waiter.wait(timeout)


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def parse_error(value: Any) -> dict[str, Any]:
    if value is None:
        return models.error_doc("Error", "the job failed")
    if isinstance(value, str):
        return models.error_doc("Error", value[:MAX_TRACEBACK])
    if not isinstance(value, dict):
        raise InvalidRequest("error: must be an object with type, message and traceback", field="error")
    exc_type = field(value, "type", str, required=False, default="Error")
    message = field(value, "message", str, required=False, default="")
    traceback = field(value, "traceback", str, required=False)
    return models.error_doc(exc_type[:256], message[:MAX_TRACEBACK], traceback[-MAX_TRACEBACK:] if traceback else None)


def parse_outcome(item: Any, job: str | None = None, status: str | None = None) -> Outcome:
    if not isinstance(item, dict):
        raise InvalidRequest("each outcome must be an object with id, lease and status")
    status = status or field(item, "status", str)
    if status not in (models.FINISHED, models.FAILED):
        raise InvalidRequest("status: must be 'finished' or 'failed'", field="status")
    outcome = Outcome(id=job or field(item, "id", str), lease=field(item, "lease", str), status=status,
                      retry=field(item, "retry", bool, required=False, default=True))
    if status == models.FINISHED:
        outcome.result = item.get("result")
    else:
        outcome.error = parse_error(item.get("error"))
    return outcome


def single(results: list[dict[str, Any]]) -> web.Response:
    """The answer for one fenced item: the job, or its conflict as a 4xx."""
    (result,) = results
    if result["ok"]:
        return json_response(result.get("job", result))
    error = result["error"]
    status = 404 if error["code"] == "job_not_found" else 409
    return json_response({"error": {**error, "id": result["id"]}}, status)


def queues_param(body: dict[str, Any]) -> list[str]:
    raw = body.get("queues", body.get("queue"))
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("queue: one queue name or a list of them is required", field="queue")
    if len(raw) > 100:
        raise InvalidRequest("queues: at most 100 queues", field="queues")
    return [models.check_queue(q) for q in raw]


def worker_param(body: dict[str, Any]) -> str:
    worker = field(body, "worker", str, required=False, default="anonymous")
    if not worker or len(worker) > 200:
        raise InvalidRequest("worker: a string of 1-200 characters is required", field="worker")
    return worker


# ---------------------------------------------------------------------------- jobs

async def create_jobs(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_json(request)
    jobs, batch = models.parse_jobs(body)
    results = await store.enqueue(jobs)
    created = any(was_created for _, was_created in results)
    status = 201 if created else 200
    if batch:
        return json_response({"jobs": [job for job, _ in results]}, status)
    return json_response(results[0][0], status)


async def list_jobs(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    queue = query_str(request, "queue")
    if queue is not None:
        models.check_queue(queue)
    jobs = await store.list_jobs(queue=queue, status=query_str(request, "status"), method=query_str(request, "method"),
                                 limit=query_int(request, "limit", 100, minimum=1, maximum=1000),
                                 before=query_str(request, "before"))
    return json_response({"jobs": jobs, "next": jobs[-1]["id"] if jobs else None})


async def get_job(request: web.Request) -> web.Response:
    store, settings, hub = app_state(request)
    ident = job_id(request)
    wait = query_float(request, "wait", 0.0, minimum=0.0, maximum=settings.max_wait)
    deadline = time.monotonic() + wait
    while True:
        with hub.wait_job(ident) as waiter:
            job = await store.get(ident)
            remaining = deadline - time.monotonic()
            if job["status"] in models.TERMINAL or remaining <= 0:
                return json_response(job)
            await waiter.wait(min(remaining, BACKSTOP))


async def patch_job(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    data = field(body, "data", dict)
    lease = field(body, "lease", str, required=False)
    return json_response(await store.update_data(job_id(request), data, lease))


async def abort_job(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    return json_response(await store.abort(job_id(request)))


async def job_executions(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    ident = job_id(request)
    with_logs = (query_str(request, "logs") or "false").lower()
    if with_logs not in ("true", "false", "1", "0"):
        raise InvalidRequest("logs: must be true or false", field="logs")
    executions = await store.executions(ident)
    if with_logs in ("true", "1"):
        lines = await store.logs(ident, 0, 10_000)
        for execution in executions:
            execution["logs"] = [line for line in lines if line["attempt"] == execution["attempt"]]
    return json_response(executions)


async def job_logs(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    since = query_int(request, "since", 0, minimum=0, maximum=2**62)
    limit = query_int(request, "limit", 1000, minimum=1, maximum=10_000)
    return json_response(await store.logs(job_id(request), since, limit))


async def retry_job(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    return json_response(await store.retry(job_id(request)))


MAX_LINE = 64 * 1024


async def post_logs(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    items = field(body, "lines", list)
    if len(items) > models.MAX_BATCH:
        raise InvalidRequest(f"lines: at most {models.MAX_BATCH} per request", field="lines")
    lines = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"lines[{index}]: must be an object", field="lines")
        lines.append({"job_id": field(item, "job_id", str), "attempt": integer(item, "attempt", 1, minimum=0, maximum=10**6),
                      "stream": field(item, "stream", str), "line": field(item, "line", str)[:MAX_LINE],
                      "ts": number(item, "ts", models.now(), minimum=0, maximum=2**40)})
    return json_response({"stored": await store.append_logs(lines)})


async def job_complete(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    return single(await store.complete([parse_outcome(body, job_id(request), models.FINISHED)]))


async def job_fail(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    return single(await store.complete([parse_outcome(body, job_id(request), models.FAILED)]))


async def job_heartbeat(request: web.Request) -> web.Response:
    store, settings, _ = app_state(request)
    body = await read_object(request)
    lease = field(body, "lease", str)
    seconds = number(body, "extend", settings.lease, minimum=0.001, maximum=24 * 3600)
    ident = job_id(request)
    await store.get(ident)   # 404 for an unknown job, 409 for a stale lease
    return single(await store.heartbeat([(ident, lease)], seconds, field(body, "worker", str, required=False)))


async def job_release(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    ident = job_id(request)
    await store.get(ident)
    return single(await store.release([(ident, field(body, "lease", str))]))


# ---------------------------------------------------------------------------- workers

async def claim(request: web.Request) -> web.Response:
    store, settings, hub = app_state(request)
    body = await read_object(request)
    queues = queues_param(body)
    limit = integer(body, "limit", 1, minimum=1, maximum=1000)
    wait = number(body, "wait", 0.0, minimum=0.0, maximum=settings.max_wait)
    lease = number(body, "lease", settings.lease, minimum=0.01, maximum=24 * 3600)
    jobs = await claim_wait(store, hub, queues, worker_param(body), limit, lease, wait, request)
    return json_response({"jobs": jobs, "lease_seconds": lease})


async def complete_batch(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    items = field(body, "outcomes", list)
    if len(items) > models.MAX_BATCH:
        raise InvalidRequest(f"outcomes: at most {models.MAX_BATCH} items", field="outcomes")
    outcomes = [parse_outcome(item) for item in items]
    results = await store.complete(outcomes)
    if not body.get("documents", True):
        results = [{k: v for k, v in r.items() if k != "job"} for r in results]
    return json_response({"results": results})


async def heartbeat_batch(request: web.Request) -> web.Response:
    """Extend leases; with ``info`` also refresh the worker's registry entry. The answer
    carries the command left for the worker (``"stop"``), if any."""
    store, settings, _ = app_state(request)
    body = await read_object(request)
    items = leases(body) if body.get("leases") is not None else []
    seconds = number(body, "extend", settings.lease, minimum=0.001, maximum=24 * 3600)
    worker = field(body, "worker", str, required=False)
    info = field(body, "info", dict, required=False)
    answer: dict[str, Any] = {"results": await store.heartbeat(items, seconds, worker), "lease_seconds": seconds}
    if worker is not None:
        if info is not None:
            registered = await store.register_worker(worker_info({**info, "id": worker}))
            answer["command"] = registered.get("command")
        else:
            with contextlib.suppress(NotFound):
                answer["command"] = (await store.worker(worker)).get("command")
    return json_response(answer)


async def release_batch(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    results = await store.release(leases(body))
    return json_response({"results": [{k: v for k, v in r.items() if k != "job"} for r in results]})


WORKER_FIELDS = {"id": str, "host": str, "pid": int, "queues": list, "functions": list, "concurrency": int,
                 "version": str, "status": str, "jobs_done": int, "jobs_failed": int, "current": list,
                 "cpu_seconds": (int, float), "rss_bytes": int}
WORKER_STATUSES = ("running", "stopping", "stopped")


def worker_info(body: dict[str, Any]) -> dict[str, Any]:
    """A worker's registry entry from a request body, checked field by field."""
    info = {name: field(body, name, kind, required=name == "id") for name, kind in WORKER_FIELDS.items()}
    if not 1 <= len(info["id"]) <= 200:
        raise InvalidRequest("id: a string of 1-200 characters is required", field="id")
    for name in ("queues", "functions", "current"):
        if info[name] is not None and not all(isinstance(x, str) for x in info[name]):
            raise InvalidRequest(f"{name}: must be a list of strings", field=name)
    if info["status"] is not None and info["status"] not in WORKER_STATUSES:
        raise InvalidRequest(f"status: must be one of {', '.join(WORKER_STATUSES)}", field="status")
    return {k: v for k, v in info.items() if v is not None}


async def register_worker(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    return json_response(await store.register_worker(worker_info(body)), 201)


async def stop_worker(request: web.Request) -> web.Response:
    """Ask a worker to drain: stop claiming, finish or release its jobs, exit."""
    store, _, _ = app_state(request)
    ident = request.match_info["id"]
    if not 1 <= len(ident) <= 200:
        raise InvalidRequest("id: not a worker id", field="id")
    return json_response(await store.command_worker(ident, "stop"))


async def list_workers(request: web.Request) -> web.Response:
    store, settings, _ = app_state(request)
    now = models.now()
    workers = await store.workers()
    for worker in workers:
        if worker.get("status") != "stopped":
            worker["status"] = "alive" if now - worker["last_seen"] <= settings.worker_timeout else "dead"
    return json_response({"workers": workers})


# ---------------------------------------------------------------------------- queues

def queue_name(request: web.Request) -> str:
    return models.check_queue(request.match_info["name"], "name")


async def list_queues(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    return json_response({"queues": await store.queues()})


async def put_queue(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request, allow_empty=True)
    paused = field(body, "paused", bool, required=False)
    return json_response(await store.set_queue(queue_name(request), paused=paused))


async def pause_queue(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    return json_response(await store.set_queue(queue_name(request), paused=True))


async def resume_queue(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    return json_response(await store.set_queue(queue_name(request), paused=False))


# ---------------------------------------------------------------------------- events, docs

async def events(request: web.Request) -> web.StreamResponse:
    store, settings, hub = app_state(request)
    queue = query_str(request, "queue")
    if queue is not None:
        models.check_queue(queue)
    ident = query_str(request, "job") or query_str(request, "job_id")
    kinds_raw = query_str(request, "kind")
    kinds = set(kinds_raw.split(",")) if kinds_raw else None
    since_raw = query_str(request, "since")
    since = query_int(request, "since", 0, minimum=0, maximum=2**62) if since_raw is not None else None
    if request.headers.get("Upgrade", "").lower() == "websocket":
        initial = (query_str(request, "initial") or "false").lower()
        if initial not in ("true", "false", "1", "0"):
            raise InvalidRequest("initial: must be true or false", field="initial")
        return await run_feed(request, hub, Feed(queue=queue, job_id=ident, kinds=kinds), since, documents_only=False,
                              initial=initial in ("true", "1"))
    limit = query_int(request, "limit", 1000, minimum=1, maximum=10_000)
    wait = query_float(request, "wait", 0.0, minimum=0.0, maximum=settings.max_wait)
    cursor = since if since is not None else await store.last_seq()
    deadline = time.monotonic() + wait
    while True:
        feed = Feed(queue=queue, job_id=ident, kinds=kinds)
        feed.last_seq = cursor
        hub.feeds.add(feed)   # before the read: an event committed meanwhile still wakes us
        try:
            page = await store.events_since(cursor, limit, queue=queue, job_id=ident)
            found = [e for e in page if kinds is None or e["kind"] in kinds]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or len(page) == limit:
                last = page[-1]["seq"] if page else cursor
                return json_response(found, headers={"X-Last-Seq": str(last)})
            await feed.next_batch(min(remaining, BACKSTOP))
        finally:
            hub.feeds.discard(feed)


async def stats(request: web.Request) -> web.Response:
    store, settings, _ = app_state(request)
    window = query_float(request, "window", 300.0, minimum=1.0, maximum=7 * 86400)
    answer = await store.stats(window)
    now = models.now()
    workers = await store.workers()
    answer["workers"] = {"alive": sum(1 for w in workers if w.get("status") != "stopped"
                                      and now - w["last_seen"] <= settings.worker_timeout),
                         "total": len(workers)}
    answer["throughput"] = answer["finished"] / window
    return json_response(answer)


async def prune(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    older_than = number(body, "older_than", 0.0, minimum=0.0, maximum=100 * 365 * 86400)
    if "older_than" not in body:
        raise InvalidRequest("older_than: is required (seconds)", field="older_than")
    return json_response({"deleted": await store.prune(older_than)})


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


async def health(request: web.Request) -> web.Response:
    store, _, hub = app_state(request)
    return json_response({"ok": True, "version": __version__, "store": store.scheme, "events_seen": hub.events_seen})


ROUTES = [
    ("POST", "/api/v1/jobs", create_jobs),
    ("GET", "/api/v1/jobs", list_jobs),
    ("GET", "/api/v1/jobs/{id}", get_job),
    ("PATCH", "/api/v1/jobs/{id}", patch_job),
    ("POST", "/api/v1/jobs/{id}/abort", abort_job),
    ("POST", "/api/v1/jobs/{id}/retry", retry_job),
    ("GET", "/api/v1/jobs/{id}/executions", job_executions),
    ("GET", "/api/v1/jobs/{id}/logs", job_logs),
    ("POST", "/api/v1/logs", post_logs),
    ("POST", "/api/v1/jobs/{id}/complete", job_complete),
    ("POST", "/api/v1/jobs/{id}/fail", job_fail),
    ("POST", "/api/v1/jobs/{id}/heartbeat", job_heartbeat),
    ("POST", "/api/v1/jobs/{id}/release", job_release),
    ("POST", "/api/v1/claim", claim),
    ("POST", "/api/v1/complete", complete_batch),
    ("POST", "/api/v1/heartbeat", heartbeat_batch),
    ("POST", "/api/v1/release", release_batch),
    ("GET", "/api/v1/queues", list_queues),
    ("PUT", "/api/v1/queues/{name}", put_queue),
    ("POST", "/api/v1/queues/{name}/pause", pause_queue),
    ("POST", "/api/v1/queues/{name}/resume", resume_queue),
    ("POST", "/api/v1/workers", register_worker),
    ("GET", "/api/v1/workers", list_workers),
    ("POST", "/api/v1/workers/{id}/stop", stop_worker),
    ("GET", "/api/v1/stats", stats),
    ("POST", "/api/v1/prune", prune),
    ("GET", "/api/v1/events", events),
    ("GET", "/api/v1/openapi.json", openapi),
    ("GET", "/api/v1/health", health),
]

__all__ = ["ROUTES", "claim_wait", "LeaseConflict"]
