"""The PostgreSQL store: many dispatchers, one database.

Design
    * asyncpg. A pool of connections for reads; WRITERS (two) writer connections per
      dispatcher, each of which runs every operation waiting in ONE transaction and commits
      once: group commit, as in the SQLite store, with the next group written while the last
      one commits. Round trips are what a busy dispatcher waits on, so a group first runs
      without savepoints; only if one of its operations raises is it rolled back and run again
      with a savepoint per operation, so that the failing one rolls back alone. The events of
      a group are inserted, and NOTIFY sent, by one statement.
    * Claims are one ``UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)`` statement: two
      dispatchers never lease the same job, and neither waits for the other's locked rows.
      Every fenced change (heartbeat, complete, release, requeue) names the lease token in its
      ``WHERE`` clause, so a stale lease changes nothing whatever the interleaving.
    * Events are inserted at the end of each group transaction, their ``seq`` taken from a
      counter row updated by the same statement. The row stays locked until the commit is
      visible, so events become visible in ``seq`` order and a reader that has seen ``seq`` N
      will never later find a smaller one: ``since=N`` resumes without a gap.
    * The same transaction sends ``NOTIFY tqueues_events, '<last seq>'``. Every dispatcher
      LISTENs and re-reads the events table from the last seq it published (NOTIFY carries only
      the number; it is not durable, so a reconnecting listener catches up from its cursor, and a
      slow poll backs it up). The writing dispatcher publishes its own events at once.
    * While the database is unreachable every call raises StoreUnavailable (the dispatcher
      answers 503 with Retry-After); connections are re-established on the next call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
from typing import Any, Awaitable, Callable, Sequence
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .. import models
from ..errors import ConfigurationError, Conflict, JobNotFound, LeaseConflict, StoreUnavailable, TQueuesError
from .base import (CLAIM_READS, JOB_KEYS, ClaimedDocs, claim_sets, claimed_values, Changes, Outcome, Store, conflict, event_doc, fenced_finishes, leased_new_job, net_moves, new_job, ok,
                   redact, stored_event_doc, token_not_found, ended_attempt, with_running_attempt, worker_not_found)

try:  # imported lazily by open_store; the module itself needs the driver
    import asyncpg
except ImportError:  # pragma: no cover - reported when the store is opened
    asyncpg = None  # type: ignore[assignment]

log = logging.getLogger("tqueues.store.postgres")

SCHEMA_VERSION = 11
EVENT_LOCK = 0x7471_7565_7565_73   # advisory lock that ordered event seqs before schema version 8 ("tqueues")
MIGRATE_LOCK = EVENT_LOCK + 1
CHANNEL = "tqueues_events"
WRITERS = 2   # connections writing groups of operations at once (see _write_loop)
MAX_GROUP = 512
POLL_INTERVAL = 1.0    # the backstop of LISTEN/NOTIFY
NOTIFY_WAIT = 0.02     # seconds a NOTIFY waits for our own writes in flight (see _on_notify)
# Plan every statement for its parameters. asyncpg prepares statements once per connection, and
# after five runs PostgreSQL may switch to a generic plan made when the tables were small; as a
# backlog grows or drains that plan goes stale (a drain of 100,000 jobs ran at less than half the
# speed of a fresh dispatcher). Needs PostgreSQL 12 or newer.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE IF NOT EXISTS tqueues_jobs (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        method TEXT NOT NULL,
        args JSONB NOT NULL,
        kwargs JSONB NOT NULL,
        status TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        run_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        timeout DOUBLE PRECISION,
        backoff DOUBLE PRECISION NOT NULL,
        lease TEXT,
        lease_expires DOUBLE PRECISION,
        worker TEXT,
        data JSONB NOT NULL,
        result JSONB,
        error JSONB,
        key TEXT UNIQUE,
        created_at DOUBLE PRECISION NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS tqueues_jobs_ready ON tqueues_jobs (queue, priority DESC, run_at, seq) WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS tqueues_jobs_next ON tqueues_jobs (queue, run_at) WHERE status = 'pending';
    CREATE INDEX IF NOT EXISTS tqueues_jobs_leases ON tqueues_jobs (lease_expires) WHERE status = 'started';
    CREATE INDEX IF NOT EXISTS tqueues_jobs_queue_status ON tqueues_jobs (queue, status);
    CREATE INDEX IF NOT EXISTS tqueues_jobs_finished ON tqueues_jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE TABLE IF NOT EXISTS tqueues_executions (
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        lease TEXT,
        status TEXT NOT NULL,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        error JSONB,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE TABLE IF NOT EXISTS tqueues_events (
        seq BIGINT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        queue TEXT,
        job_id TEXT,
        doc JSONB NOT NULL
    );
    CREATE INDEX IF NOT EXISTS tqueues_events_job ON tqueues_events (job_id, seq);
    CREATE INDEX IF NOT EXISTS tqueues_events_ts ON tqueues_events (ts);
    CREATE TABLE IF NOT EXISTS tqueues_queues (
        name TEXT PRIMARY KEY,
        paused BOOLEAN NOT NULL DEFAULT FALSE,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE IF NOT EXISTS tqueues_workers (
        id TEXT PRIMARY KEY,
        info JSONB NOT NULL,
        registered_at DOUBLE PRECISION NOT NULL,
        last_seen DOUBLE PRECISION NOT NULL
    );
    """,
    # version 2: captured output of jobs
    """
    CREATE TABLE IF NOT EXISTS tqueues_logs (
        id BIGSERIAL PRIMARY KEY,
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        stream TEXT NOT NULL,
        line TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX IF NOT EXISTS tqueues_logs_job ON tqueues_logs (job_id, id);
    """,
    # version 3: strict queues and access tokens
    """
    ALTER TABLE tqueues_queues ADD COLUMN IF NOT EXISTS strict BOOLEAN NOT NULL DEFAULT FALSE;
    ALTER TABLE tqueues_jobs ADD COLUMN IF NOT EXISTS secrets JSONB;
    CREATE TABLE IF NOT EXISTS tqueues_tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        name TEXT,
        scopes JSONB NOT NULL,
        queues JSONB NOT NULL,
        methods JSONB NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    """,
    # version 4: next_run_at reads an index of the delayed jobs only (one index less to write
    # for every job due when created)
    """
    DROP INDEX IF EXISTS tqueues_jobs_next;
    CREATE INDEX IF NOT EXISTS tqueues_jobs_delayed ON tqueues_jobs (queue, run_at)
        WHERE status = 'pending' AND run_at > created_at;
    """,
    # version 5: keys are unique through an index of the jobs that have one. The column's
    # UNIQUE constraint indexed every job, NULL keys too, and an update that changes an
    # indexed column (every claim and completion) writes an entry in every index.
    """
    CREATE UNIQUE INDEX IF NOT EXISTS tqueues_jobs_key ON tqueues_jobs (key) WHERE key IS NOT NULL;
    ALTER TABLE tqueues_jobs DROP CONSTRAINT IF EXISTS tqueues_jobs_key_key;
    """,
    # version 6: the (queue, status) index ends with seq, so that a queue's oldest pending job
    # is found at the start of its pending entries: O(log n), where MIN(created_at) over the
    # pending jobs read every one of them (a quarter of a second, on three cores, at a million).
    # The counts still come from this index alone.
    """
    CREATE INDEX IF NOT EXISTS tqueues_jobs_queue_status_seq ON tqueues_jobs (queue, status, seq);
    DROP INDEX IF EXISTS tqueues_jobs_queue_status;
    """,
    # version 7: fewer index entries per job. Events are appended in ts order, so a BRIN index
    # (a few pages, nothing written for rows appended to the newest range) serves the prune's
    # ts < cutoff as well as a B-tree that took an entry for every event. Executions pages keep
    # room for the new version of each row, so finishing an execution (no indexed column
    # changes) is a HOT update, without a new primary-key entry.
    """
    CREATE INDEX IF NOT EXISTS tqueues_events_ts_brin ON tqueues_events USING brin (ts);
    DROP INDEX IF EXISTS tqueues_events_ts;
    ALTER TABLE tqueues_executions SET (fillfactor = 50);
    """,
    # version 8: event seqs come from a counter row, which a writer updates in the statement
    # that inserts its events. The row stays locked until that transaction ends, so seqs are
    # given in commit order with no gap, as the advisory lock and MAX(seq) gave them before,
    # in one round trip instead of two. (Dispatchers of older versions take the advisory lock:
    # stop them before starting this one.)
    f"""
    CREATE TABLE IF NOT EXISTS tqueues_event_seq (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        last BIGINT NOT NULL
    );
    SELECT pg_advisory_xact_lock({EVENT_LOCK});
    INSERT INTO tqueues_event_seq (one, last) SELECT TRUE, COALESCE(MAX(seq), 0) FROM tqueues_events
        ON CONFLICT (one) DO NOTHING;
    """,
    # version 9: event documents are json (kept as written), not jsonb. They are only ever read
    # back whole, and jsonb's conversion was about 40% of the server's work for an insert of
    # events. The change rewrites the events table once (prune it first if it is very large).
    """
    ALTER TABLE tqueues_events ALTER COLUMN doc TYPE json USING doc::json;
    """,
    # version 10: an execution row is written once, when its attempt ends (the running attempt
    # is read from the job row), so its pages no longer keep room for an update. Dispatchers of
    # older versions, which write the row at the claim and only update it at the end, refuse
    # this schema: stop them before starting this one.
    """
    ALTER TABLE tqueues_executions SET (fillfactor = 100);
    """,
    # version 11: each queue's count of jobs per status, as rows of changes that add up to it.
    # Every write appends the changes of status it made, in its own transaction (one row per
    # queue and status it changed): appended rows lock nothing another writer waits for, where
    # one row per count would serialize every writer on it. The lease reaper folds the rows
    # into one per count. The jobs are counted once here; dispatchers of older versions, which
    # do not append, refuse this schema: stop them before starting this one.
    """
    CREATE TABLE IF NOT EXISTS tqueues_queue_counts (
        id BIGSERIAL PRIMARY KEY,
        queue TEXT NOT NULL,
        status TEXT NOT NULL,
        n BIGINT NOT NULL
    );
    DELETE FROM tqueues_queue_counts;
    INSERT INTO tqueues_queue_counts (queue, status, n)
        SELECT queue, status, COUNT(*) FROM tqueues_jobs GROUP BY queue, status;
    """,
]

# The changes of a group's job statuses: parameters queues, statuses, deltas (arrays).
_COUNT = ("INSERT INTO tqueues_queue_counts (queue, status, n)"
          " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])")


def _count_arrays(moves: list[tuple[str, str, int]]) -> tuple[list[str], list[str], list[int]]:
    """_COUNT's arrays (queues, statuses, deltas) for ``(queue, status, delta)`` rows (net_moves)."""
    return [m[0] for m in moves], [m[1] for m in moves], [m[2] for m in moves]


# The counts with more than one row, each folded into one (none left when it adds up to 0; an
# idle database rewrites nothing). One statement: the rows it deletes are exactly the rows it
# adds up, so a fold running beside another (another dispatcher's) or beside writers keeps
# every total.
_FOLD_COUNTS = ("WITH d AS (DELETE FROM tqueues_queue_counts WHERE (queue, status) IN"
                "   (SELECT queue, status FROM tqueues_queue_counts GROUP BY queue, status HAVING COUNT(*) > 1)"
                "   RETURNING queue, status, n)"
                " INSERT INTO tqueues_queue_counts (queue, status, n)"
                " SELECT queue, status, SUM(n) FROM d GROUP BY queue, status HAVING SUM(n) <> 0")

COLS = ", ".join(JOB_KEYS)

# An attempt's execution row is written once, when the attempt ends (finished, failed, lost or
# aborted); while it runs, the job row holds everything about it (attempts, worker, lease,
# started_at) and executions() reads it from there: one row written per attempt instead of an
# insert at the claim and an update at the end. The upsert replaces a row an older version
# wrote when the attempt started.
_END_ATTEMPTS = "INSERT INTO tqueues_executions (job_id, attempt, worker, lease, status, started_at, finished_at, error)"
_REPLACE_ATTEMPT = ("ON CONFLICT (job_id, attempt) DO UPDATE SET worker = excluded.worker, lease = excluded.lease,"
                    " status = excluded.status, started_at = excluded.started_at, finished_at = excluded.finished_at,"
                    " error = excluded.error")
_END_ATTEMPT = f"{_END_ATTEMPTS} VALUES ($1, $2, $3, $4, $5, $6, $7, $8) {_REPLACE_ATTEMPT}"


_CLAIM_READS = ", ".join(f"j.{k}" for k in CLAIM_READS)   # then j.seq: see _claim
_CLAIM_VALUES = claimed_values(1)

# Finish the started jobs whose lease matches, in one round trip: parameters now, then
# {arrays} (_arrays of ids, results as JSON text, leases, from $2); returns the jobs as
# finished (result aside: the caller has it) and writes the rows of their executions.
_FINISH = ("WITH f AS (SELECT * FROM unnest({arrays}) AS f(id, result, lease)),"
           " jobs AS (UPDATE tqueues_jobs j SET status = 'finished', result = f.result::jsonb, error = NULL,"
           "   lease = NULL, lease_expires = NULL, finished_at = $1, updated_at = $1 FROM f"
           "   WHERE j.id = f.id AND j.lease = f.lease AND j.status = 'started'"
           "   RETURNING " + ", ".join(f"j.{k}" for k in JOB_KEYS if k != "result") + ", NULL::jsonb AS result,"
           "   f.lease AS attempt_lease),"
           " e AS (" + _END_ATTEMPTS + " SELECT id, attempts, worker, attempt_lease, 'finished', started_at, $1, NULL"
           "   FROM jobs " + _REPLACE_ATTEMPT + ")"
           " SELECT * FROM jobs")
# The same for jobs whose documents the store kept from their claim (base.ClaimedDocs), whose
# rows must also be unchanged since (updated_at as claimed): arrays of ids, results, leases and
# updated_at; returns only the ids of the jobs it finished.
_FINISH_KNOWN = ("WITH f AS (SELECT * FROM unnest({arrays}) AS f(id, result, lease, updated_at)),"
                 " jobs AS (UPDATE tqueues_jobs j SET status = 'finished', result = f.result::jsonb, error = NULL,"
                 "   lease = NULL, lease_expires = NULL, finished_at = $1, updated_at = $1 FROM f"
                 "   WHERE j.id = f.id AND j.lease = f.lease AND j.status = 'started' AND j.updated_at = f.updated_at"
                 "   RETURNING j.id, j.attempts, j.worker, j.started_at, f.lease AS attempt_lease),"
                 " e AS (" + _END_ATTEMPTS + " SELECT id, attempts, worker, attempt_lease, 'finished', started_at, $1, NULL"
                 "   FROM jobs " + _REPLACE_ATTEMPT + ")"
                 " SELECT id FROM jobs")
JSON_COLS = frozenset({"args", "kwargs", "data", "result", "error"})

Event = tuple[str, str | None, str | None, dict[str, Any]]


def _disconnected(exc: BaseException) -> bool:
    """True for errors that mean the server is unreachable rather than the query wrong."""
    if isinstance(exc, (OSError, asyncio.TimeoutError, ConnectionError)):
        return True
    if asyncpg is None:
        return False
    return isinstance(exc, (asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.InterfaceError,
                            asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.AdminShutdownError,
                            asyncpg.exceptions.CrashShutdownError, asyncpg.exceptions.ConnectionFailureError))


def _unavailable(exc: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"PostgreSQL is unreachable: {type(exc).__name__}: {exc}")


# New jobs go in as one INSERT ... SELECT over column arrays (a statement per batch, not per
# row: a tenth of the server's work per job); the columns every new job has alike are constants.
# ORDER BY keeps the batch's order in seq, which claims follow.
# Arrays go to the server packed in one text each, split there by string_to_array: asyncpg
# encodes a list parameter element by element, with isinstance checks against abstract base
# classes for each (about half a microsecond an element: a third of the dispatcher's time for
# a batch of 1,000 jobs). Unit separator between values, record separator for NULL; both are
# escaped in JSON text, and a column in which either could be misread goes as a real array.
_SEP, _NUL = "\x1f", "\x1e"
_SPLIT = "string_to_array(${n}::text, chr(31), chr(30))::{kind}[]"
_PACKABLE = {str, int, float, type(None)}


def _packed(values: Sequence[Any]) -> str | None:
    """``values`` (str, int, finite float or None) as one text for _SPLIT; None when one of
    them cannot be told apart once packed."""
    try:
        text = _SEP.join(values)   # all strings, the usual: joined in one call
    except TypeError:
        kinds = set(map(type, values))
        if not kinds <= _PACKABLE or (float in kinds and not math.isfinite(sum(v for v in values if type(v) is float))):
            return None   # (a sum too large for a float only sends the column as an array)
        texts = [_NUL if v is None else v if type(v) is str else repr(v) for v in values]
        if texts.count(_NUL) != values.count(None):
            return None
        text = _SEP.join(texts)
    else:
        if _NUL in values:
            return None
    if text.count(_SEP) != len(values) - 1 or (not text and values):
        return None
    return text


def _arrays(kinds: Sequence[str], columns: Sequence[Sequence[Any]], first: int) -> tuple[str, list[Any]]:
    """The SQL of array parameters ``$first``... of the given element kinds (comma-separated)
    and their arguments: all packed in texts (see _SEP), or, when one column cannot be, all as
    arrays."""
    packed = [_packed(column) for column in columns]
    if all(text is not None for text in packed):
        return ", ".join(_SPLIT.format(n=n, kind=kind) for n, kind in enumerate(kinds, start=first)), packed
    return ", ".join(f"${n}::{kind}[]" for n, kind in enumerate(kinds, start=first)), [list(c) for c in columns]


_NEW_JOB_ARRAYS = (("id", "text"), ("queue", "text"), ("method", "text"), ("args", "text"), ("kwargs", "text"),
                   ("priority", "int"), ("run_at", "float8"), ("max_attempts", "int"), ("timeout", "float8"),
                   ("backoff", "float8"), ("data", "text"), ("key", "text"), ("secrets", "text"))
_INSERT_NEW_JOBS = (   # {arrays}: _arrays() of _NEW_JOB_ARRAYS from $2
    "INSERT INTO tqueues_jobs (id, queue, method, args, kwargs, status, priority, run_at, attempts, max_attempts,"
    " timeout, backoff, data, key, secrets, created_at, updated_at)"
    " SELECT u.id, u.queue, u.method, u.args::jsonb, u.kwargs::jsonb, 'pending', u.priority, u.run_at, 0,"
    " u.max_attempts, u.timeout, u.backoff, u.data::jsonb, u.key, u.secrets::jsonb, $1, $1"
    " FROM unnest({arrays})"
    " WITH ORDINALITY AS u(" + ", ".join(name for name, _ in _NEW_JOB_ARRAYS) + ", n) ORDER BY u.n")
_JSON_ARRAYS = frozenset({"args", "kwargs", "data", "secrets"})

# One new job in one statement, its own transaction: for enqueue_and_claim ($25 true) the job
# goes in already leased to the waiting claim when it is that claim's first pick (t.take: its
# queue is not paused and no ready job of the claim's queues ranks before it), else pending;
# with its events (job.created, and job.started when leased) under seqs from
# the counter row, and NOTIFY. A plain enqueue of one job without a key ($25 false) is the same
# statement, never leasing.
_INSERT_LEASED = (   # $1-$13: _NEW_JOB_ARRAYS' columns of the one job (as values, not arrays)
    "WITH {queue}t AS (SELECT $25::boolean AND NOT EXISTS (SELECT 1 FROM tqueues_queues WHERE name = $2 AND paused)"
    "   AND NOT EXISTS (SELECT 1 FROM tqueues_jobs WHERE status = 'pending' AND queue = ANY($15::text[])"
    "     AND queue NOT IN (SELECT name FROM tqueues_queues WHERE paused)"
    "     AND run_at <= $14 AND priority >= $6 AND (priority > $6 OR run_at <= $7)) AS take),"
    " j AS (INSERT INTO tqueues_jobs (id, queue, method, args, kwargs, status, priority, run_at, attempts,"
    "   max_attempts, timeout, backoff, data, key, secrets, created_at, updated_at, lease, lease_expires, worker,"
    "   started_at)"
    "   SELECT $1, $2, $3, $4::text::jsonb, $5::text::jsonb, CASE WHEN t.take THEN 'started' ELSE 'pending' END, $6, $7,"
    "   CASE WHEN t.take THEN 1 ELSE 0 END, $8, $9, $10, $11::text::jsonb, $12, $13::text::jsonb, $14, $14,"
    "   CASE WHEN t.take THEN $16 END, CASE WHEN t.take THEN $17::float8 END, CASE WHEN t.take THEN $18 END,"
    "   CASE WHEN t.take THEN $14 END FROM t),"
    " s AS (UPDATE tqueues_event_seq SET last = last + (SELECT CASE WHEN take THEN 2 ELSE 1 END FROM t)"
    "   RETURNING last),"
    " e AS (INSERT INTO tqueues_events (seq, ts, kind, queue, job_id, doc)"
    "   SELECT s.last - (CASE WHEN t.take THEN 2 ELSE 1 END) + v.n, $19, v.kind, $2, $1, v.doc::json"
    "   FROM s, t, (VALUES (1, $20::text, $22::text), (2, $21::text, $23::text)) AS v(n, kind, doc)"
    "   WHERE v.n = 1 OR t.take),"
    " c AS (INSERT INTO tqueues_queue_counts (queue, status, n)"
    "   SELECT $2, CASE WHEN t.take THEN 'started' ELSE 'pending' END, 1 FROM t)"
    " SELECT t.take, s.last FROM t, s, pg_notify($24, s.last::text)")
# ... for the first job of a queue this dispatcher has not seen yet: its queue row too
_NEW_QUEUE = ("nq AS (INSERT INTO tqueues_queues (name, paused, created_at, updated_at)"
              " VALUES ($2, FALSE, $14, $14) ON CONFLICT (name) DO NOTHING), ")


def _new_job_columns(docs: list[dict[str, Any]]) -> list[list[Any]]:
    """The arrays _INSERT_NEW_JOBS takes for ``docs`` (new job documents), JSON as text."""
    return [[None if doc[name] is None else models.json_column(doc[name]) for doc in docs] if name in _JSON_ARRAYS
            else [doc[name] for doc in docs]
            for name, _ in _NEW_JOB_ARRAYS]


def row_to_job(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in JOB_KEYS}


async def _keep_session(conn: Any) -> None:
    """What the pool does to a connection given back (asyncpg has already ended any open
    transaction): nothing more. Reads set no session state, take no advisory lock and LISTEN
    on none of them, so asyncpg's default reset (RESET ALL, UNLISTEN *, ...) would only cost a
    round trip per read."""


async def _init_connection(conn: Any) -> None:
    await conn.set_type_codec("jsonb", encoder=models.dumps_str, decoder=models.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=models.dumps_str, decoder=models.loads, schema="pg_catalog")


# Errors that say nothing about the operation, only about its timing against another
# transaction: the operation runs again (once) instead of failing.
_RETRYABLE: tuple[type[BaseException], ...] = (
    (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError) if asyncpg is not None else ())


class _OperationFailed(Exception):
    """An operation of a group run without savepoints raised ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _Tx(Changes):
    """What a write operation sees: the connection, and what it collects for the transaction
    (its events, and its jobs' changes of status, appended to tqueues_queue_counts with the
    events; an operation that inserts its own events, as _INSERT_LEASED does, appends its own
    counts too)."""

    __slots__ = ("conn", "after_commit", "published")

    def __init__(self, conn: Any) -> None:
        super().__init__()
        self.conn = conn
        self.after_commit: list[Callable[[], None]] = []   # run once the transaction committed
        self.published: list[dict[str, Any]] = []   # events the operation inserted itself, in seq order


Op = Callable[[_Tx], Awaitable[Any]]


def _one_statement(op: Op) -> Op:
    """Mark ``op`` as one statement that inserts its own events (into ``tx.published``): alone
    in its group, it runs outside a transaction block, as its own implicit transaction, which
    saves the BEGIN and COMMIT round trips; in a group, it runs inside the group's transaction
    like any other operation."""
    op.one_statement = True  # type: ignore[attr-defined]
    return op


class PostgresStore(Store):
    """Jobs in PostgreSQL, shared by any number of dispatchers (see the module docstring)."""

    scheme = "postgresql"
    shared = True

    def __init__(self, url: str, pool_size: int | None = None) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        size = query.pop("pool_size", None)
        self.pool_size = pool_size or int(size or 10)
        if self.pool_size < 2:
            raise ConfigurationError("pool_size must be at least 2")
        self._claimed = ClaimedDocs()   # what this dispatcher claimed, for the finish (see ClaimedDocs)
        self.dsn = urlunsplit(parts._replace(scheme="postgresql", query="&".join(f"{k}={v}" for k, v in query.items())))
        self._pool: Any = None
        self._writer_conns: list[Any] = [None] * WRITERS
        self._take_lock = asyncio.Lock()     # see _write_loop
        self._failed_recently = False   # an operation of the last group raised: use savepoints
        self._queues_known: set[str] = set()
        self._ops: asyncio.Queue[tuple[Op, asyncio.Future[Any]] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._cursor = 0                       # last seq published to subscribers
        self._catch_up_needed = asyncio.Event()
        # A NOTIFY of our own commit often arrives (on the listening connection) before the
        # commit's answer: while our groups are being written, a notified seq waits for them
        # (see _on_notify) instead of costing a read of events we are about to publish.
        self._groups_running = 0
        self._notified = 0
        self._notify_timer: asyncio.TimerHandle | None = None
        self._listener: Any = None
        self._connect_lock = asyncio.Lock()

    # ------------------------------------------------------------------ plumbing

    async def _open(self) -> None:
        if asyncpg is None:
            raise ConfigurationError("the PostgreSQL store needs asyncpg: pip install 'tqueues[postgres]'")
        try:
            await self._ensure_pool()
            async with self._pool.acquire() as conn:
                await migrate(conn)
                self._cursor = await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM tqueues_events")
        except TQueuesError:
            raise
        except Exception as exc:
            if _disconnected(exc) or isinstance(exc, asyncpg.PostgresError):
                raise StoreUnavailable(f"cannot open PostgreSQL store {redact(self.dsn)}: {exc}") from None
            raise
        self._tasks = [*(asyncio.ensure_future(self._write_loop(slot)) for slot in range(WRITERS)),
                       asyncio.ensure_future(self._listen_loop()), asyncio.ensure_future(self._catch_up_loop())]

    async def _close(self) -> None:
        if self._notify_timer is not None:
            self._notify_timer.cancel()
            self._notify_timer = None
        for _ in range(WRITERS):
            await self._ops.put(None)
        for task in self._tasks[WRITERS:]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        self._tasks = []
        for conn in (*self._writer_conns, self._listener):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
        self._writer_conns = [None] * WRITERS
        self._listener = None
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 10)
            self._pool = None

    async def _ensure_pool(self) -> None:
        async with self._connect_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                                       init=_init_connection, reset=_keep_session,
                                                       command_timeout=60, timeout=5,
                                                       server_settings=SERVER_SETTINGS)

    async def _connect(self) -> Any:
        conn = await asyncpg.connect(self.dsn, timeout=5, command_timeout=60, server_settings=SERVER_SETTINGS)
        await _init_connection(conn)
        return conn

    async def _read(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            await self._ensure_pool()
            async with self._pool.acquire(timeout=10) as conn:
                return await fn(conn)
        except TQueuesError:
            raise
        except Exception as exc:
            if _disconnected(exc):
                raise _unavailable(exc) from None
            raise

    async def _write(self, fn: Op) -> Any:
        if not self._tasks:
            raise StoreUnavailable("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._ops.put((fn, future))
        return await future

    async def _write_loop(self, slot: int) -> None:
        """One of WRITERS loops, each with its own connection: while one group's statements
        and commit are on their way, the next group is already being written by another. They
        coordinate as dispatchers sharing a database do (claims skip rows locked by another
        transaction, completions lock their rows in id order, event seqs come from the counter
        row in commit order); our own events are published in seq order either way (see
        _publish_in_order).

        One writer at a time waits for operations (the take lock): operations submitted
        together, such as an enqueue and the claims of the workers it wakes, are taken
        together into one group rather than split between the two."""
        while True:
            async with self._take_lock:
                first = await self._ops.get()
                if first is None:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_GROUP and not self._ops.empty():
                    item = self._ops.get_nowait()
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
            self._groups_running += 1
            try:
                await self._run_group(batch, slot)
            finally:
                self._groups_running -= 1
                if not self._groups_running and self._notified > self._cursor:
                    self._catch_up_needed.set()   # notified of a commit that was not ours
            if stop:
                return

    async def _run_group(self, batch: list[tuple[Op, asyncio.Future[Any]]], slot: int) -> None:
        """One transaction for every operation waiting. Optimistically without savepoints
        (each is two round trips per operation); if an operation raises, the transaction is
        rolled back and the group runs again with one savepoint per operation, so the one that
        failed rolls back alone."""
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        published: list[dict[str, Any]] = []
        try:
            conn = self._writer_conns[slot]
            if conn is None or conn.is_closed():
                conn = self._writer_conns[slot] = await self._connect()
            if len(batch) == 1 and getattr(batch[0][0], "one_statement", False):
                tx = _Tx(conn)
                try:
                    results = [(batch[0][1], True, await batch[0][0](tx))]
                    published = tx.published
                    for hook in tx.after_commit:
                        hook()
                except Exception as exc:
                    if _disconnected(exc):
                        raise
                    results = [(batch[0][1], False, exc)]
            elif len(batch) == 1:   # alone in its transaction: a failure rolls back just it
                for attempt in range(2):
                    try:
                        results, published = await self._attempt_group(conn, batch, savepoints=False)
                        break
                    except _OperationFailed as failed:
                        results, published = [(batch[0][1], False, failed.error)], []
                        if attempt or not isinstance(failed.error, _RETRYABLE):
                            break
                        # Chosen as a deadlock's victim (or a serialization failure): the
                        # other transaction has ended by now, so the operation runs again.
            else:
                savepoints = self._failed_recently
                try:
                    results, published = await self._attempt_group(conn, batch, savepoints=savepoints)
                    self._failed_recently = False
                except _OperationFailed:
                    self._failed_recently = True
                    results, published = await self._attempt_group(conn, batch, savepoints=True)
        except Exception as exc:
            if not _disconnected(exc) and not isinstance(exc, asyncpg.PostgresError):
                log.exception("write transaction failed")
            else:
                log.warning("write transaction failed: %s", exc)
            conn = self._writer_conns[slot]
            if conn is not None and (_disconnected(exc) or conn.is_closed()):
                with contextlib.suppress(Exception):
                    conn.terminate()
                self._writer_conns[slot] = None
            error = _unavailable(exc) if _disconnected(exc) else StoreUnavailable(f"PostgreSQL write failed: {exc}")
            results = [(future, False, error) for _, future in batch]
            published = []
        for future, success, value in results:
            if not future.done():
                if success:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        if published:
            self._publish_in_order(published)

    async def _attempt_group(self, conn: Any, batch: list[tuple[Op, asyncio.Future[Any]]], savepoints: bool
                             ) -> tuple[list[tuple[asyncio.Future[Any], bool, Any]], list[dict[str, Any]]]:
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        published: list[dict[str, Any]] = []
        committed: list[Callable[[], None]] = []
        async with conn.transaction():
            events: list[Event] = []
            landed: list[_Tx] = []   # the operations that did not fail
            inserted: list[dict[str, Any]] = []   # by operations themselves: their seqs come first
            for fn, future in batch:
                tx = _Tx(conn)
                try:
                    if savepoints:
                        async with conn.transaction():   # a savepoint: one failure rolls back alone
                            value = await fn(tx)
                    else:
                        value = await fn(tx)
                except Exception as exc:
                    if _disconnected(exc):
                        raise
                    if not savepoints:
                        raise _OperationFailed(exc) from exc   # rolls the transaction back
                    results.append((future, False, exc))
                else:
                    results.append((future, True, value))
                    events.extend(tx.events)
                    inserted.extend(tx.published)
                    committed.extend(tx.after_commit)
                    landed.append(tx)
            moves = net_moves(landed)
            if events:
                published = inserted + await self._insert_events(conn, events, moves)
            else:
                published = inserted
                if moves:   # (a prune)
                    await conn.execute(_COUNT, *_count_arrays(moves))
        for hook in committed:
            hook()
        return results, published

    async def _insert_events(self, conn: Any, events: list[Event], moves: list[tuple[str, str, int]]
                             ) -> list[dict[str, Any]]:
        # One statement takes the seqs from the counter row (locked until commit: writers of
        # every dispatcher get theirs in commit order), inserts the events and NOTIFYs, and
        # appends the changes of the queues' counts (``moves``, net_moves) that the events made.
        ts = models.now()
        sql, args = _arrays(("text",) * 4, ([e[0] for e in events], [e[1] for e in events], [e[2] for e in events],
                                            [models.dumps_str(stored_event_doc(e[3])) for e in events]), 2)
        counts = (" c AS (INSERT INTO tqueues_queue_counts (queue, status, n)"
                  " SELECT * FROM unnest($8::text[], $9::text[], $10::bigint[])),") if moves else ""
        last = await conn.fetchval(
            f"WITH{counts} s AS (UPDATE tqueues_event_seq SET last = last + $7 RETURNING last),"
            " ins AS (INSERT INTO tqueues_events (seq, ts, kind, queue, job_id, doc)"
            "   SELECT s.last - $7 + e.n, $1, e.kind, e.queue, e.job_id, e.doc::json"
            f"   FROM s, unnest({sql}) WITH ORDINALITY AS e(kind, queue, job_id, doc, n))"
            " SELECT s.last FROM s, pg_notify($6, s.last::text)",
            ts, *args, CHANNEL, len(events), *(_count_arrays(moves) if moves else ()))
        first = int(last) - len(events) + 1
        return [{"seq": first + offset, "ts": ts, "kind": kind, "queue": queue, "job_id": job_id, "new_val": doc}
                for offset, (kind, queue, job_id, doc) in enumerate(events)]

    # ------------------------------------------------------------------ live events

    def _publish_in_order(self, events: list[dict[str, Any]]) -> None:
        """Publish our own committed events unless another dispatcher's are missing before them."""
        if events[0]["seq"] == self._cursor + 1:
            self._cursor = events[-1]["seq"]
            self._publish(events)
        elif events[-1]["seq"] > self._cursor:
            self._catch_up_needed.set()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            seq = int(payload)
        except ValueError:
            seq = self._cursor + 1
        if seq <= self._cursor:
            return
        if not self._groups_running:
            self._catch_up_needed.set()
            return
        # Likely our own commit, whose answer is on its way: the group's end decides (and,
        # should our groups follow one another without a pause, NOTIFY_WAIT at the latest).
        self._notified = max(self._notified, seq)
        if self._notify_timer is None:
            self._notify_timer = asyncio.get_running_loop().call_later(NOTIFY_WAIT, self._notify_due)

    def _notify_due(self) -> None:
        self._notify_timer = None
        if self._notified > self._cursor:
            self._catch_up_needed.set()

    async def _listen_loop(self) -> None:
        delay = 0.1
        while True:
            try:
                self._listener = await self._connect()
                await self._listener.add_listener(CHANNEL, self._on_notify)
                delay = 0.1
                self._catch_up_needed.set()      # whatever was missed while not listening
                while not self._listener.is_closed():
                    await asyncio.sleep(POLL_INTERVAL)
                    self._catch_up_needed.set()  # the slow poll that backs NOTIFY up
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event listener: %s; reconnecting in %.1f s", exc, delay)
            finally:
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        self._listener.terminate()
                    self._listener = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _catch_up_loop(self) -> None:
        while True:
            await self._catch_up_needed.wait()
            self._catch_up_needed.clear()
            try:
                while True:
                    events = await self._events_since(self._cursor, 1000, None, None)
                    events = [e for e in events if e["seq"] > self._cursor]
                    if not events:
                        break
                    self._cursor = events[-1]["seq"]
                    self._publish(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("catching up on events failed: %s", exc)
                await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    async def _fetch(conn: Any, job_id: str, lock: bool = False) -> dict[str, Any] | None:
        row = await conn.fetchrow(f"SELECT {COLS} FROM tqueues_jobs WHERE id = $1{' FOR UPDATE' if lock else ''}", job_id)
        return row_to_job(row) if row else None

    @classmethod
    async def _require(cls, conn: Any, job_id: str, lock: bool = False) -> dict[str, Any]:
        job = await cls._fetch(conn, job_id, lock)
        if job is None:
            raise JobNotFound(f"no job has id {job_id!r}", id=job_id)
        return job

    async def _update(self, conn: Any, job_id: str, sets: str, *values: Any, where: str = "") -> dict[str, Any] | None:
        """``UPDATE … SET sets WHERE id = $1 where RETURNING *``; ``values`` fill $2, $3, …"""
        self._claimed.forget(job_id)   # whatever this write does, the claimed document is no longer the row
        row = await conn.fetchrow(f"UPDATE tqueues_jobs SET {sets} WHERE id = $1 {where} RETURNING {COLS}", job_id, *values)
        return row_to_job(row) if row else None

    async def _ensure_queues(self, tx: "_Tx", names: set[str], now: float) -> None:
        """Create the queues not known to exist. Queues are never deleted, so a name this
        dispatcher has seen committed needs no round trip again."""
        missing = names - self._queues_known
        if not missing:
            return
        await tx.conn.execute(
            "INSERT INTO tqueues_queues (name, paused, created_at, updated_at)"
            " SELECT unnest($1::text[]), FALSE, $2, $2 ON CONFLICT (name) DO NOTHING", sorted(missing), now)
        tx.after_commit.append(lambda: self._queues_known.update(missing))

    # ------------------------------------------------------------------ producers

    async def _enqueue(self, jobs: list[models.NewJob], now: float) -> list[tuple[dict[str, Any], bool]]:
        if len(jobs) == 1 and jobs[0].key is None:   # one by one: one statement, one round trip
            doc, _ = await self._insert_one(jobs[0], now, None)
            return [(doc, True)]

        async def op(tx: _Tx) -> list[tuple[dict[str, Any], bool]]:
            conn = tx.conn
            out: list[tuple[dict[str, Any], bool] | None] = [None] * len(jobs)
            keys = sorted({j.key for j in jobs if j.key is not None})
            existing: dict[str, dict[str, Any]] = {}
            if keys:
                for row in await conn.fetch(f"SELECT {COLS} FROM tqueues_jobs WHERE key = ANY($1::text[])", keys):
                    existing[row["key"]] = row_to_job(row)
            inserted: list[dict[str, Any]] = []
            ids = models.new_ids(len(jobs))
            for index, spec in enumerate(jobs):
                if spec.key is not None and spec.key in existing:
                    out[index] = (existing[spec.key], False)
                    continue
                doc = new_job(spec, now, ids[index])
                if spec.key is not None:
                    existing[spec.key] = doc
                inserted.append(doc)
                out[index] = (doc, True)
                tx.emit(models.EV_CREATED, doc, None)
            await self._ensure_queues(tx, {spec.queue for spec in jobs}, now)
            if inserted:
                # A key taken by a concurrent dispatcher since the check fails this operation alone.
                sql, args = _arrays([kind for _, kind in _NEW_JOB_ARRAYS], _new_job_columns(inserted), 2)
                await conn.execute(_INSERT_NEW_JOBS.replace("{arrays}", sql), now, *args)
            return out  # type: ignore[return-value]

        try:
            return await self._write(op)
        except asyncpg.UniqueViolationError:
            # Another dispatcher inserted one of the keys meanwhile: now they exist, answer them.
            return await self._write(op)

    async def _get(self, job_id: str) -> dict[str, Any]:
        return await self._read(lambda conn: self._require(conn, job_id))

    async def _list_jobs(self, queue: str | None, status: str | None, method: str | None,
                         limit: int, before: str | None, text: str | None = None) -> list[dict[str, Any]]:
        async def read(conn: Any) -> list[dict[str, Any]]:
            where, params = [], []
            for column, value in (("queue", queue), ("status", status), ("method", method)):
                if value is not None:
                    params.append(value)
                    where.append(f"{column} = ${len(params)}")
            if text is not None:
                params.append("%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
                n = len(params)
                where.append(f"(id ILIKE ${n} OR method ILIKE ${n} OR key ILIKE ${n} OR args::text ILIKE ${n}"
                             f" OR error::text ILIKE ${n})")
            if before is not None:
                seq = await conn.fetchval("SELECT seq FROM tqueues_jobs WHERE id = $1", before)
                if seq is None:
                    raise JobNotFound(f"before: no job has id {before!r}", id=before)
                params.append(seq)
                where.append(f"seq < ${len(params)}")
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            params.append(limit)
            rows = await conn.fetch(f"SELECT {COLS} FROM tqueues_jobs {clause} ORDER BY seq DESC LIMIT ${len(params)}", *params)
            return [row_to_job(r) for r in rows]

        return await self._read(read)

    async def _executions(self, job_id: str) -> list[dict[str, Any]]:
        async def read(conn: Any) -> list[dict[str, Any]]:
            job = await self._require(conn, job_id)
            rows = await conn.fetch("SELECT job_id, attempt, worker, status, started_at, finished_at, error"
                                    " FROM tqueues_executions WHERE job_id = $1 ORDER BY attempt", job_id)
            return with_running_attempt(job, [dict(r) for r in rows])

        return await self._read(read)

    async def _update_data(self, job_id: str, data: dict[str, Any], lease: str | None, now: float) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            job = await self._require(tx.conn, job_id, lock=True)
            if lease is not None and (job["lease"] != lease or job["status"] != models.STARTED):
                raise LeaseConflict(id=job_id)
            job = await self._update(tx.conn, job_id, "data = data || $2::jsonb, updated_at = $3", data, now)
            assert job is not None
            tx.emit(models.EV_UPDATED, job, job["status"])
            return job

        return await self._write(op)

    async def _abort(self, job_id: str, now: float) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            job = await self._require(tx.conn, job_id, lock=True)
            if job["status"] in models.TERMINAL:
                raise Conflict(f"job {job_id} already ended {job['status']}", id=job_id, status=job["status"])
            error = models.error_doc("JobAborted", "the job was aborted")
            was = job["status"]
            if was == models.STARTED:
                await tx.conn.execute(_END_ATTEMPT, *ended_attempt(job, models.EXEC_ABORTED, now, error))
            job = await self._update(tx.conn, job_id, "status = 'aborted', lease = NULL, lease_expires = NULL,"
                                     " error = $2, finished_at = $3, updated_at = $3", error, now)
            assert job is not None
            tx.emit(models.EV_ABORTED, job, was)
            return job

        return await self._write(op)

    async def _retry(self, job_id: str, now: float) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            job = await self._require(tx.conn, job_id, lock=True)
            was = job["status"]
            if was not in (models.FAILED, models.ABORTED):
                raise Conflict(f"job {job_id} is {was}; only failed or aborted jobs can be retried",
                               id=job_id, status=was)
            job = await self._update(tx.conn, job_id, "status = 'pending', run_at = $2,"
                                     " max_attempts = GREATEST(max_attempts, attempts + 1), lease = NULL,"
                                     " lease_expires = NULL, worker = NULL, finished_at = NULL, updated_at = $2", now)
            assert job is not None
            tx.emit(models.EV_RETRYING, job, was)
            return job

        return await self._write(op)

    async def _ended_since(self, since: float) -> dict[str, int]:
        async def read(conn: Any) -> dict[str, int]:
            rows = await conn.fetch("SELECT status, COUNT(*) AS n FROM tqueues_jobs WHERE finished_at >= $1 GROUP BY status", since)
            return {r["status"]: r["n"] for r in rows}

        return await self._read(read)

    async def _ended_series(self, since: float, step: float) -> list[tuple[int, str, int]]:
        async def read(conn: Any) -> list[tuple[int, str, int]]:
            rows = await conn.fetch("SELECT floor((finished_at - $1) / $2)::int AS b, status, COUNT(*) AS n"
                                    " FROM tqueues_jobs WHERE finished_at >= $1 GROUP BY b, status", since, step)
            return [(r["b"], r["status"], r["n"]) for r in rows]

        return await self._read(read)

    # ------------------------------------------------------------------ workers

    async def _claim(self, queues: list[str], worker: str, limit: int, lease_seconds: float,
                     now: float, lease_prefix: str = "") -> list[dict[str, Any]]:
        async def op(tx: _Tx) -> list[dict[str, Any]]:
            conn = tx.conn
            lease = lease_prefix + secrets.token_hex(16)
            # One queue (the usual case) is an equality, so the ready index is walked in order and
            # the walk stops after `limit` rows; `= ANY(...)` makes PostgreSQL sort every ready job.
            match = "queue = $5::text" if len(queues) == 1 else "queue = ANY($5::text[])"
            rows = await conn.fetch(
                f"UPDATE tqueues_jobs j SET status = 'started', attempts = j.attempts + 1, lease = $1,"
                f" lease_expires = $2, worker = $3, started_at = $4, updated_at = $4"
                f" FROM (SELECT seq FROM tqueues_jobs WHERE status = 'pending' AND {match}"
                f"       AND run_at <= $4"
                f"       AND queue NOT IN (SELECT name FROM tqueues_queues WHERE paused)"
                f"       ORDER BY priority DESC, run_at, seq LIMIT $6 FOR UPDATE SKIP LOCKED) pick"
                f" WHERE j.seq = pick.seq RETURNING {_CLAIM_READS}, j.seq AS _order",
                lease, now + lease_seconds, worker, now, queues[0] if len(queues) == 1 else queues, limit)
            rows = sorted(rows, key=lambda r: (-r["priority"], r["run_at"], r["_order"]))
            # Only the columns the claim did not set are read back (see base.CLAIM_SETS).
            sets = claim_sets(lease, now + lease_seconds, worker, now)
            jobs = [dict(zip(JOB_KEYS, _CLAIM_VALUES(tuple(r) + sets))) for r in rows]
            for job in jobs:
                tx.emit(models.EV_STARTED, job, models.PENDING)
            if jobs:
                tx.after_commit.append(functools.partial(self._claimed.remember, jobs))
            return jobs

        return await self._write(op)

    async def _enqueue_and_claim(self, job: models.NewJob, queues: list[str], worker: str,
                                 lease_seconds: float, now: float, lease_prefix: str
                                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return await self._insert_one(job, now, (queues, worker, lease_seconds, lease_prefix))

    async def _insert_one(self, job: models.NewJob, now: float,
                          claim: tuple[list[str], str, float, str] | None
                          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One job without a key, in one statement (_INSERT_LEASED); leased to ``claim``
        (queues, worker, lease seconds, lease prefix) when it is that claim's first pick."""
        known = job.queue in self._queues_known
        sql = _INSERT_LEASED.format(queue="" if known else _NEW_QUEUE)
        (job_id,) = models.new_ids(1)
        doc = new_job(job, now, job_id)
        queues, worker, lease_seconds, lease_prefix = claim or ([], None, 0.0, "")
        lease = lease_prefix + secrets.token_hex(16) if claim else None
        leased = leased_new_job(doc, worker, lease, lease_seconds, now) if claim else None

        @_one_statement
        async def op(tx: _Tx) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            ts = models.now()
            if not known:
                tx.after_commit.append(lambda: self._queues_known.add(job.queue))
            row = await tx.conn.fetchrow(
                sql, *(column[0] for column in _new_job_columns([doc])), now, queues, lease,
                leased and leased["lease_expires"], worker, ts, models.EV_CREATED, models.EV_STARTED,
                models.dumps_str(stored_event_doc(doc)),
                leased and models.dumps_str(stored_event_doc(leased)), CHANNEL, leased is not None)
            handed = [leased] if row["take"] and leased is not None else []
            if handed:
                tx.after_commit.append(functools.partial(self._claimed.remember, handed))
            # (Not ``for job in handed``: Python 3.12.1 and 3.13.0 inline the comprehension and
            # then read ``job``, the argument used below, as an unbound local.)
            events = [(models.EV_CREATED, doc)] + [(models.EV_STARTED, started) for started in handed]
            first = int(row["last"]) - len(events) + 1
            tx.published = [{"seq": first + offset, "ts": ts, "kind": kind, "queue": job.queue, "job_id": job_id,
                             "new_val": event_doc_value}
                            for offset, (kind, event_doc_value) in enumerate(events)]
            return doc, handed

        return await self._write(op)

    async def _heartbeat(self, leases: list[tuple[str, str]], lease_seconds: float,
                         worker: str | None, now: float) -> list[dict[str, Any]]:
        async def op(tx: _Tx) -> list[dict[str, Any]]:
            expires = now + lease_seconds
            alive: set[tuple[str, str]] = set()
            if leases:
                # In id order, as completions lock their rows: a worker's heartbeat and its
                # completions may be written at once by two writers (or dispatchers).
                ordered = sorted(set(leases))
                sql, args = _arrays(("text", "text"), ([i for i, _ in ordered], [l for _, l in ordered]), 2)
                rows = await tx.conn.fetch(
                    f"UPDATE tqueues_jobs j SET lease_expires = $1 FROM unnest({sql}) AS l(id, lease)"
                    " WHERE j.id = l.id AND j.lease = l.lease AND j.status = 'started' RETURNING j.id, j.lease",
                    expires, *args)
                alive = {(r["id"], r["lease"]) for r in rows}
            if worker is not None:
                await tx.conn.execute("UPDATE tqueues_workers SET last_seen = $1 WHERE id = $2", now, worker)
            return [{"id": job_id, "ok": True, "lease_expires": expires} if (job_id, lease) in alive
                    else conflict(job_id, LeaseConflict.code, LeaseConflict.__doc__ or "")
                    for job_id, lease in leases]

        return await self._write(op)

    async def _complete(self, outcomes: list[Outcome], now: float) -> list[dict[str, Any]]:
        async def op(tx: _Tx) -> list[dict[str, Any]]:
            # The common case, a fenced completion that finished, is applied set-wise: one
            # statement finishes every job whose lease still matches (the fence is in its WHERE:
            # nothing is read or locked first) and writes the rows of their executions. Every
            # other outcome goes through _complete_one, in order, after it: a failure, an
            # unfenced completion, the second outcome of a job in the batch, and a finished one
            # the statement left alone (stale lease, unknown id), which it reports.
            # A job this store claimed and still remembers, unchanged since (same lease, same
            # updated_at), is finished by a statement that returns its id alone: its document is
            # the claimed one with the finish's changes. The others are read back as they are.
            conn = tx.conn
            chosen = fenced_finishes(outcomes)
            # In id order: rows are locked as the statement reaches them, and heartbeats and
            # completions written at once by another writer (or dispatcher) take them in id order.
            fast = sorted(chosen.items())
            finished: dict[str, dict[str, Any]] = {}
            take = self._claimed.take
            docs = {job_id: doc for job_id, i in fast if (doc := take(job_id, outcomes[i].lease)) is not None}
            if docs:
                known = [(job_id, i) for job_id, i in fast if job_id in docs]
                results = [models.jsonable_text(outcomes[i].result) for _, i in known]
                sql, args = _arrays(("text", "text", "text", "float8"),
                                    ([job_id for job_id, _ in known], [text for _, text in results],
                                     [outcomes[i].lease for _, i in known], [docs[job_id]["updated_at"] for job_id, _ in known]), 2)
                matched = {row["id"] for row in await conn.fetch(_FINISH_KNOWN.replace("{arrays}", sql), now, *args)}
                for k, (job_id, _) in enumerate(known):
                    if job_id in matched:
                        finished[job_id] = ClaimedDocs.finished(docs[job_id], results[k][0], now)
                fast = [(job_id, i) for job_id, i in fast if job_id not in matched]   # read back below
            if fast:
                results = [models.jsonable_text(outcomes[i].result) for _, i in fast]
                sql, args = _arrays(("text", "text", "text"), ([job_id for job_id, _ in fast], [text for _, text in results],
                                                              [outcomes[i].lease for _, i in fast]), 2)
                rows = await conn.fetch(_FINISH.replace("{arrays}", sql), now, *args)
                # The document carries the result as given (the value its JSON was made from),
                # as a single completion's does, rather than read back from jsonb.
                value_of = {job_id: results[k][0] for k, (job_id, _) in enumerate(fast)}
                for row in rows:
                    job = row_to_job(row)
                    job["result"] = value_of[job["id"]]
                    finished[job["id"]] = job
            out: list[dict[str, Any]] = []
            for i, outcome in enumerate(outcomes):
                job = finished.get(outcome.id) if chosen.get(outcome.id) == i else None
                if job is None:
                    out.append(await self._complete_one(tx, outcome, now))
                    continue
                tx.emit(models.EV_FINISHED, job, models.STARTED)
                out.append(ok(job))
            return out

        return await self._write(op)

    async def _complete_one(self, tx: _Tx, outcome: Outcome, now: float) -> dict[str, Any]:
        conn = tx.conn
        job = await self._fetch(conn, outcome.id, lock=True)
        if job is None:
            return conflict(outcome.id, JobNotFound.code, f"no job has id {outcome.id!r}")
        if outcome.lease is None:   # TQueues DELETE /: unfenced
            if job["status"] in models.TERMINAL:
                return ok(job)
        elif job["status"] != models.STARTED or job["lease"] != outcome.lease:
            return conflict(outcome.id, LeaseConflict.code, LeaseConflict.__doc__ or "")
        # An unfenced completion (TQueues) may end a job that is not running: no attempt ends.
        running = job["status"] == models.STARTED
        if outcome.status == models.FINISHED:
            new = await self._update(conn, outcome.id, "status = 'finished', result = $2, error = NULL, lease = NULL,"
                                     " lease_expires = NULL, finished_at = $3, updated_at = $3",
                                     models.to_jsonable(outcome.result), now)
            if running:
                await conn.execute(_END_ATTEMPT, *ended_attempt(job, models.EXEC_FINISHED, now))
            kind = models.EV_FINISHED
        else:
            error = outcome.error or models.error_doc("Error", "the job failed")
            if running:
                await conn.execute(_END_ATTEMPT, *ended_attempt(job, models.EXEC_FAILED, now, error))
            run_at = self.retry_at(job, outcome.retry, now)
            if run_at is None:
                new = await self._update(conn, outcome.id, "status = 'failed', error = $2, lease = NULL,"
                                         " lease_expires = NULL, finished_at = $3, updated_at = $3", error, now)
                kind = models.EV_FAILED
            else:
                new = await self._update(conn, outcome.id, "status = 'pending', error = $2, run_at = $3, lease = NULL,"
                                         " lease_expires = NULL, worker = NULL, updated_at = $4", error, run_at, now)
                kind = models.EV_RETRYING
        assert new is not None
        tx.emit(kind, new, job["status"])
        return ok(new)

    async def _release(self, leases: list[tuple[str, str]], now: float) -> list[dict[str, Any]]:
        async def op(tx: _Tx) -> list[dict[str, Any]]:
            # Rows are changed in id order, as completions and heartbeats lock theirs (they may
            # run at once in another writer's transaction); the answer keeps the request's order.
            out: list[dict[str, Any]] = [{}] * len(leases)
            for index in sorted(range(len(leases)), key=lambda i: leases[i]):
                job_id, lease = leases[index]
                new = await self._update(tx.conn, job_id, "status = 'pending', attempts = attempts - 1, lease = NULL,"
                                         " lease_expires = NULL, worker = NULL, started_at = NULL, updated_at = $3",
                                         lease, now, where="AND lease = $2 AND status = 'started'")
                if new is None:
                    out[index] = conflict(job_id, LeaseConflict.code, LeaseConflict.__doc__ or "")
                    continue
                # The attempt never ran: nothing of it is kept (a row only an older version wrote).
                await tx.conn.execute("DELETE FROM tqueues_executions WHERE job_id = $1 AND attempt = $2",
                                      job_id, new["attempts"] + 1)
                tx.emit(models.EV_RELEASED, new, models.STARTED)
                out[index] = ok(new)
            return out

        return await self._write(op)

    async def _requeue_expired(self, now: float) -> int:
        async def op(tx: _Tx) -> int:
            conn = tx.conn
            # SKIP LOCKED: another dispatcher requeueing concurrently takes other rows; the lease
            # in every UPDATE below fences against a worker completing meanwhile.
            rows = await conn.fetch(f"SELECT {COLS} FROM tqueues_jobs WHERE status = 'started' AND lease_expires < $1"
                                    " ORDER BY lease_expires LIMIT 1000 FOR UPDATE SKIP LOCKED", now)
            changed = 0
            for row in rows:
                job = row_to_job(row)
                error = models.error_doc("WorkerLost", f"the lease of worker {job['worker']} expired before the job ended")
                if job["attempts"] >= job["max_attempts"]:
                    new = await self._update(conn, job["id"], "status = 'failed', error = $3, lease = NULL,"
                                             " lease_expires = NULL, finished_at = $4, updated_at = $4",
                                             job["lease"], error, now, where="AND lease = $2")
                    kind = models.EV_FAILED
                else:
                    new = await self._update(conn, job["id"], "status = 'pending', error = $3, run_at = $4, lease = NULL,"
                                             " lease_expires = NULL, worker = NULL, updated_at = $4",
                                             job["lease"], error, now, where="AND lease = $2")
                    kind = models.EV_REQUEUED
                if new is not None:
                    await conn.execute(_END_ATTEMPT, *ended_attempt(job, models.EXEC_LOST, now, error))
                    tx.emit(kind, new, models.STARTED)
                    changed += 1
            # The reaper's round also folds the counts' rows of changes into one per count.
            await conn.execute(_FOLD_COUNTS)
            return changed

        return await self._write(op)

    async def _next_run_at(self, queues: list[str]) -> float | None:
        async def read(conn: Any) -> float | None:
            return await conn.fetchval(
                "SELECT MIN(m) FROM (SELECT (SELECT MIN(run_at) FROM tqueues_jobs"
                " WHERE status = 'pending' AND run_at > created_at AND queue = q) AS m"
                " FROM unnest($1::text[]) AS q) s", queues)

        return await self._read(read)

    async def _register_worker(self, info: dict[str, Any], now: float) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            # A worker registering again keeps its first registered_at: answer with the stored one.
            # Fields not sent again (a pending command) are kept.
            row = await tx.conn.fetchrow(
                "INSERT INTO tqueues_workers (id, info, registered_at, last_seen) VALUES ($1, $2, $3, $3)"
                " ON CONFLICT (id) DO UPDATE SET info = tqueues_workers.info || excluded.info, last_seen = excluded.last_seen"
                " RETURNING registered_at, info", info["id"], info, now)
            doc = {**row["info"], "registered_at": row["registered_at"], "last_seen": now}
            tx.events.append((models.EV_WORKER, None, None, doc))
            return doc

        return await self._write(op)

    async def _workers(self) -> list[dict[str, Any]]:
        async def read(conn: Any) -> list[dict[str, Any]]:
            rows = await conn.fetch("SELECT info, registered_at, last_seen FROM tqueues_workers ORDER BY last_seen DESC")
            return [{**r["info"], "registered_at": r["registered_at"], "last_seen": r["last_seen"]} for r in rows]

        return await self._read(read)

    async def _worker(self, worker_id: str) -> dict[str, Any]:
        async def read(conn: Any) -> dict[str, Any]:
            row = await conn.fetchrow("SELECT info, registered_at, last_seen FROM tqueues_workers WHERE id = $1", worker_id)
            if row is None:
                raise worker_not_found(worker_id)
            return {**row["info"], "registered_at": row["registered_at"], "last_seen": row["last_seen"]}

        return await self._read(read)

    async def _command_worker(self, worker_id: str, command: str | None, now: float) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            row = await tx.conn.fetchrow(
                "UPDATE tqueues_workers SET info = info || jsonb_build_object('command', $2::text) WHERE id = $1"
                " RETURNING info, registered_at, last_seen", worker_id, command)
            if row is None:
                raise worker_not_found(worker_id)
            doc = {**row["info"], "registered_at": row["registered_at"], "last_seen": row["last_seen"]}
            tx.events.append((models.EV_WORKER, None, None, doc))
            return doc

        return await self._write(op)

    # ------------------------------------------------------------------ queues

    async def _queues(self) -> list[dict[str, Any]]:
        async def read(conn: Any) -> list[dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for row in await conn.fetch("SELECT name, paused, strict FROM tqueues_queues ORDER BY name"):
                out[row["name"]] = {"name": row["name"], "paused": row["paused"], "strict": row["strict"],
                                    "counts": dict.fromkeys(models.STATUSES, 0)}
            for row in await conn.fetch("SELECT queue, status, SUM(n)::bigint AS n FROM tqueues_queue_counts"
                                        " GROUP BY queue, status HAVING SUM(n) <> 0"):
                entry = out.setdefault(row["queue"], {"name": row["queue"], "paused": False, "strict": False,
                                                      "counts": dict.fromkeys(models.STATUSES, 0)})
                entry["counts"][row["status"]] = row["n"]
            for entry in out.values():
                # The creation time of the pending job enqueued first: the lowest seq among
                # the queue's pending entries of the (queue, status, seq) index.
                entry["oldest_pending"] = None
                if entry["counts"][models.PENDING]:
                    entry["oldest_pending"] = await conn.fetchval(
                        "SELECT created_at FROM tqueues_jobs WHERE seq = (SELECT MIN(seq) FROM tqueues_jobs"
                        " WHERE queue = $1 AND status = 'pending')", entry["name"])
            return [out[name] for name in sorted(out)]

        return await self._read(read)

    async def _set_queue(self, name: str, settings: dict[str, bool], now: float) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            await self._ensure_queues(tx, {name}, now)
            for column, value in settings.items():   # column names come from the contract, not the caller
                await tx.conn.execute(f"UPDATE tqueues_queues SET {column} = $1, updated_at = $2 WHERE name = $3",
                                      value, now, name)
            row = await tx.conn.fetchrow("SELECT paused, strict FROM tqueues_queues WHERE name = $1", name)
            doc = {"name": name, "paused": row["paused"], "strict": row["strict"]}
            tx.events.append((models.EV_QUEUE, name, None, doc))
            return doc

        return await self._write(op)

    # ------------------------------------------------------------------ tokens

    _TOKEN_COLS = "id, hash, name, scopes, queues, methods, created_at, expires_at, revoked_at"

    async def _create_token(self, record: dict[str, Any]) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            await tx.conn.execute(f"INSERT INTO tqueues_tokens ({self._TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                                  record["id"], record["hash"], record["name"], record["scopes"], record["queues"],
                                  record["methods"], record["created_at"], record["expires_at"], record["revoked_at"])
            return {k: v for k, v in record.items() if k != "hash"}

        return await self._write(op)

    async def _token(self, token_id: str) -> dict[str, Any]:
        async def read(conn: Any) -> dict[str, Any]:
            row = await conn.fetchrow(f"SELECT {self._TOKEN_COLS} FROM tqueues_tokens WHERE id = $1", token_id)
            if row is None:
                raise token_not_found(token_id)
            return dict(row)

        return await self._read(read)

    async def _revoke_token(self, token_id: str, now: float) -> dict[str, Any]:
        async def op(tx: _Tx) -> dict[str, Any]:
            row = await tx.conn.fetchrow(
                f"UPDATE tqueues_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING {self._TOKEN_COLS}",
                token_id, now)
            if row is None:
                raise token_not_found(token_id)
            return {k: v for k, v in dict(row).items() if k != "hash"}

        return await self._write(op)

    async def _tokens(self) -> list[dict[str, Any]]:
        async def read(conn: Any) -> list[dict[str, Any]]:
            rows = await conn.fetch(f"SELECT {self._TOKEN_COLS} FROM tqueues_tokens ORDER BY created_at DESC")
            return [{k: v for k, v in dict(r).items() if k != "hash"} for r in rows]

        return await self._read(read)

    # ------------------------------------------------------------------ events

    async def _events_since(self, seq: int, limit: int, queue: str | None, job_id: str | None) -> list[dict[str, Any]]:
        async def read(conn: Any) -> list[dict[str, Any]]:
            where, params = ["seq > $1"], [seq]
            for column, value in (("queue", queue), ("job_id", job_id)):
                if value is not None:
                    params.append(value)
                    where.append(f"{column} = ${len(params)}")
            params.append(limit)
            rows = await conn.fetch(f"SELECT seq, ts, kind, queue, job_id, doc FROM tqueues_events"
                                    f" WHERE {' AND '.join(where)} ORDER BY seq LIMIT ${len(params)}", *params)
            return [{"seq": r["seq"], "ts": r["ts"], "kind": r["kind"], "queue": r["queue"], "job_id": r["job_id"],
                     "new_val": event_doc(r["doc"])} for r in rows]

        return await self._read(read)

    async def _last_seq(self) -> int:
        return await self._read(lambda conn: conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM tqueues_events"))

    async def _append_logs(self, lines: list[dict[str, Any]]) -> int:
        async def op(tx: _Tx) -> int:
            conn = tx.conn
            ids = sorted({line["job_id"] for line in lines})
            queues = {r["id"]: r["queue"] for r in await conn.fetch(
                "SELECT id, queue FROM tqueues_jobs WHERE id = ANY($1::text[])", ids)}
            kept = [line for line in lines if line["job_id"] in queues]
            if not kept:
                return 0
            rows = await conn.fetch(
                "INSERT INTO tqueues_logs (job_id, attempt, stream, line, ts)"
                " SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::float8[])"
                " RETURNING id, job_id, attempt, stream, line, ts",
                [l["job_id"] for l in kept], [l["attempt"] for l in kept], [l["stream"] for l in kept],
                [l["line"] for l in kept], [l["ts"] for l in kept])
            by_job: dict[str, list[dict[str, Any]]] = {}
            for row in sorted(rows, key=lambda r: r["id"]):
                by_job.setdefault(row["job_id"], []).append(
                    {"id": row["id"], "attempt": row["attempt"], "stream": row["stream"], "line": row["line"], "ts": row["ts"]})
            for job_id, stored in by_job.items():
                tx.events.append((models.EV_LOG, queues[job_id], job_id, {"id": job_id, "lines": stored}))
            return len(rows)

        return await self._write(op)

    async def _logs(self, job_id: str, since: int, limit: int) -> list[dict[str, Any]]:
        async def read(conn: Any) -> list[dict[str, Any]]:
            await self._require(conn, job_id)
            rows = await conn.fetch("SELECT id, attempt, stream, line, ts FROM tqueues_logs WHERE job_id = $1 AND id > $2"
                                    " ORDER BY id LIMIT $3", job_id, since, limit)
            return [dict(r) for r in rows]

        return await self._read(read)

    async def _prune(self, cutoff: float) -> int:
        async def op(tx: _Tx) -> int:
            conn = tx.conn
            await conn.execute("DELETE FROM tqueues_logs WHERE job_id IN (SELECT id FROM tqueues_jobs"
                               " WHERE finished_at < $1 AND status IN ('finished', 'failed', 'aborted'))", cutoff)
            await conn.execute("DELETE FROM tqueues_executions WHERE job_id IN (SELECT id FROM tqueues_jobs"
                               " WHERE finished_at < $1 AND status IN ('finished', 'failed', 'aborted'))", cutoff)
            deleted = 0
            for row in await conn.fetch("WITH d AS (DELETE FROM tqueues_jobs WHERE finished_at < $1"
                                        " AND status IN ('finished', 'failed', 'aborted') RETURNING queue, status)"
                                        " SELECT queue, status, COUNT(*) AS n FROM d GROUP BY queue, status", cutoff):
                tx.count(row["queue"], row["status"], -row["n"])
                deleted += row["n"]
            await conn.execute("DELETE FROM tqueues_events WHERE ts < $1 AND seq < (SELECT MAX(seq) FROM tqueues_events)", cutoff)
            return deleted

        return await self._write(op)


async def migrate(conn: Any) -> int:
    """Create or upgrade the schema (idempotent, safe with several dispatchers starting at once).

    Returns the schema version now in force.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS tqueues_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        current = int(await conn.fetchval("SELECT value FROM tqueues_meta WHERE key = 'schema_version'") or 0)
        if current > SCHEMA_VERSION:
            raise ConfigurationError(f"the database has tqueues schema version {current}, newer than this tqueues ({SCHEMA_VERSION})")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO tqueues_meta (key, value) VALUES ('schema_version', $1)"
                               " ON CONFLICT (key) DO UPDATE SET value = excluded.value", str(version))
        return SCHEMA_VERSION


async def init_db(url: str) -> int:
    """Create or migrate the schema of the database at ``url``; the version in force."""
    if asyncpg is None:
        raise ConfigurationError("the PostgreSQL store needs asyncpg: pip install asyncpg")
    store = PostgresStore(url)
    try:
        conn = await asyncpg.connect(store.dsn, timeout=5)
    except Exception as exc:
        if _disconnected(exc) or isinstance(exc, asyncpg.PostgresError):
            raise StoreUnavailable(f"cannot connect to {redact(store.dsn)}: {exc}") from None
        raise
    try:
        return await migrate(conn)
    finally:
        await conn.close()


__all__ = ["PostgresStore", "init_db", "migrate", "Sequence"]
