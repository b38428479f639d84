"""``/api/v1``: the dispatcher's REST API (described by ``/api/v1/openapi.json``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable

from aiohttp import web

from .. import __version__, models
from ..errors import InvalidRequest, LeaseConflict, MethodNotRegistered, NotFound
from ..loops import loop_kind
from ..store import Outcome, Store
from ..store.base import grouped
from . import auth
from .app import SETTINGS, STORE, app_state
from .auth import principal_of, require_all_queues, require_lease, require_method, require_queue, require_queues
from .feeds import Feed, Hub, Waiter, client_gone, run_feed
from .http import (batch, field, integer, json_response, leases, number, query_float, query_int, query_str,
                   read_json, read_object)
from .openapi import OPENAPI

log = logging.getLogger("tqueues.dispatcher")

MAX_TRACEBACK = 64 * 1024
BACKSTOP = 5.0   # longest sleep of a long-poll between checks, should an event be missed


# ---------------------------------------------------------------------------- helpers

def job_id(request: web.Request) -> str:
    value = request.match_info["id"]
    if not value or len(value) > 64:
        raise InvalidRequest("id: not a job id", field="id")
    return value


async def claim_wait(store: Store, hub: Hub, queues: list[str], worker: str, limit: int,
                     lease: float, wait: float, request: web.Request | None = None,
                     lease_prefix: str = "") -> list[dict[str, Any]]:
    """Claim, or wait up to ``wait`` seconds for a job to become ready and claim it.

    The waiter is registered before each claim, so an enqueue between an empty claim and the
    wait still wakes it. Jobs delayed into the future wake it at their ``run_at``.

    A job already due that the claim did not take is claimed again once at once (it may have
    become due meanwhile); if it is still there, its queue is paused, and only an event (resume,
    new job) is worth waking for. Queues are looked at one by one so that a paused queue's due
    jobs neither make the wait spin nor hide another queue's delayed job.

    Once the client of ``request`` has disconnected, it stops without claiming: a job leased to
    a client that is gone would sit out its lease, and use up an attempt, before running.

    A new job wakes one waiting claim, not all of them (the hub counts ready events). So that
    no job is left waiting, a claim passes the wake-up on to the next waiting claim whenever
    it may not have taken everything it was woken for: it was full, it was woken while it
    ran, it failed, or its client left.

    While parked, an enqueue may adopt the claim (push dispatch): it runs the claim in the same
    write as the new jobs and hands the jobs over, so they start without another transaction
    (see enqueue_jobs). Once adopted, the claim always takes what it was handed, even past its
    deadline: those jobs are leased to it.
    """
    deadline = time.monotonic() + wait
    retried: set[tuple[str, float]] = set()
    woken = False   # this claim follows a wake-up meant for someone who claims

    def claim(up_to: int = limit) -> Awaitable[list[dict[str, Any]]]:
        return store.claim(queues, worker, up_to, lease, lease_prefix)

    while True:
        with hub.wait_queues(queues) as waiter:
            waiter.claim, waiter.limit, waiter.request = claim, limit, request
            waiter.claimant = (queues, worker, lease, lease_prefix)

            def pass_on(still_wanted: bool) -> None:   # a job may wait for the next claim
                if still_wanted:
                    hub.wake_queues(queues, 1, exclude=waiter)

            if hub.closing or (request is not None and client_gone(request)):
                pass_on(woken or waiter.woken)
                return []
            try:
                jobs = await claim()
            except BaseException:
                pass_on(woken or waiter.woken)
                raise
            if jobs:
                # A full claim may have left jobs behind, and a wake-up that came during the
                # claim may be for a job it could not see yet: either way the next claim looks.
                pass_on(len(jobs) >= limit or waiter.woken)
                return jobs
            woken = False
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
                waiter.parked = True
                woken = await waiter.wait(timeout)
                waiter.parked = False
                if waiter.handoff is not None:
                    handed = await waiter.handoff
                    if handed:
                        # No pass-on: the enqueue adopted as many claims as its jobs fill,
                        # and the hub wakes others for any it did not hand over.
                        return handed
                    woken = True   # the adopting claim found nothing (or failed): look again


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
    if job is None and status is None and type(item) is dict and item.get("status") == models.FINISHED \
            and type(item.get("id")) is str and type(item.get("lease")) is str and "retry" not in item:
        # The usual outcome of a worker, checked in one go; anything else is checked field by field.
        return Outcome(id=item["id"], lease=item["lease"], status=models.FINISHED, result=item.get("result"))
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


shown = models.public_job


async def job_in_scope(request: web.Request, ident: str) -> dict[str, Any]:
    """The job, once the request's principal may see its queue (404 before 403 is fine: ids are
    random, so a 404 tells nothing)."""
    store, _, _ = app_state(request)
    job = await store.get(ident)
    require_queue(request, job["queue"])
    return job


def single(results: list[dict[str, Any]]) -> web.Response:
    """The answer for one fenced item: the job, or its conflict as a 4xx."""
    (result,) = results
    if result["ok"]:
        return json_response(shown(result["job"]) if "job" in result else result)
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
    body = await read_json(request)
    jobs, batch = models.parse_jobs(body)
    documents = documents_param(body)
    await check_enqueue(request, jobs)
    results = await enqueue_jobs(request, jobs)
    created = any(was_created for _, was_created in results)
    status = 201 if created else 200
    if batch:
        return json_response({"jobs": enqueued(results, documents)}, status)
    return json_response(shown(results[0][0]), status)


def documents_param(body: Any) -> bool:
    """``{"jobs": [...], "documents": false}``: a batch answered with ids, not whole jobs."""
    if isinstance(body, dict) and "jobs" in body and "method" not in body:
        return field(body, "documents", bool, required=False, default=True)
    return True


def enqueued(results: list[tuple[dict[str, Any], bool]], documents: bool) -> list[dict[str, Any]]:
    """A batch's answer items: each job as stored, or (``documents`` false) its id, status and
    whether it was created (false: its key matched an existing job)."""
    if documents:
        return [shown(job) for job, _ in results]
    return [{"id": job["id"], "status": job["status"], "created": created} for job, created in results]


async def enqueue_jobs(request: web.Request, jobs: list[models.NewJob]) -> list[tuple[dict[str, Any], bool]]:
    """Enqueue ``jobs``; claims parked on their queues are served in the same write (push
    dispatch): each adopted claim is submitted right after the enqueue, in the same turn of
    the loop, and stores that group writes (SQLite, PostgreSQL) commit them together, so the
    worker gets its job without a wake-up, a second transaction or a second round trip.
    Elsewhere the claim simply runs after the enqueue. A claim that finds nothing, or fails,
    tells its waiter to look again by itself."""
    store, _, hub = app_state(request)
    now = models.now()
    ready: dict[str, int] = {}
    for job in jobs:
        if job.run_at is None or job.run_at <= now:
            ready[job.queue] = ready.get(job.queue, 0) + 1
    adopted = hub.adopt(ready) if ready else []
    if not adopted:
        return await store.enqueue(jobs)
    if len(jobs) == 1 and len(adopted) == 1 and jobs[0].key is None and adopted[0].claimant is not None:
        # One job for one parked claim (an idle worker): a single write enqueues the job
        # already leased to that claim.
        return [(await _enqueue_handed(store, jobs[0], adopted[0]), True)]
    with grouped():   # the enqueue and the claims share one transaction
        enqueued = asyncio.ensure_future(store.enqueue(jobs))
        for waiter in adopted:
            task = asyncio.ensure_future(_serve_adopted(waiter))
            hub.serving.add(task)   # kept until done: the loop holds tasks only weakly
            task.add_done_callback(hub.serving.discard)
    results = await enqueued
    if any(waiter.handoff is not None and waiter.handoff.done() for waiter in adopted):
        # Committed together: the claims whose jobs were handed over are about to answer their
        # workers. One turn of the loop lets them go first, so the jobs start before the
        # producer hears back.
        await asyncio.sleep(0)
    return results


async def _enqueue_handed(store: Store, job: models.NewJob, waiter: Waiter) -> dict[str, Any]:
    handoff, claimed = waiter.handoff, None
    assert handoff is not None and waiter.claimant is not None
    queues, worker, lease, lease_prefix = waiter.claimant
    try:
        doc, claimed = await store.enqueue_and_claim(job, queues, worker, lease, lease_prefix)
    finally:
        if not handoff.done():
            handoff.set_result(claimed)   # None or []: the waiter claims again by itself
    if claimed:
        await asyncio.sleep(0)   # the worker's answer goes out before the producer's (as below)
    return doc


async def _serve_adopted(waiter: Waiter) -> None:
    handoff, jobs = waiter.handoff, None
    try:
        jobs = await waiter.claim(waiter.take)
    except Exception as exc:  # noqa: BLE001 - the waiter claims again by itself
        log.warning("claim for a parked worker failed: %s", exc)
    finally:
        if not handoff.done():
            handoff.set_result(jobs)


async def check_enqueue(request: web.Request, jobs: list[models.NewJob]) -> None:
    """The principal may use these queues and methods; strict queues take only methods a
    worker of theirs registered."""
    for queue, method in dict.fromkeys((job.queue, job.method) for job in jobs):   # each pair once, in order
        require_queue(request, queue)
        require_method(request, method)
    await request.app[STRICT_QUEUES].check(request.app, jobs)


async def list_jobs(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    queue = query_str(request, "queue")
    if queue is not None:
        models.check_queue(queue)
        require_queue(request, queue)
    else:
        require_all_queues(request, "listing jobs")
    jobs = await store.list_jobs(queue=queue, status=query_str(request, "status"), method=query_str(request, "method"),
                                 limit=query_int(request, "limit", 100, minimum=1, maximum=1000),
                                 before=query_str(request, "before"), text=query_str(request, "text"))
    return json_response({"jobs": [shown(j) for j in jobs], "next": jobs[-1]["id"] if jobs else None})


async def get_job(request: web.Request) -> web.Response:
    store, settings, hub = app_state(request)
    ident = job_id(request)
    wait = query_float(request, "wait", 0.0, minimum=0.0, maximum=settings.max_wait)
    deadline = time.monotonic() + wait
    while True:
        with hub.wait_job(ident) as waiter:
            job = await job_in_scope(request, ident)
            remaining = deadline - time.monotonic()
            if job["status"] in models.TERMINAL or remaining <= 0 or hub.closing:
                return json_response(shown(job))
            await waiter.wait(min(remaining, BACKSTOP))


async def patch_job(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    data = field(body, "data", dict)
    lease = field(body, "lease", str, required=False)
    ident = job_id(request)
    await job_in_scope(request, ident)
    require_lease(request, lease)
    return json_response(shown(await store.update_data(ident, data, lease)))


async def abort_job(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    ident = job_id(request)
    await job_in_scope(request, ident)
    return json_response(shown(await store.abort(ident)))


async def job_executions(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    ident = job_id(request)
    with_logs = (query_str(request, "logs") or "false").lower()
    if with_logs not in ("true", "false", "1", "0"):
        raise InvalidRequest("logs: must be true or false", field="logs")
    await job_in_scope(request, ident)
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
    ident = job_id(request)
    await job_in_scope(request, ident)
    return json_response(await store.logs(ident, since, limit))


async def retry_job(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    ident = job_id(request)
    await job_in_scope(request, ident)
    return json_response(shown(await store.retry(ident)))


MAX_LINE = 64 * 1024


async def post_logs(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    items = batch(body, "lines")
    lines = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest(f"lines[{index}]: must be an object", field="lines")
        lines.append({"job_id": field(item, "job_id", str), "attempt": integer(item, "attempt", 1, minimum=0, maximum=10**6),
                      "stream": field(item, "stream", str), "line": field(item, "line", str)[:MAX_LINE],
                      "ts": number(item, "ts", models.now(), minimum=0, maximum=2**40)})
        require_lease(request, field(item, "lease", str, required=False))   # only lines of one's own jobs
    return json_response({"stored": await store.append_logs(lines)})


async def job_complete(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    outcome = parse_outcome(body, job_id(request), models.FINISHED)
    require_lease(request, outcome.lease)
    return single(await store.complete([outcome]))


async def job_fail(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    outcome = parse_outcome(body, job_id(request), models.FAILED)
    require_lease(request, outcome.lease)
    return single(await store.complete([outcome]))


async def job_heartbeat(request: web.Request) -> web.Response:
    store, settings, _ = app_state(request)
    body = await read_object(request)
    lease = field(body, "lease", str)
    seconds = number(body, "extend", settings.lease, minimum=0.001, maximum=24 * 3600)
    ident = job_id(request)
    require_lease(request, lease)
    await store.get(ident)   # 404 for an unknown job, 409 for a stale lease
    return single(await store.heartbeat([(ident, lease)], seconds, field(body, "worker", str, required=False)))


async def job_release(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    ident = job_id(request)
    lease = field(body, "lease", str)
    require_lease(request, lease)
    await store.get(ident)
    return single(await store.release([(ident, lease)]))


# ---------------------------------------------------------------------------- workers

async def claim(request: web.Request) -> web.Response:
    store, settings, hub = app_state(request)
    body = await read_object(request)
    queues = queues_param(body)
    limit = integer(body, "limit", 1, minimum=1, maximum=models.MAX_CLAIM)
    wait = number(body, "wait", 0.0, minimum=0.0, maximum=settings.max_wait)
    lease = number(body, "lease", settings.lease, minimum=0.01, maximum=24 * 3600)
    require_queues(request, queues)
    jobs = await claim_wait(store, hub, queues, worker_param(body), limit, lease, wait, request,
                            principal_of(request).lease_prefix)
    if jobs and client_gone(request):
        # The client left while its claim committed (a worker stopping cancels its long poll):
        # nobody will run these, so hand them back now instead of after their lease.
        await store.release([(job["id"], job["lease"]) for job in jobs])
        log.info("claim of %d job(s) released: the client left before the answer", len(jobs))
        return json_response({"jobs": [], "lease_seconds": lease})
    return json_response({"jobs": jobs, "lease_seconds": lease})   # the one answer that shows leases


async def complete_batch(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request)
    outcomes = [parse_outcome(item) for item in batch(body, "outcomes")]
    for outcome in outcomes:
        require_lease(request, outcome.lease)
    results = await store.complete(outcomes)
    if not body.get("documents", True):
        for result in results:   # the store's answer items are this request's own
            result.pop("job", None)
    else:
        results = [{**r, "job": shown(r["job"])} if "job" in r else r for r in results]
    return json_response({"results": results})


async def heartbeat_batch(request: web.Request) -> web.Response:
    """Extend leases; with ``info`` also refresh the worker's registry entry. The answer
    carries the command left for the worker (``"stop"``), if any."""
    store, settings, _ = app_state(request)
    body = await read_object(request)
    items = leases(body) if body.get("leases") is not None else []
    for _, lease in items:
        require_lease(request, lease)
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
    items = leases(body)
    for _, lease in items:
        require_lease(request, lease)
    results = await store.release(items)
    return json_response({"results": [{k: v for k, v in r.items() if k != "job"} for r in results]})


WORKER_FIELDS = {"id": str, "host": str, "pid": int, "queues": list, "functions": list, "concurrency": int,
                 "prefetch": int, "version": str, "status": str, "jobs_done": int, "jobs_failed": int, "current": list,
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
    principal = principal_of(request)
    return json_response({"queues": [q for q in await store.queues() if principal.queue_allowed(q["name"])]})


async def put_queue(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    body = await read_object(request, allow_empty=True)
    paused = field(body, "paused", bool, required=False)
    strict = field(body, "strict", bool, required=False)
    name = queue_name(request)
    require_queue(request, name)
    return json_response(await store.set_queue(name, paused=paused, strict=strict))


async def pause_queue(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    name = queue_name(request)
    require_queue(request, name)
    return json_response(await store.set_queue(name, paused=True))


async def resume_queue(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    name = queue_name(request)
    require_queue(request, name)
    return json_response(await store.set_queue(name, paused=False))


# ---------------------------------------------------------------------------- events, docs

async def events(request: web.Request) -> web.StreamResponse:
    store, settings, hub = app_state(request)
    raw_queues = query_str(request, "queue")
    queues = frozenset(models.check_queue(q) for q in raw_queues.split(",")) if raw_queues else None
    queue = next(iter(queues)) if queues and len(queues) == 1 else None   # one queue: the store filters
    ident = query_str(request, "job") or query_str(request, "job_id")
    if queues is not None:
        require_queues(request, queues)
    elif ident is not None:
        await job_in_scope(request, ident)
    else:
        require_all_queues(request, "watching events")
    kinds_raw = query_str(request, "kind")
    kinds = set(kinds_raw.split(",")) if kinds_raw else None
    since_raw = query_str(request, "since")
    since = query_int(request, "since", 0, minimum=0, maximum=2**62) if since_raw is not None else None
    if request.headers.get("Upgrade", "").lower() == "websocket":
        initial = (query_str(request, "initial") or "false").lower()
        if initial not in ("true", "false", "1", "0"):
            raise InvalidRequest("initial: must be true or false", field="initial")
        return await run_feed(request, hub, Feed(queues=queues, job_id=ident, kinds=kinds), since, documents_only=False,
                              initial=initial in ("true", "1"))
    limit = query_int(request, "limit", 1000, minimum=1, maximum=10_000)
    wait = query_float(request, "wait", 0.0, minimum=0.0, maximum=settings.max_wait)
    cursor = since if since is not None else await store.last_seq()
    deadline = time.monotonic() + wait
    while True:
        feed = Feed(queues=queues, job_id=ident, kinds=kinds)
        feed.last_seq = cursor
        hub.feeds.add(feed)   # before the read: an event committed meanwhile still wakes us
        try:
            page = await store.events_since(cursor, limit, queue=queue, job_id=ident)
            found = [models.public_event(e) for e in page if feed.matches(e)]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or len(page) == limit or hub.closing:
                last = page[-1]["seq"] if page else cursor
                return json_response(found, headers={"X-Last-Seq": str(last)})
            await feed.next_batch(min(remaining, BACKSTOP))
        finally:
            hub.feeds.discard(feed)


async def stats(request: web.Request) -> web.Response:
    store, settings, _ = app_state(request)
    require_all_queues(request, "statistics over all queues")
    window = query_float(request, "window", 300.0, minimum=1.0, maximum=7 * 86400)
    step = query_float(request, "step", 0.0, minimum=0.0, maximum=7 * 86400) or None
    answer = await store.stats(window, step)
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
    require_all_queues(request, "pruning")
    return json_response({"deleted": await store.prune(older_than)})


# ---------------------------------------------------------------------------- tokens

async def list_tokens(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    return json_response({"tokens": await store.tokens()})


async def create_token(request: web.Request) -> web.Response:
    """A new token, shown in this answer only."""
    store, _, _ = app_state(request)
    require_all_queues(request, "creating tokens")
    body = await read_object(request)
    scopes = field(body, "scopes", list)
    queues = field(body, "queues", list, required=False, default=["*"])
    methods = field(body, "methods", list, required=False, default=["*"])
    name = field(body, "name", str, required=False)
    expires_in = number(body, "expires_in", 0.0, minimum=0.0, maximum=10 * 365 * 86400) or None
    if name is not None and len(name) > 200:
        raise InvalidRequest("name: at most 200 characters", field="name")
    token, record = await auth.create_token(store, scopes, queues, methods, name, expires_in)
    return json_response({"token": token, **record}, 201)


async def revoke_token(request: web.Request) -> web.Response:
    store, _, _ = app_state(request)
    ident = request.match_info["id"]
    if not 1 <= len(ident) <= 64:
        raise InvalidRequest("id: not a token id", field="id")
    return json_response(await store.revoke_token(auth.token_id_of(ident) or ident))


# ---------------------------------------------------------------------------- strict queues

class StrictQueues:
    """The methods strict queues accept: those registered by their live workers.

    Which queues are strict is followed from ``queue.updated`` events (loaded once at start);
    the workers' registrations are read from the store at most once a second, and again when a
    method is missing (a worker may have just registered it).
    """

    TTL = 1.0

    def __init__(self) -> None:
        self.strict: set[str] = set()
        self._functions: dict[str, set[str]] = {}
        self._read_at = -1e9

    def observe(self, event: dict[str, Any]) -> None:
        if event["kind"] == models.EV_QUEUE and isinstance(event["new_val"], dict):
            doc = event["new_val"]
            (self.strict.add if doc.get("strict") else self.strict.discard)(doc["name"])

    async def load(self, store: Store) -> None:
        self.strict = {q["name"] for q in await store.queues() if q.get("strict")}

    async def _read_workers(self, app: web.Application) -> None:
        store, settings = app[STORE], app[SETTINGS]
        now = models.now()
        functions: dict[str, set[str]] = {}
        for worker in await store.workers():
            if worker.get("status") == "stopped" or now - worker["last_seen"] > settings.worker_timeout:
                continue
            for queue in worker.get("queues") or []:
                functions.setdefault(queue, set()).update(worker.get("functions") or [])
        self._functions = functions
        self._read_at = time.monotonic()

    def _missing(self, jobs: list[models.NewJob]) -> list[models.NewJob]:
        out = []
        for job in jobs:
            if job.queue in self.strict:
                known = self._functions.get(job.queue, set())
                colon = job.method if ":" in job.method else ":".join(job.method.rsplit(".", 1))
                if job.method not in known and colon not in known:
                    out.append(job)
        return out

    async def check(self, app: web.Application, jobs: list[models.NewJob]) -> None:
        if not self.strict or not any(job.queue in self.strict for job in jobs):
            return
        if time.monotonic() - self._read_at > self.TTL:
            await self._read_workers(app)
        missing = self._missing(jobs)
        if missing:   # a worker may have registered it since the last read
            await self._read_workers(app)
            missing = self._missing(jobs)
        if missing:
            job = missing[0]
            raise MethodNotRegistered(f"queue {job.queue!r} is strict and no worker serving it has registered "
                                      f"{job.method!r}; nothing was enqueued", queue=job.queue, method=job.method)


async def openapi(request: web.Request) -> web.Response:
    return json_response(OPENAPI)


async def me(request: web.Request) -> web.Response:
    """Who the request's token is, so a client (the dashboard) offers only what it may do."""
    principal = principal_of(request)
    settings = request.app[SETTINGS]
    return json_response({"auth": settings.auth, "kind": principal.kind, "id": principal.id,
                          "scopes": sorted(principal.scopes), "queues": list(principal.queues),
                          "methods": list(principal.methods)})


async def health(request: web.Request) -> web.Response:
    store, _, hub = app_state(request)
    return json_response({"ok": True, "version": __version__, "store": store.scheme, "loop": loop_kind(),
                          "events_seen": hub.events_seen})


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
    ("GET", "/api/v1/tokens", list_tokens),
    ("POST", "/api/v1/tokens", create_token),
    ("DELETE", "/api/v1/tokens/{id}", revoke_token),
    ("GET", "/api/v1/events", events),
    ("GET", "/api/v1/openapi.json", openapi),
    ("GET", "/api/v1/health", health),
    ("GET", "/api/v1/me", me),
]

__all__ = ["ROUTES", "claim_wait", "LeaseConflict"]


STRICT_QUEUES: web.AppKey[StrictQueues] = web.AppKey("strict_queues", StrictQueues)
