"""The store contract: what every tqueues backend guarantees.

Only the dispatcher talks to a store. The public coroutine methods of :class:`Store` are
defined here, once; each validates and normalises its arguments, then calls one
``_underscore`` method that a backend implements. Backends own atomicity: every method that
changes state does so in one transaction, and writes its events in that same transaction.

Documents
    Jobs, executions, queues, workers and events are returned as plain ``dict`` objects whose
    keys are listed in :data:`JOB_KEYS`, :data:`EXECUTION_KEYS` and so on; JSON fields
    (``args``, ``kwargs``, ``data``, ``result``, ``error``) are already decoded. Times are
    floats, seconds since the epoch.

Fencing
    A claim hands out a *lease token*. Heartbeat, complete, fail and release must present the
    token of the current lease; a stale token (the job was re-leased after its lease expired,
    aborted, or already completed) changes nothing and is reported as a ``stale_lease``
    conflict for that item.

Events
    Every change of a job's status, data or outcome, of a queue's settings and of a worker's
    registration appends an event ``{"seq", "ts", "kind", "queue", "job_id", "new_val"}``
    with a strictly increasing ``seq`` (lease extensions by heartbeat and pruning do not);
    ``last_seq()`` never decreases, pruning included. After the transaction commits, the store
    publishes the events to its in-process subscribers (:meth:`Store.subscribe`); a subscriber
    that falls behind is told so and re-reads with :meth:`Store.events_since`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import contextvars
import itertools
import math
import operator
import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from .. import models
from ..errors import InvalidRequest, NotFound

JOB_KEYS = (
    "id", "queue", "method", "args", "kwargs", "status", "priority", "run_at", "attempts",
    "max_attempts", "timeout", "backoff", "lease", "lease_expires", "worker", "data", "result",
    "error", "key", "created_at", "started_at", "finished_at", "updated_at", "secrets",
)
EXECUTION_KEYS = ("job_id", "attempt", "worker", "status", "started_at", "finished_at", "error")

# A job document stored in an event row is a JSON array of its values, in the order of a
# shape listed here, after the shape's number: about half the bytes of the object (its keys
# are most of it), so fewer pages to write, commit and checkpoint per event. Other documents
# (workers, queues, log lines, and rows written by older versions) stay JSON objects. A change
# of JOB_KEYS adds a shape; the old ones stay readable.
EVENT_SHAPES: dict[int, tuple[str, ...]] = {1: JOB_KEYS}
EVENT_SHAPE = 1
JOB_VALUES = operator.itemgetter(*JOB_KEYS)   # a job document's values, in JOB_KEYS order


def stored_event_doc(doc: Any) -> Any:
    """What an event row stores for ``doc``: a job document as its shape's array of values."""
    if type(doc) is dict and len(doc) == len(JOB_KEYS):
        try:   # as many keys as a job, and every key of a job: a job document
            return [EVENT_SHAPE, *JOB_VALUES(doc)]
        except KeyError:
            pass
    return doc


def event_doc(stored: Any) -> Any:
    """An event's document from what its row stores (see stored_event_doc)."""
    if type(stored) is list:
        return dict(zip(EVENT_SHAPES[stored[0]], stored[1:]))
    return stored
MAX_CLAIM = models.MAX_CLAIM
LOG_STREAMS = ("stdout", "stderr", "log")
WORKER_COMMANDS = (None, "stop")
MAX_LEASE = 24 * 3600.0


class Changes:
    """What a write operation of the SQLite and PostgreSQL stores collects for its transaction:
    its events, and how many jobs each (queue, status) gained or lost, which the store writes
    to its queue counts in the same transaction."""

    __slots__ = ("events", "moved")

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str | None, dict[str, Any]]] = []   # kind, queue, job id, doc
        self.moved: dict[tuple[str, str], int] = {}   # (queue, status) → jobs gained or lost

    def emit(self, kind: str, job: dict[str, Any], was: str | None) -> None:
        """The event of a change of ``job`` (its document as written), whose status was ``was``
        before (None: a new job). Every write of a job's status goes through here (or writes
        its counts itself), so that the queue counts follow the jobs."""
        queue = job["queue"]
        self.events.append((kind, queue, job["id"], job))
        status = job["status"]
        if status != was:
            moved = self.moved
            if was is not None:
                moved[queue, was] = moved.get((queue, was), 0) - 1
            moved[queue, status] = moved.get((queue, status), 0) + 1

    def count(self, queue: str, status: str, delta: int) -> None:
        """``delta`` jobs of ``queue`` gained (or lost) in ``status`` without an event (prune)."""
        self.moved[queue, status] = self.moved.get((queue, status), 0) + delta


def net_moves(operations: Sequence[Changes]) -> list[tuple[str, str, int]]:
    """``(queue, status, delta)`` for every count the operations of one transaction changed, their
    changes added up (those that cancel out left out)."""
    total: dict[tuple[str, str], int] = {}
    for changes in operations:
        for key, delta in changes.moved.items():
            total[key] = total.get(key, 0) + delta
    return [(queue, status, delta) for (queue, status), delta in total.items() if delta]


# Set (see ``grouped``) while the writes about to start must share a transaction where the
# store groups writes; tasks created meanwhile carry it (each task copies the context). Its
# value is one object per ``grouped`` block: the writes of two blocks may go apart.
_GROUPED: contextvars.ContextVar[object | None] = contextvars.ContextVar("tqueues_grouped", default=None)


@contextlib.contextmanager
def grouped() -> Iterator[None]:
    """Writes started in this block, and by tasks created in it, are committed together by
    stores that group the writes of one turn of the event loop (SQLite, PostgreSQL): an
    enqueue and the parked claims it serves. Elsewhere a store may run a small write at once,
    alone, when nothing else is on its way (see the SQLite store)."""
    token = _GROUPED.set(object())
    try:
        yield
    finally:
        _GROUPED.reset(token)


def group_of_writes() -> object | None:
    """The ``grouped`` block the writes about to start belong to (None outside any): writes
    of the same block must share a transaction."""
    return _GROUPED.get()


@dataclass(slots=True)
class Outcome:
    """How one attempt ended, as reported by the worker holding its lease.

    ``status`` is ``finished`` or ``failed``. A failed attempt goes back to ``pending`` with a
    backoff when ``retry`` is true and attempts remain; otherwise the job ends ``failed``.
    ``lease=None`` completes without fencing; only the TQueues ``DELETE /`` uses it.
    """

    id: str
    lease: str | None
    status: str = models.FINISHED
    result: Any = None
    error: dict[str, Any] | None = None
    retry: bool = True


def new_job(spec: models.NewJob, now: float, job_id: str) -> dict[str, Any]:
    """The document of a job about to be inserted as ``job_id`` (every backend stores exactly
    this; stores draw the ids of a batch at once with models.new_ids)."""
    return {
        "id": job_id, "queue": spec.queue, "method": spec.method,
        "args": spec.args, "kwargs": spec.kwargs, "status": models.PENDING,
        "priority": spec.priority, "run_at": spec.run_at if spec.run_at is not None else now,
        "attempts": 0, "max_attempts": spec.max_attempts, "timeout": spec.timeout,
        "backoff": spec.backoff, "lease": None, "lease_expires": None, "worker": None,
        "data": spec.data, "result": None, "error": None, "key": spec.key,
        "created_at": now, "started_at": None, "finished_at": None, "updated_at": now,
        "secrets": spec.secrets or None,
    }


def ended_attempt(job: dict[str, Any], status: str, now: float, error: Any = None,
                  lease: str | None = None) -> tuple[Any, ...]:
    """The execution row (job_id, attempt, worker, lease, status, started_at, finished_at, error)
    of the attempt of ``job``, a started job's document, ending now as ``status``; ``lease``
    when the document given no longer holds the attempt's (a row the ending already cleared)."""
    return (job["id"], job["attempts"], job["worker"], lease or job["lease"], status, job["started_at"], now, error)


def with_running_attempt(job: dict[str, Any], executions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``executions`` (the stored rows of ``job``, by attempt) with the attempt running now,
    which stores keep on the job row alone until it ends (SQLite, PostgreSQL)."""
    if job["status"] != models.STARTED:
        return executions
    attempt = job["attempts"]
    running = {"job_id": job["id"], "attempt": attempt, "worker": job["worker"], "status": models.EXEC_STARTED,
               "started_at": job["started_at"], "finished_at": None, "error": None}
    return [e for e in executions if e["attempt"] != attempt] + [running]


def leased_new_job(doc: dict[str, Any], worker: str | None, lease: str | None, lease_seconds: float,
                   now: float) -> dict[str, Any]:
    """The document of new job ``doc`` as a claim at ``now`` leases it (Store.enqueue_and_claim)."""
    return {**doc, "status": models.STARTED, "attempts": 1, "lease": lease,
            "lease_expires": now + lease_seconds, "worker": worker, "started_at": now, "updated_at": now}


def fenced_finishes(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """job id → index of its outcome, for the outcomes a store may apply set-wise: the first
    outcome of its job in the batch, a finish fenced by a lease. The others (failures,
    unfenced completions, second outcomes of a job) are applied one by one, in order."""
    firsts: dict[str, int] = {}
    for i, outcome in enumerate(outcomes):
        firsts.setdefault(outcome.id, i)
    return {job_id: i for job_id, i in firsts.items()
            if outcomes[i].status == models.FINISHED and outcomes[i].lease is not None}


def ok(job: dict[str, Any]) -> dict[str, Any]:
    """One item of a batch answer that succeeded."""
    return {"id": job["id"], "ok": True, "status": job["status"], "job": job}


def conflict(job_id: str, code: str, message: str) -> dict[str, Any]:
    """One item of a batch answer that changed nothing."""
    return {"id": job_id, "ok": False, "error": {"code": code, "message": message}}


def worker_not_found(worker_id: str) -> NotFound:
    return NotFound(f"no worker has id {worker_id!r}", id=worker_id)


def token_not_found(token_id: str) -> NotFound:
    return NotFound(f"no token has id {token_id!r}", id=token_id)


TOKEN_KEYS = ("id", "name", "scopes", "queues", "methods", "created_at", "expires_at", "revoked_at")


# The columns a claim sets, whose values it knows, and those it reads back (the SQL stores read
# CLAIM_READS, then their own columns): a quarter fewer values to fetch for each job claimed.
CLAIM_SETS = ("status", "lease", "lease_expires", "worker", "started_at", "updated_at")
CLAIM_READS = tuple(key for key in JOB_KEYS if key not in CLAIM_SETS)


def claim_sets(lease: str, lease_expires: float, worker: str, now: float) -> tuple[Any, ...]:
    """The values a claim at ``now`` sets, in CLAIM_SETS order."""
    values = {"status": models.STARTED, "lease": lease, "lease_expires": lease_expires, "worker": worker,
              "started_at": now, "updated_at": now}
    return tuple(values[key] for key in CLAIM_SETS)


def claimed_values(extra: int) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A function that makes a claimed job's values, in JOB_KEYS order, from a row of the
    CLAIM_READS columns and ``extra`` columns more (after them), followed by the values the
    claim set, in CLAIM_SETS order."""
    width = len(CLAIM_READS) + extra
    return operator.itemgetter(*(CLAIM_READS.index(key) if key in CLAIM_READS else width + CLAIM_SETS.index(key)
                                 for key in JOB_KEYS))


class ClaimedDocs:
    """The documents of the jobs a store claimed, by id, until they end (SQLite, PostgreSQL).

    A finish that matches a job's lease and its row's ``updated_at`` as claimed (nothing wrote
    to the row since: not this store, which forgets a job at any other write of it, nor another
    process or dispatcher, whose writes change ``updated_at``) makes the finished document from
    the claimed one and the finish's changes, instead of reading every column of the row back:
    about half the cost of a completion. Documents are put once the claim committed; at most
    ``limit`` are kept, the oldest forgotten first, and a forgotten job finishes as before."""

    __slots__ = ("docs", "limit")

    def __init__(self, limit: int = 16_384) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.limit = limit

    def remember(self, jobs: Sequence[dict[str, Any]]) -> None:
        docs = self.docs
        for job in jobs:
            docs[job["id"]] = job
        excess = len(docs) - self.limit
        if excess > 0:
            for job_id in list(itertools.islice(docs, excess)):
                del docs[job_id]

    def forget(self, job_id: str) -> None:
        self.docs.pop(job_id, None)

    def take(self, job_id: str, lease: str | None) -> dict[str, Any] | None:
        """The claimed document of ``job_id`` if it was claimed with ``lease``; forgotten either way."""
        doc = self.docs.pop(job_id, None)
        return doc if doc is not None and doc["lease"] == lease else None

    @staticmethod
    def finished(doc: dict[str, Any], result: Any, now: float) -> dict[str, Any]:
        """``doc``, a claimed job's document, as a finish at ``now`` with ``result`` leaves it."""
        return {**doc, "status": models.FINISHED, "result": result, "error": None, "lease": None,
                "lease_expires": None, "finished_at": now, "updated_at": now}


class Subscription:
    """A bounded in-process feed of events published by one store.

    ``get()`` returns the next batch of events. When more than ``limit`` events wait unread,
    the subscription is marked ``overflowed`` and stops buffering: its owner must re-read
    from the store with ``events_since(last_seq)`` (or give up), never grow without bound.
    """

    def __init__(self, store: "Store", limit: int) -> None:
        self._store = store
        self._limit = limit
        self._items: list[dict[str, Any]] = []
        self._ready = asyncio.Event()
        self.overflowed = False
        self.closed = False

    def _push(self, events: Sequence[dict[str, Any]]) -> None:
        if self.overflowed or self.closed:
            return
        if len(self._items) + len(events) > self._limit:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.extend(events)
        self._ready.set()

    async def get(self) -> list[dict[str, Any]]:
        """Wait for events; return them all (an empty list once overflowed or closed)."""
        while not self._items and not self.overflowed and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        items, self._items = self._items, []
        return items

    def close(self) -> None:
        self.closed = True
        self._ready.set()
        self._store._subscribers.discard(self)


class Store(abc.ABC):
    """A tqueues backend. Create with :func:`tqueues.store.open_store`, then ``await open()``."""

    scheme: str = ""
    #: True when the backend delivers events from other processes (many dispatchers).
    shared: bool = False

    def __init__(self, url: str) -> None:
        self.url = url
        self._subscribers: set[Subscription] = set()
        self._rand = random.Random()

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect, create or migrate the schema (idempotent). Raises StoreUnavailable."""
        await self._open()

    async def close(self) -> None:
        """Finish pending writes and release every connection."""
        for sub in list(self._subscribers):
            sub.close()
        await self._close()

    async def __aenter__(self) -> "Store":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ producers

    async def enqueue(self, jobs: Sequence[models.NewJob]) -> list[tuple[dict[str, Any], bool]]:
        """Insert jobs atomically (all or none); create their queues when new.

        A job whose ``key`` matches an existing job is not inserted: that job is returned
        instead. Returns ``(job, created)`` for each input, in order. Emits ``job.created``.
        """
        if not jobs:
            return []
        return await self._enqueue(list(jobs), models.now())

    async def get(self, job_id: str) -> dict[str, Any]:
        """The job document. Raises JobNotFound."""
        return await self._get(job_id)

    async def list_jobs(self, *, queue: str | None = None, status: str | None = None,
                        method: str | None = None, limit: int = 100,
                        before: str | None = None, text: str | None = None) -> list[dict[str, Any]]:
        """Jobs matching every given filter, newest first, at most ``limit`` (1-1000).

        ``before`` is a job id: only jobs created before it are returned (pagination).
        ``text`` matches, case-insensitively, part of the id, method, idempotency key, the
        positional arguments or the error. Keyword arguments are not searched: they may hold
        secrets, and a search would tell their values one guess at a time.
        """
        if text is not None and not 1 <= len(text) <= 200:
            raise InvalidRequest("text: must be 1 to 200 characters", field="text")
        if status is not None and status not in models.STATUSES:
            raise InvalidRequest(f"status: must be one of {', '.join(models.STATUSES)}", field="status")
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit: must be between 1 and 1000", field="limit")
        return await self._list_jobs(queue, status, method, limit, before, text)

    async def executions(self, job_id: str) -> list[dict[str, Any]]:
        """Every attempt of a job, oldest first. Raises JobNotFound."""
        return await self._executions(job_id)

    async def update_data(self, job_id: str, data: dict[str, Any], lease: str | None = None) -> dict[str, Any]:
        """Merge ``data`` into the job's user data (top-level keys replaced). Emits ``job.updated``.

        When ``lease`` is given it must be the current lease (LeaseConflict otherwise).
        Raises JobNotFound.
        """
        return await self._update_data(job_id, data, lease, models.now())

    async def abort(self, job_id: str) -> dict[str, Any]:
        """Abort a pending or started job; its lease becomes stale. Emits ``job.aborted``.

        Raises JobNotFound, or Conflict when the job already ended.
        """
        return await self._abort(job_id, models.now())

    async def retry(self, job_id: str) -> dict[str, Any]:
        """Put a failed or aborted job back to ``pending`` now, with one more attempt allowed
        if it had used them all (``attempts`` and executions keep the history). Emits
        ``job.retrying``. Raises JobNotFound, or Conflict unless the job failed or was aborted."""
        return await self._retry(job_id, models.now())

    # ------------------------------------------------------------------ workers

    async def claim(self, queues: Sequence[str], worker: str, limit: int = 1,
                    lease_seconds: float = 30.0, lease_prefix: str = "") -> list[dict[str, Any]]:
        """Atomically lease up to ``limit`` ready jobs of the (unpaused) ``queues``.

        Ready means ``pending`` with ``run_at <= now``; order is priority (high first), then
        ``run_at``, then enqueue order. Each claimed job becomes ``started``, its ``attempts``
        grows by one, an execution row opens, and it carries a fresh ``lease`` token valid
        until ``lease_expires`` (the token starts with ``lease_prefix``, so whoever checks it can
        tell which principal it was handed to). No job is ever leased twice at once. The jobs are returned in
        that claim order; all jobs of one claim may share one lease token (fencing is per job).
        Emits ``job.started``.
        """
        if not queues:
            raise InvalidRequest("queue: at least one queue is required", field="queue")
        if not 1 <= limit <= MAX_CLAIM:
            raise InvalidRequest(f"limit: must be between 1 and {MAX_CLAIM}", field="limit")
        if not 0 < lease_seconds <= MAX_LEASE:
            raise InvalidRequest(f"lease: must be between 0 and {MAX_LEASE} seconds", field="lease")
        return await self._claim(list(dict.fromkeys(queues)), worker, limit, lease_seconds, models.now(), lease_prefix)

    async def enqueue_and_claim(self, job: models.NewJob, queues: Sequence[str], worker: str,
                                lease_seconds: float = 30.0, lease_prefix: str = ""
                                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Enqueue one new job and claim for a claim that was waiting on ``queues``: what the
        dispatcher does when a job comes in while a worker's claim is parked (push dispatch).

        ``job`` has no idempotency key, is due now and belongs to one of ``queues``. Returns the
        job as enqueued (``pending``, as ``enqueue`` returns it; ``job.created`` is emitted) and
        the jobs claimed, each as ``claim`` leases it (``job.started``): the new job itself when
        it is the claim's first pick (its queue is not paused and no ready job of ``queues``
        ranks before it). Otherwise the claim gets that first pick, or nothing and looks again.
        Stores that can do it write both in one transaction, the new job leased as it is
        inserted: no claim statement, and on PostgreSQL one round trip in all.
        """
        if job.key is not None or job.queue not in queues:
            raise ValueError("enqueue_and_claim: a job without a key, in one of the claim's queues")
        if not 0 < lease_seconds <= MAX_LEASE:
            raise InvalidRequest(f"lease: must be between 0 and {MAX_LEASE} seconds", field="lease")
        return await self._enqueue_and_claim(job, list(dict.fromkeys(queues)), worker, lease_seconds,
                                             models.now(), lease_prefix)

    async def _enqueue_and_claim(self, job: models.NewJob, queues: list[str], worker: str,
                                 lease_seconds: float, now: float, lease_prefix: str
                                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One after the other, for stores with no single write for both."""
        ((doc, _),) = await self._enqueue([job], now)
        return doc, await self._claim(queues, worker, 1, lease_seconds, models.now(), lease_prefix)

    async def heartbeat(self, leases: Sequence[tuple[str, str]], lease_seconds: float,
                        worker: str | None = None) -> list[dict[str, Any]]:
        """Extend leases ``(job_id, lease)`` to now + ``lease_seconds``; mark the worker seen.

        Returns one item per lease: ``{"id", "ok": True, ...}`` or a ``stale_lease`` conflict.
        """
        if not 0 < lease_seconds <= MAX_LEASE:
            raise InvalidRequest(f"lease: must be between 0 and {MAX_LEASE} seconds", field="lease")
        return await self._heartbeat(list(leases), lease_seconds, worker, models.now())

    async def complete(self, outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
        """Record how attempts ended, each fenced by its lease; one transaction for all.

        Finished: ``status=finished``, ``result`` stored, ``error`` of earlier attempts cleared
        (their executions keep it). Failed: the error is stored on the
        job and its execution; the job is retried (``pending``, ``run_at`` = now + backoff,
        ``job.retrying``) while ``retry`` and attempts remain, else ends ``failed``. Returns one
        item per outcome: ok with the new job, or a conflict (``stale_lease``,
        ``job_not_found``) that changed nothing.
        """
        for outcome in outcomes:
            if outcome.status not in (models.FINISHED, models.FAILED):
                raise InvalidRequest("status: must be finished or failed", field="status")
        return await self._complete(list(outcomes), models.now())

    async def release(self, leases: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """Hand leased jobs back unrun: ``pending`` again, the attempt not counted."""
        return await self._release(list(leases), models.now())

    async def requeue_expired(self) -> int:
        """Return jobs whose lease expired to ``pending`` (the attempt stays counted; its
        execution ends ``lost``), or end them ``failed`` with a ``worker_lost`` error when no
        attempt remains. Safe to run concurrently. Returns how many jobs it changed."""
        return await self._requeue_expired(models.now())

    async def next_run_at(self, queues: Sequence[str]) -> float | None:
        """The earliest ``run_at`` of a pending job in ``queues`` that was scheduled later than
        its creation (delayed, or put back with a backoff), paused or not; None when none.

        Jobs due when created may be left out (SQLite and PostgreSQL keep no index entry for
        them): a claim takes them at once, and their ``job.created`` event wakes claims that
        wait. A waiting claim needs this only to know when a delayed job becomes due."""
        return await self._next_run_at(list(queues))

    async def register_worker(self, info: dict[str, Any]) -> dict[str, Any]:
        """Insert or update a worker (``id`` required) and mark it seen now.

        A worker that said it stopped stays stopped: a heartbeat it sent just before, arriving
        late, must not bring it back to life (a restarted worker registers under a new id).
        """
        if not isinstance(info.get("id"), str) or not info["id"]:
            raise InvalidRequest("id: a worker needs a non-empty string id", field="id")
        if info.get("status") != "stopped":
            try:
                if (await self._worker(info["id"])).get("status") == "stopped":
                    info = {**info, "status": "stopped"}
            except NotFound:
                pass
        return await self._register_worker(info, models.now())

    async def workers(self) -> list[dict[str, Any]]:
        """Every registered worker with ``last_seen``, newest first."""
        return await self._workers()

    async def worker(self, worker_id: str) -> dict[str, Any]:
        """One registered worker. Raises NotFound."""
        return await self._worker(worker_id)

    async def command_worker(self, worker_id: str, command: str | None) -> dict[str, Any]:
        """Leave a command for a worker (``"stop"``: finish or release its jobs and exit), or
        clear it with None. The worker reads it with its next heartbeat. Emits ``worker.updated``.
        Raises NotFound for an unknown worker."""
        if command not in WORKER_COMMANDS:
            raise InvalidRequest(f"command: must be one of {', '.join(c for c in WORKER_COMMANDS if c)}", field="command")
        return await self._command_worker(worker_id, command, models.now())

    # ------------------------------------------------------------------ queues

    async def queues(self) -> list[dict[str, Any]]:
        """Every queue with ``paused``, ``strict``, ``counts`` per status and
        ``oldest_pending`` (when the oldest pending job was created, or None)."""
        return await self._queues()

    async def stats(self, window: float = 300.0, step: float | None = None) -> dict[str, Any]:
        """Counts per status over all queues, and how many jobs ended ``finished`` and
        ``failed`` in the last ``window`` seconds: ``{"counts": {...}, "window": s,
        "finished": n, "failed": n}``.

        With ``step``, also ``"series"``: the window cut into buckets of ``step`` seconds, oldest
        first, each ``{"start": t, "finished": n, "failed": n}`` (at most 1,000 buckets).
        """
        if not 0 < window <= 7 * 86400:
            raise InvalidRequest("window: must be between 0 and 604800 seconds", field="window")
        if step is not None and not (window / 1000 <= step <= window and step > 0):
            raise InvalidRequest("step: must be positive, at most the window and at least window/1000", field="step")
        counts = dict.fromkeys(models.STATUSES, 0)
        for queue in await self.queues():
            for status, count in queue["counts"].items():
                counts[status] += count
        recent = await self._ended_since(models.now() - window)
        answer: dict[str, Any] = {"counts": counts, "window": window, "finished": recent.get(models.FINISHED, 0),
                                  "failed": recent.get(models.FAILED, 0)}
        if step is not None:
            end = models.now()
            buckets = max(1, math.ceil(window / step))
            start = end - buckets * step
            series = [{"start": start + i * step, "finished": 0, "failed": 0} for i in range(buckets)]
            for bucket, status, count in await self._ended_series(start, step):
                if 0 <= bucket < buckets and status in (models.FINISHED, models.FAILED):
                    series[bucket][status] += count
            answer["series"] = series
        return answer

    async def set_queue(self, name: str, *, paused: bool | None = None, strict: bool | None = None) -> dict[str, Any]:
        """Create the queue if needed and change the settings given (None leaves one as it is):
        ``paused`` (no claims), ``strict`` (the dispatcher refuses methods no worker of the queue
        registered). Returns ``{"name", "paused", "strict"}``. Emits ``queue.updated``."""
        models.check_queue(name)
        settings = {k: v for k, v in (("paused", paused), ("strict", strict)) if v is not None}
        return await self._set_queue(name, settings, models.now())

    # ------------------------------------------------------------------ tokens

    async def create_token(self, record: dict[str, Any]) -> dict[str, Any]:
        """Store an access token: ``id``, ``hash`` (never the token itself), ``name``,
        ``scopes``, ``queues`` and ``methods`` (glob lists), ``expires_at`` (or None).
        Returns the record without its hash. Emits no event."""
        for key in ("id", "hash", "scopes"):
            if not record.get(key):
                raise InvalidRequest(f"{key}: a token needs one", field=key)
        return await self._create_token({"name": None, "queues": ["*"], "methods": ["*"], "expires_at": None,
                                         **record, "created_at": models.now(), "revoked_at": None})

    async def token(self, token_id: str) -> dict[str, Any]:
        """A token's record, hash included. Raises NotFound."""
        return await self._token(token_id)

    async def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Mark a token revoked (idempotent); the record without its hash. Raises NotFound."""
        return await self._revoke_token(token_id, models.now())

    async def tokens(self) -> list[dict[str, Any]]:
        """Every token record without hashes, newest first."""
        return await self._tokens()

    # ------------------------------------------------------------------ events

    async def events_since(self, seq: int, limit: int = 1000, *, queue: str | None = None,
                           job_id: str | None = None) -> list[dict[str, Any]]:
        """Events with ``seq`` greater than the one given, oldest first, at most ``limit`` (1-10,000)."""
        if not 1 <= limit <= 10_000:
            raise InvalidRequest("limit: must be between 1 and 10000", field="limit")
        return await self._events_since(seq, limit, queue, job_id)

    async def last_seq(self) -> int:
        """The ``seq`` of the newest event (0 when none)."""
        return await self._last_seq()

    def subscribe(self, limit: int = 100_000) -> Subscription:
        """A live feed of the events this store commits from now on (see Subscription)."""
        sub = Subscription(self, limit)
        self._subscribers.add(sub)
        return sub

    def _publish(self, events: Sequence[dict[str, Any]]) -> None:
        """Fan committed events out to subscribers; called on the event loop by backends."""
        if events:
            for sub in list(self._subscribers):
                sub._push(events)

    # ------------------------------------------------------------------ logs

    async def append_logs(self, lines: Sequence[dict[str, Any]]) -> int:
        """Store captured output lines ``{"job_id", "attempt", "stream", "line", "ts"}``.

        Each stored line gets an ``id`` that grows with every line of a job. Lines of unknown
        jobs are skipped. Emits one ``job.log`` event per job whose ``new_val`` is
        ``{"id": job_id, "lines": [...]}``. Returns how many lines were stored.
        """
        for line in lines:
            if line.get("stream") not in LOG_STREAMS:
                raise InvalidRequest(f"stream: must be one of {', '.join(LOG_STREAMS)}", field="stream")
        if not lines:
            return 0
        return await self._append_logs(list(lines))

    async def logs(self, job_id: str, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Lines of a job with ``id`` greater than ``since``, oldest first. Raises JobNotFound."""
        if not 1 <= limit <= 10_000:
            raise InvalidRequest("limit: must be between 1 and 10000", field="limit")
        return await self._logs(job_id, since, limit)

    async def prune(self, older_than: float) -> int:
        """Delete ended jobs (with executions and logs) and events older than ``older_than`` seconds.
        Returns how many jobs were deleted."""
        if older_than < 0:
            raise InvalidRequest("older_than: must be >= 0", field="older_than")
        return await self._prune(models.now() - older_than)

    # ------------------------------------------------------------------ shared rules

    def retry_at(self, job: dict[str, Any], retry: bool, now: float) -> float | None:
        """When a failed attempt should run again, or None when the job must end ``failed``."""
        if not retry or job["attempts"] >= job["max_attempts"]:
            return None
        return now + models.backoff_delay(job["backoff"], job["attempts"], self._rand.random())

    # ------------------------------------------------------------------ backend hooks

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def _enqueue(self, jobs: list[models.NewJob], now: float) -> list[tuple[dict[str, Any], bool]]: ...

    @abc.abstractmethod
    async def _get(self, job_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _list_jobs(self, queue: str | None, status: str | None, method: str | None,
                         limit: int, before: str | None, text: str | None = None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _executions(self, job_id: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _update_data(self, job_id: str, data: dict[str, Any], lease: str | None, now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _abort(self, job_id: str, now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _claim(self, queues: list[str], worker: str, limit: int, lease_seconds: float,
                     now: float, lease_prefix: str) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _heartbeat(self, leases: list[tuple[str, str]], lease_seconds: float,
                         worker: str | None, now: float) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _complete(self, outcomes: list[Outcome], now: float) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _release(self, leases: list[tuple[str, str]], now: float) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _requeue_expired(self, now: float) -> int: ...

    @abc.abstractmethod
    async def _next_run_at(self, queues: list[str]) -> float | None: ...

    @abc.abstractmethod
    async def _register_worker(self, info: dict[str, Any], now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _workers(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _worker(self, worker_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _command_worker(self, worker_id: str, command: str | None, now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _queues(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _set_queue(self, name: str, settings: dict[str, bool], now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _create_token(self, record: dict[str, Any]) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _token(self, token_id: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _revoke_token(self, token_id: str, now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _tokens(self) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _events_since(self, seq: int, limit: int, queue: str | None,
                            job_id: str | None) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _last_seq(self) -> int: ...

    @abc.abstractmethod
    async def _retry(self, job_id: str, now: float) -> dict[str, Any]: ...

    @abc.abstractmethod
    async def _ended_since(self, since: float) -> dict[str, int]: ...

    @abc.abstractmethod
    async def _ended_series(self, since: float, step: float) -> list[tuple[int, str, int]]:
        """``(bucket, status, count)`` of jobs that ended at or after ``since``, where bucket is
        ``floor((finished_at - since) / step)``."""

    @abc.abstractmethod
    async def _append_logs(self, lines: list[dict[str, Any]]) -> int: ...

    @abc.abstractmethod
    async def _logs(self, job_id: str, since: int, limit: int) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def _prune(self, cutoff: float) -> int: ...


def unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url
