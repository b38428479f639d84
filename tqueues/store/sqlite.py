"""The embedded SQLite store: one file, one dispatcher, no server.

Design
    * WAL journal, ``synchronous=NORMAL``: readers never block the writer.
    * One writer thread owns the only writing connection. Coroutines hand it operations;
      it takes every operation waiting, runs them inside ONE transaction, commits once and
      then resolves all their futures (group commit). Throughput grows with concurrency
      instead of collapsing into one fsync per request. Operations run without savepoints;
      when one of a group raises, the transaction is rolled back and the group runs again
      with a savepoint per operation, so the failing one rolls back alone.
    * Because a single thread writes, a claim is one ``UPDATE … RETURNING`` over the best
      ready rows: no select-then-update race exists.
    * Events are inserted in the transaction of the change; their ``seq`` continues from the
      table's maximum read at the start of each transaction (``BEGIN IMMEDIATE`` holds the
      write lock, so another process writing the same file cannot interleave).
    * Reads run on a separate thread with its own connection.
    * Writes run on the event loop, with the writer's connection and under the writer's lock,
      rather than waking the writer thread and being woken back: on an idle machine those two
      thread hand-offs cost more than the write itself, and on a busy one the thread buys
      little concurrency (the loop and the writer's Python share one interpreter lock; only
      SQLite's own work runs beside the loop) while the two take turns at that lock at every
      row SQLite returns. The first write of a turn of the loop runs at once, inside the call,
      when nothing else is on its way. The writes that follow are gathered and committed in
      groups, in the order they came: as many as touch at most INLINE_ITEMS jobs together
      (enqueues, claims, reports of outcomes and heartbeats; a full claim of a thousand jobs)
      make one transaction on the loop, and the next group runs one turn of the loop later,
      after a look at the sockets, so the loop is held for a few milliseconds at most. The
      writes of one base.grouped block (an enqueue and the parked claims it adopted) are
      never split. A write too large for that, or of no given size, goes to the writer
      thread, which joins whatever is waiting for it into one group; the writes behind it wait
      for its delivery, then go on on the loop. So does a group whose BEGIN finds the file
      locked by another process: the thread waits for the lock, the loop does not. When every
      turn beyond INLINE_ITEMS, and every write behind one, went to the thread instead, it
      stayed busy for the rest of a drain by two workers reporting and claiming a thousand
      jobs at a time: against that, a drain of 100,000 runs 5-8% faster, and one of 20,000
      while the queue counts are read every 50 ms (as a dashboard does) 17% faster, the
      dispatcher spending 30 µs of CPU per job instead of 36.
    * Checkpoints of the WAL run on their own thread and connection (``PASSIVE``: they never
      block the writer), never inside a commit. SQLite writes the WAL from its start again only
      when a transaction begins after a checkpoint copied all of it; a writer that never pauses
      (a long drain) never lets that happen, and the file grows with every page written. Once
      the WAL holds WAL_LIMIT_BYTES of frames, the passive checkpoint is followed by a
      ``RESTART``, taken between two of the writer's groups (under its lock): it holds writes
      back for the little the passive one left to copy and for readers to move to the database
      file (at most RESTART_WAIT_MS, else it tries again later), and the next write starts the
      WAL over, cut back to WAL_LIMIT_BYTES (``journal_size_limit``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import queue as _queue
import secrets
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlsplit

from .. import models
from ..errors import Conflict, ConfigurationError, InvalidRequest, JobNotFound, LeaseConflict, StoreUnavailable, TQueuesError
from .base import (CLAIM_READS, CLAIM_SETS, JOB_KEYS, JOB_VALUES, Changes, ClaimedDocs, claim_sets, claimed_values, Outcome, Store, conflict, event_doc, fenced_finishes, group_of_writes, leased_new_job,
                   net_moves, new_job, ok, stored_event_doc, token_not_found, ended_attempt, with_running_attempt,
                   worker_not_found)

log = logging.getLogger("tqueues.store.sqlite")


# sqlite3 looks for an adapter for every parameter that is not an int, float or str: for None
# and bytes the search raises, formats and clears two AttributeErrors per parameter (a job row
# has about ten Nones). Registered, they cost one dictionary lookup and a call of C code that
# gives the value back: ``{}.get(None)`` is None, and ``bytes(b)`` is ``b`` itself. (A Python
# function there would cost a frame per parameter: a fifth of a job row's insert.)
sqlite3.register_adapter(type(None), {}.get)
sqlite3.register_adapter(bytes, bytes)

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    method TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    run_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    timeout REAL,
    backoff REAL NOT NULL,
    lease TEXT,
    lease_expires REAL,
    worker TEXT,
    data TEXT NOT NULL,
    result TEXT,
    error TEXT,
    key TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    secrets TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs (key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (queue, priority DESC, run_at, seq) WHERE status = 'pending';
-- Only jobs scheduled later than their creation (delayed, or put back with a backoff): a job due
-- when created costs no entry here, and next_run_at needs only the ones a claim must wait for.
CREATE INDEX IF NOT EXISTS jobs_delayed ON jobs (queue, run_at) WHERE status = 'pending' AND run_at > created_at;
CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires) WHERE status = 'started';
CREATE INDEX IF NOT EXISTS jobs_queue_status ON jobs (queue, status);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- How many jobs each queue has in each status, kept by every write in its own transaction
-- (base.Changes): the queues' counts without counting a million jobs (schema version 3).
CREATE TABLE IF NOT EXISTS queue_counts (
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (queue, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS executions (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT,
    lease TEXT,
    status TEXT NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    PRIMARY KEY (job_id, attempt)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    kind TEXT NOT NULL,
    queue TEXT,
    job_id TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_job ON logs (job_id, id);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0,
    strict INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    name TEXT,
    scopes TEXT NOT NULL,
    queues TEXT NOT NULL,
    methods TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL
);
"""

COLS = ", ".join(JOB_KEYS)
_chain = chain.from_iterable
JSON_COLS = ("args", "kwargs", "data", "result", "error", "secrets")
_JSON_IDX = tuple(JOB_KEYS.index(c) for c in JSON_COLS)
_loads = models.loads
MAX_GROUP = 1024
BUSY_TIMEOUT_MS = 30_000
INSERT_CHUNK = 32                 # rows per INSERT statement (see insert_rows)
INLINE_ITEMS = 1024               # the most jobs the operations of one group run on the loop may touch
CHECKPOINT_EVERY = 0.5            # seconds between looks at the WAL's size
CHECKPOINT_BYTES = 32 * 1024 * 1024
# Once the WAL holds this much, it is restarted from its beginning (see _Checkpointer), which a
# writer that never pauses would otherwise never do: under a steady load the file grew by the
# size of every page written (about 4 kB a job), hundreds of megabytes a minute.
WAL_LIMIT_BYTES = 4 * CHECKPOINT_BYTES
RESTART_WAIT_MS = 200             # how long a restarting checkpoint may wait for readers (and another process)

Event = tuple[str, str | None, str | None, dict[str, Any]]   # kind, queue, job_id, new_val


# A queue's ready jobs in claim order: (seq, priority, run_at); parameters queue, now, limit.
# INDEXED BY: left alone, SQLite may pick the (queue, run_at) index and sort every ready job.
_READY_WALK = ("SELECT seq, priority, run_at FROM jobs INDEXED BY jobs_ready"
               " WHERE status = 'pending' AND queue = ? AND run_at <= ? ORDER BY priority DESC, run_at, seq LIMIT ?")


def job_row(doc: dict[str, Any]) -> list[Any]:
    """The column values of a job document, JSON columns serialised, in JOB_KEYS order."""
    row = list(JOB_VALUES(doc))
    for i in _JSON_IDX:
        value = row[i]
        row[i] = "null" if value is None else models.json_column(value)
    return row


# A new pending job's row: the columns that vary are bound, those every new job has in common
# are constants of the statement (ten parameters fewer a row than job_row's). What it stores is
# exactly what job_row writes for new_job's document.
_NEW_JOB_KEYS = ("id", "queue", "method", "args", "kwargs", "priority", "run_at", "max_attempts", "timeout",
                 "backoff", "data", "key", "created_at", "updated_at", "secrets")
_INSERT_NEW = ("INSERT INTO jobs (" + ", ".join(_NEW_JOB_KEYS)
               + ", status, attempts, lease, lease_expires, worker, result, error, started_at, finished_at)")
_NEW_ROW = "(" + ", ".join("?" * len(_NEW_JOB_KEYS)) + ", 'pending', 0, NULL, NULL, NULL, 'null', 'null', NULL, NULL)"


def new_job_row(doc: dict[str, Any]) -> tuple[Any, ...]:
    """The bound values of _INSERT_NEW for ``doc``, a document from new_job."""
    json_column = models.json_column
    secrets_ = doc["secrets"]
    return (doc["id"], doc["queue"], doc["method"], json_column(doc["args"]), json_column(doc["kwargs"]),
            doc["priority"], doc["run_at"], doc["max_attempts"], doc["timeout"], doc["backoff"],
            json_column(doc["data"]), doc["key"], doc["created_at"], doc["updated_at"],
            "null" if secrets_ is None else json_column(secrets_))


def event_doc_text(doc: Any) -> str:
    """The stored JSON of an event's document (see base.stored_event_doc).

    As text, not orjson's bytes: a group keeps hundreds of these alive until its INSERT, and
    orjson's bytes, each allocated large and shrunk, then cost about ten times the call
    itself; a str copy is sized exactly and lets the next call reuse the buffer."""
    return models.dumps(stored_event_doc(doc)).decode()


def _value_rows(width: int, count: int, row: str | None = None) -> str:
    """``(?, ?), (?, ?), ...``: ``count`` rows of ``width`` parameters (or of ``row``)."""
    return ", ".join([row or "(" + ", ".join("?" * width) + ")"] * count)


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, width: int, count: int, row: str | None = None) -> str:
    return head + " VALUES " + _value_rows(width, count, row)


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]], row: str | None = None) -> int | None:
    """``head`` (``INSERT INTO t (a, b)``) for every row: INSERT_CHUNK rows per statement, the
    rest one statement each. Binding one statement of many rows costs a fifth less per row
    than executemany's statement per row (and stays within SQLite's oldest limit of 999
    parameters: INSERT_CHUNK rows of the widest table, jobs). ``row``: each row's VALUES
    tuple when it is not all parameters (_NEW_ROW). Returns the rowid of the last row."""
    if not rows:
        return None
    width = len(rows[0])
    full = len(rows) - len(rows) % INSERT_CHUNK
    last = None
    if full:
        sql = _values_sql(head, width, INSERT_CHUNK, row)
        for start in range(0, full, INSERT_CHUNK):
            last = conn.execute(sql, list(_chain(rows[start:start + INSERT_CHUNK]))).lastrowid
    if full < len(rows):
        one = _values_sql(head, width, 1, row)
        if full < len(rows) - 1:
            conn.executemany(one, rows[full:-1])
        last = conn.execute(one, rows[-1]).lastrowid   # executemany tells no rowid
    return last


FINISH_CHUNK = 256                # outcomes per set-wise completion (3 parameters each: under 999)


def _set_wise(make_sql: Callable[[int], str], head: list[Any], rows: Sequence[Sequence[Any]],
              width: int) -> tuple[str, list[Any]]:
    """A statement over ``(VALUES ...)`` for ``rows`` and its parameters, ``head`` first.

    The list is padded with rows of NULLs (which match nothing) to the next power of two, so
    that a few statements serve every batch size and stay in the connection's statement cache
    instead of being prepared anew for each size."""
    size = 1
    while size < len(rows):
        size *= 2
    params = list(head)
    for row in rows:
        params += row
    params += [None] * (width * (size - len(rows)))
    return make_sql(size), params


@functools.lru_cache(maxsize=16)
def _finish_sql(count: int) -> str:
    """Finish ``count`` started jobs whose lease matches: parameters ``now, now`` then
    ``(id, lease, result JSON)`` per job; returns the finished jobs' rows."""
    return ("UPDATE jobs SET status = 'finished', result = v.column3, error = NULL, lease = NULL,"
            " lease_expires = NULL, finished_at = ?, updated_at = ?"
            " FROM (VALUES " + _value_rows(3, count) + ") AS v"
            " WHERE jobs.id = v.column1 AND jobs.lease = v.column2 AND jobs.status = 'started'"
            f" RETURNING {COLS}")


# The outcomes of one set-wise finish of remembered jobs (4 parameters each: under 999 with the
# two of its head, as a power of two, see _set_wise).
FINISH_KNOWN_CHUNK = 128


@functools.lru_cache(maxsize=16)
def _finish_known_sql(count: int) -> str:
    """Finish ``count`` started jobs whose lease matches and whose row is unchanged since the
    claim (``updated_at`` as claimed): parameters ``now, now`` then ``(id, lease, result JSON,
    updated_at)`` per job; returns the finished jobs' ids only, their documents being known."""
    return ("UPDATE jobs SET status = 'finished', result = v.column3, error = NULL, lease = NULL,"
            " lease_expires = NULL, finished_at = ?, updated_at = ?"
            " FROM (VALUES " + _value_rows(4, count) + ") AS v"
            " WHERE jobs.id = v.column1 AND jobs.lease = v.column2 AND jobs.status = 'started'"
            " AND jobs.updated_at = v.column4"
            " RETURNING jobs.id")


_COUNT = ("INSERT INTO queue_counts (queue, status, n) VALUES (?, ?, ?)"
          " ON CONFLICT (queue, status) DO UPDATE SET n = n + excluded.n")


# An attempt's execution row is written once, when the attempt ends (finished, failed, lost or
# aborted); while it runs, the job row holds everything about it (attempts, worker, lease,
# started_at) and executions() reads it from there. One write per attempt instead of an insert
# at the claim and an update at the end. REPLACE: an older version's row of the same attempt.
_END_ATTEMPTS = "INSERT OR REPLACE INTO executions (job_id, attempt, worker, lease, status, started_at, finished_at, error)"
_END_ATTEMPT = _END_ATTEMPTS + " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def _inline_items(ops: list[_Op]) -> int | None:
    """How many jobs ``ops`` touch together, or None when they may not run on the loop: one of
    them has no size given, or together they touch more than INLINE_ITEMS jobs."""
    items = 0
    for op in ops:
        if not op.items:
            return None
        items += op.items
    return items if items <= INLINE_ITEMS else None


# A claim reads back only the columns it does not set itself, then seq (see base.CLAIM_SETS).
_CLAIM_SET = ", ".join(f"{key} = ?" for key in CLAIM_SETS)
_CLAIM_VALUES = claimed_values(1)


def json_value(text: str) -> Any:
    """A JSON column's value as row_to_job reads it."""
    return None if text == "null" else {} if text == "{}" else _loads(text)


def row_to_job(row: Sequence[Any]) -> dict[str, Any]:
    values = list(row)
    for i in _JSON_IDX:
        value = values[i]
        if value is not None:
            # Most JSON columns hold null or {} (as job_row wrote them): no parser call for those.
            values[i] = None if value == "null" else {} if value == "{}" else _loads(value)
    return dict(zip(JOB_KEYS, values))


def path_from_url(url: str) -> str:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs.db`` → ``/abs.db``."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(f"sqlite URL {url!r} must be sqlite:///PATH")
    path = unquote(parts.path)
    if path.startswith("/"):
        path = path[1:]
    if not path:
        raise ConfigurationError(f"sqlite URL {url!r} names no file")
    if path == ":memory:":
        raise ConfigurationError("an in-memory SQLite database cannot be shared by the writer and readers; name a file")
    return path


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Bring a file made by an older tqueues (schema ``version``) up to this SCHEMA (new tables
    come from SCHEMA)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(queues)")}
    if "strict" not in columns:
        conn.execute("ALTER TABLE queues ADD COLUMN strict INTEGER NOT NULL DEFAULT 0")
    if "secrets" not in {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}:
        conn.execute("ALTER TABLE jobs ADD COLUMN secrets TEXT")
    conn.execute("DROP INDEX IF EXISTS jobs_next")   # every pending job; jobs_delayed replaced it
    conn.execute("BEGIN IMMEDIATE")
    if version < 3:   # queue_counts is new: the jobs are counted once, writes keep it from then on
        conn.execute("DELETE FROM queue_counts")
        conn.execute("INSERT INTO queue_counts (queue, status, n) SELECT queue, status, COUNT(*) FROM jobs"
                     " GROUP BY queue, status")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
    conn.execute("COMMIT")


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA wal_autocheckpoint=0")   # the checkpointer thread does it, off the commit path
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")   # the WAL's size once it starts over
    return conn


class _Op:
    __slots__ = ("fn", "future", "items", "group")

    def __init__(self, fn: Callable[["_Tx"], Any], future: asyncio.Future[Any] | None, items: int,
                 group: object | None = None) -> None:
        self.fn = fn
        self.future = future
        self.items = items   # jobs it touches, if it may run inline; 0: the writer thread's (see SQLiteStore._write)
        self.group = group   # base.grouped block: the operations of one are committed together


class _Tx(Changes):
    """What a write operation sees: the connection, and what it collects for the transaction
    (its events, and its jobs' changes of status, written to queue_counts with them)."""

    __slots__ = ("conn", "after_commit")

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__()
        self.conn = conn
        self.after_commit: list[Callable[[], None]] = []   # run once the transaction committed


def _busy(exc: sqlite3.Error) -> bool:
    """The error says the database is locked by another connection (SQLITE_BUSY)."""
    code = getattr(exc, "sqlite_errorcode", None)   # Python 3.11+
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "locked" in str(exc) or "busy" in str(exc)


class _OperationFailed(Exception):
    """An operation of a group run without savepoints raised: the group runs again with them."""


class _Writer(threading.Thread):
    """The single writer: group commit of every operation waiting."""

    def __init__(self, store: "SQLiteStore", path: str) -> None:
        super().__init__(name="tqueues-sqlite-writer", daemon=True)
        self.store = store
        self.path = path
        # The operations of one turn of the loop arrive as one list, never split between groups.
        self.ops: _queue.SimpleQueue[list[_Op] | None] = _queue.SimpleQueue()
        self.conn: sqlite3.Connection = _connect(path)
        # No busy timeout on the writing connection: an inline BEGIN must fail at once when
        # another process holds the write lock, and the thread waits for that lock in begin()
        # instead (changing the timeout per group costs more than the group's own statements).
        # Once BEGIN IMMEDIATE holds the write lock, nothing else in a WAL transaction waits.
        self.conn.execute("PRAGMA busy_timeout=0")
        self.lock = threading.Lock()   # held while a group runs, on this thread or inline
        self.failed_recently = False   # the last group of several had an operation fail

    def run(self) -> None:
        try:
            while True:
                first = self.ops.get()
                if first is None:
                    return
                batch = list(first)
                stop = False
                while len(batch) < MAX_GROUP:
                    try:
                        nxt = self.ops.get_nowait()
                    except _queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.extend(nxt)
                with self.lock:
                    results, published = self._run_group(batch)
                self.store._loop.call_soon_threadsafe(self.store._deliver, results, published)
                if stop:
                    return
        finally:
            with self.lock:
                self.conn.close()

    def try_inline(self, ops: list["_Op"]) -> tuple[list[tuple["_Op", bool, Any]], list[dict[str, Any]]] | None:
        """Run ``ops`` now on the calling thread if the writer is free and the database is not
        locked by another process; None when they must go to the writer thread instead."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error:
                return None   # another process holds the write lock: the thread waits for it
            try:
                return self._run_group(ops, begun=True, retry_inline=False)
            except _OperationFailed:
                return None   # rolled back: the thread runs the group again, with savepoints
        finally:
            self.lock.release()

    def begin(self) -> None:
        """BEGIN IMMEDIATE on the writer thread, waiting up to BUSY_TIMEOUT_MS for another
        process to release the write lock (as SQLite's own busy handler would)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.001
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.05)

    def _run_group(self, batch: list[_Op], begun: bool = False, retry_inline: bool = True
                   ) -> tuple[list[tuple[_Op, bool, Any]], list[dict[str, Any]]]:
        """One transaction for ``batch``. An operation alone, or in a group while none failed
        lately, runs without a savepoint (two statements fewer each); if one of several then
        raises, the transaction is rolled back and the group runs again with a savepoint per
        operation, so only that one fails (``retry_inline=False``: raise _OperationFailed
        instead, after the rollback, for the caller to hand the group to the thread)."""
        savepoints = len(batch) > 1 and self.failed_recently
        try:
            done = self._attempt_group(batch, begun, savepoints)
            if len(batch) > 1:
                self.failed_recently = False
            return done
        except _OperationFailed as failed:
            if len(batch) == 1:
                return [(batch[0], False, failed.args[0])], []
            self.failed_recently = True
            if not retry_inline:
                raise
            return self._attempt_group(batch, False, True)

    def _attempt_group(self, batch: list[_Op], begun: bool, savepoints: bool
                       ) -> tuple[list[tuple[_Op, bool, Any]], list[dict[str, Any]]]:
        conn = self.conn
        results: list[tuple[_Op, bool, Any]] = []
        events: list[Event] = []
        landed: list[_Tx] = []   # the operations that did not fail
        committed: list[Callable[[], None]] = []
        try:
            if not begun:
                self.begin()
            for op in batch:
                tx = _Tx(conn)
                if savepoints:
                    conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(tx)
                except BaseException as exc:  # noqa: BLE001 - reported to the caller
                    if not savepoints:
                        conn.execute("ROLLBACK")
                        raise _OperationFailed(exc) from None
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((op, False, exc))
                else:
                    if savepoints:
                        conn.execute("RELEASE op")
                    results.append((op, True, value))
                    events.extend(tx.events)
                    committed.extend(tx.after_commit)
                    landed.append(tx)
            moves = net_moves(landed)
            if moves:
                conn.executemany(_COUNT, moves)
            published = self._insert_events(conn, events)
            conn.execute("COMMIT")
            for hook in committed:
                hook()
        except sqlite3.Error as exc:
            log.exception("sqlite transaction failed")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            error = StoreUnavailable(f"sqlite write failed: {exc}")
            results = [(op, False, error) for op in batch]
            published = []
        return results, published

    def _insert_events(self, conn: sqlite3.Connection, events: list[Event]) -> list[dict[str, Any]]:
        if not events:
            return []
        # seq is the rowid: SQLite gives each new row one more than the table's largest, so the
        # events of one transaction (which holds the write lock) get consecutive seqs after every
        # committed one, whoever wrote those (prune always keeps the newest row).
        ts = models.now()
        last = insert_rows(conn, "INSERT INTO events (ts, kind, queue, job_id, doc)",
                           [(ts, kind, queue, job_id, event_doc_text(doc)) for kind, queue, job_id, doc in events])
        assert last is not None
        first = last - len(events) + 1
        return [{"seq": seq, "ts": ts, "kind": kind, "queue": queue, "job_id": job_id, "new_val": doc}
                for seq, (kind, queue, job_id, doc) in enumerate(events, start=first)]


class _Checkpointer(threading.Thread):
    """Copies the WAL back into the database file from its own connection (``PASSIVE``:
    never waits for, nor blocks, the writer and readers) whenever it has grown past
    CHECKPOINT_BYTES, so that no commit ever pays for a checkpoint; past WAL_LIMIT_BYTES with a
    ``RESTART``, so that the WAL starts over (see the module docstring)."""

    def __init__(self, path: str, writer_lock: threading.Lock) -> None:
        super().__init__(name="tqueues-sqlite-checkpoint", daemon=True)
        self.path = path
        self.writer_lock = writer_lock
        self.stopped = threading.Event()

    def run(self) -> None:
        conn: sqlite3.Connection | None = None
        frame = 0   # bytes of a WAL frame: a page and its header
        wal = self.path + "-wal"
        try:
            while not self.stopped.wait(CHECKPOINT_EVERY):
                try:
                    size = os.path.getsize(wal)
                except OSError:
                    continue
                if size < CHECKPOINT_BYTES and not self.stopped.is_set():
                    continue
                try:
                    if conn is None:
                        conn = _connect(self.path)
                        conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                        frame = conn.execute("PRAGMA page_size").fetchone()[0] + 24
                    # The file's size says what the WAL once held; this says what it holds now.
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames * frame >= WAL_LIMIT_BYTES:
                        # Between two of this dispatcher's transactions (its writer back to back
                        # would leave SQLite's busy handler no gap to find), after the passive
                        # one copied nearly all. One that cannot finish in time (readers,
                        # another process) answers busy: the next look tries again.
                        with self.writer_lock:
                            conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("sqlite checkpoint failed: %s", exc)
        finally:
            if conn is not None:
                conn.close()


class SQLiteStore(Store):
    """Jobs in one SQLite file (see the module docstring for the design)."""

    scheme = "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.path = path_from_url(url)
        self._writer: _Writer | None = None
        self._checkpointer: _Checkpointer | None = None
        self._queued = 0   # operations handed to the writer thread and not yet delivered
        self._turn: list[_Op] = []   # the write operations of this turn of the loop
        # Writes waiting, in order, to run (see _run_turn): each entry one operation, or the
        # operations of one base.grouped block, which are never split
        self._waiting: collections.deque[list[_Op]] = collections.deque()
        self._run_soon = False   # _run_waiting is scheduled
        self._ran_now = False        # a write of this turn already ran at once (see _write)
        self._queues_known: set[str] = set()
        self._claimed = ClaimedDocs()   # what this store claimed, for the finish (see ClaimedDocs)
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._loop: asyncio.AbstractEventLoop

    # ------------------------------------------------------------------ plumbing

    async def _open(self) -> None:
        self._loop = asyncio.get_running_loop()
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise ConfigurationError(f"cannot create {self.path}: directory {directory} does not exist")
        try:
            conn = _connect(self.path)
            try:
                conn.executescript(SCHEMA)
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if int(version) <= SCHEMA_VERSION:
                    _migrate(conn, int(version))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open sqlite database {self.path}: {exc}") from None
        if int(version) > SCHEMA_VERSION:
            raise ConfigurationError(f"{self.path} has schema version {version}, newer than this tqueues ({SCHEMA_VERSION})")
        try:
            self._writer = _Writer(self, self.path)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open sqlite database {self.path}: {exc}") from None
        self._writer.start()
        self._checkpointer = _Checkpointer(self.path, self._writer.lock)
        self._checkpointer.start()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tqueues-sqlite-reader")

    async def _close(self) -> None:
        if self._writer is not None:
            while self._waiting:   # nothing is left unanswered: the thread runs them before it stops
                self._to_thread(self._waiting.popleft())
            self._writer.ops.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
            self._writer = None
        if self._checkpointer is not None:
            self._checkpointer.stopped.set()
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.join)
            self._checkpointer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()

    def _deliver(self, results: list[tuple[_Op, bool, Any]], published: list[dict[str, Any]]) -> None:
        self._queued -= len(results)
        self._resolve(results, published)
        if not self._queued and self._waiting and not self._run_soon:
            self._run_waiting()

    def _resolve(self, results: list[tuple[_Op, bool, Any]], published: list[dict[str, Any]]) -> None:
        for op, success, value in results:
            if op.future.done():
                continue
            if success:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)
        self._publish(published)

    async def _write(self, fn: Callable[[_Tx], Any], items: int = 0) -> Any:
        """Run ``fn`` in a write transaction. ``items``: how many jobs it touches, for an
        operation that may run on the loop when no other write is on its way (see the module
        docstring); 0 for one that always goes to the writer thread."""
        writer = self._writer
        if writer is None:
            raise StoreUnavailable("the store is closed")
        group = group_of_writes()
        if (0 < items <= INLINE_ITEMS and not self._ran_now and not self._turn and not self._queued
                and not self._waiting and group is None):
            # Small, the first write of this turn of the loop, and no other on its way (an idle
            # dispatcher): run it now, without waiting for the end of the turn and being woken
            # back (two turns of the loop fewer for one enqueue, claim or report). The writes
            # that follow in the same turn are gathered into one group as below, as are writes
            # that must share a transaction (base.grouped).
            self._ran_now = True
            self._loop.call_soon(self._next_turn)
            done = self._try_inline(writer, [_Op(fn, None, items)])
            if done is not None:
                [(_, success, value)], published = done
                self._publish(published)
                if success:
                    return value
                raise value
        future = self._loop.create_future()
        # The operations of this turn of the loop are gathered and committed in groups, in the
        # order they came: an enqueue and the parked claims it adopted (views.enqueue_jobs)
        # always share a transaction, whichever of them is small.
        self._turn.append(_Op(fn, future, items, group))
        if len(self._turn) == 1:
            self._loop.call_soon(self._run_turn)
        return await future

    def _next_turn(self) -> None:
        self._ran_now = False

    @staticmethod
    def _try_inline(writer: _Writer, ops: list[_Op]) -> tuple[list[tuple[_Op, bool, Any]], list[dict[str, Any]]] | None:
        """``writer.try_inline(ops)``; StoreUnavailable when it fails itself (not one of the
        operations: their failures are in its results)."""
        try:
            return writer.try_inline(ops)
        except Exception as exc:  # noqa: BLE001 - no write may be left waiting forever
            log.exception("sqlite write failed")
            raise StoreUnavailable(f"sqlite write failed: {exc}") from None

    def _run_turn(self) -> None:
        ops, self._turn = self._turn, []
        if self._writer is None:
            self._fail(ops)
            return
        # Each operation on its own, but those of one grouped block together
        for op in ops:
            last = self._waiting[-1] if self._waiting else None
            if op.group is not None and last is not None and last[-1].group is op.group:
                last.append(op)
            else:
                self._waiting.append([op])
        if not self._queued and not self._run_soon:
            self._run_waiting()

    def _run_waiting(self) -> None:
        """Run the writes waiting, in order: those at the head on the loop as one group, as
        many as touch at most INLINE_ITEMS jobs (and MAX_GROUP operations); the rest one turn
        of the loop later (its sockets are looked at in between). One that may not run on the
        loop (too large, or of no given size) goes to the writer thread, and the rest wait for
        its delivery, as they do for any group the thread holds."""
        self._run_soon = False
        if self._writer is None:
            while self._waiting:
                self._fail(self._waiting.popleft())
            return
        if self._queued or not self._waiting:
            return
        head = self._waiting.popleft()
        items = _inline_items(head)
        if items is None:
            self._to_thread(head)
            return
        ops = head   # popped: this group's own list
        while self._waiting:
            more = _inline_items(self._waiting[0])
            if more is None or items + more > INLINE_ITEMS or len(ops) + len(self._waiting[0]) > MAX_GROUP:
                break
            ops.extend(self._waiting.popleft())
            items += more
        if not self._inline(ops):
            self._to_thread(ops)
            return
        if self._waiting and not self._queued:
            self._run_soon = True
            self._loop.call_soon(self._run_waiting)

    def _inline(self, ops: list[_Op]) -> bool:
        """Run ``ops`` on the loop as one group; False when that could not begin (the thread
        must run them: another process holds the write lock, or one of several failed)."""
        writer = self._writer
        assert writer is not None
        try:
            done = self._try_inline(writer, ops)
        except StoreUnavailable as exc:
            self._fail(ops, exc.message)
            return True
        if done is None:
            return False
        self._resolve(*done)
        return True

    def _to_thread(self, ops: list[_Op]) -> None:
        writer = self._writer
        assert writer is not None
        self._queued += len(ops)   # the writer thread groups them with whatever else waits for it
        writer.ops.put(ops)

    @staticmethod
    def _fail(ops: list[_Op], message: str = "the store is closed") -> None:
        for op in ops:
            if op.future is not None and not op.future.done():
                op.future.set_exception(StoreUnavailable(message))

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._readers is None:
            raise StoreUnavailable("the store is closed")

        def run() -> Any:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"sqlite read failed: {exc}") from None

        return await self._loop.run_in_executor(self._readers, run)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _fetch(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
        row = conn.execute(f"SELECT {COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row_to_job(row) if row else None

    @classmethod
    def _require(cls, conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        job = cls._fetch(conn, job_id)
        if job is None:
            raise JobNotFound(f"no job has id {job_id!r}", id=job_id)
        return job

    def _ensure_queues(self, tx: _Tx, names: set[str], now: float) -> None:
        """Queue rows for ``names``; the names known to exist (queues are never deleted) are
        remembered once committed, so an enqueue to a known queue writes nothing for it."""
        missing = names - self._queues_known
        if not missing:
            return
        tx.conn.executemany("INSERT OR IGNORE INTO queues (name, paused, created_at, updated_at) VALUES (?, 0, ?, ?)",
                            [(n, now, now) for n in missing])
        tx.after_commit.append(lambda: self._queues_known.update(missing))

    def _update_job(self, conn: sqlite3.Connection, job_id: str, where: str, params: Sequence[Any],
                    sets: str, values: Sequence[Any]) -> dict[str, Any] | None:
        self._claimed.forget(job_id)   # whatever this write does, the claimed document is no longer the row
        row = conn.execute(f"UPDATE jobs SET {sets} WHERE id = ? {where} RETURNING {COLS}",
                           (*values, job_id, *params)).fetchone()
        return row_to_job(row) if row else None

    # ------------------------------------------------------------------ producers

    async def _enqueue(self, jobs: list[models.NewJob], now: float) -> list[tuple[dict[str, Any], bool]]:
        def op(tx: _Tx) -> list[tuple[dict[str, Any], bool]]:
            conn = tx.conn
            out: list[tuple[dict[str, Any], bool] | None] = [None] * len(jobs)
            seen_keys: dict[str, dict[str, Any]] = {}
            rows = []
            ids = models.new_ids(len(jobs))
            for index, spec in enumerate(jobs):
                if spec.key is not None:
                    existing = seen_keys.get(spec.key)
                    if existing is None:
                        row = conn.execute(f"SELECT {COLS} FROM jobs WHERE key = ?", (spec.key,)).fetchone()
                        existing = row_to_job(row) if row else None
                    if existing is not None:
                        out[index] = (existing, False)
                        continue
                doc = new_job(spec, now, ids[index])
                if spec.key is not None:
                    seen_keys[spec.key] = doc
                rows.append(new_job_row(doc))
                out[index] = (doc, True)
                tx.emit(models.EV_CREATED, doc, None)
            self._ensure_queues(tx, {spec.queue for spec in jobs}, now)
            insert_rows(conn, _INSERT_NEW, rows, _NEW_ROW)
            return out  # type: ignore[return-value]

        return await self._write(op, items=len(jobs))

    async def _get(self, job_id: str) -> dict[str, Any]:
        return await self._read(lambda conn: self._require(conn, job_id))

    async def _list_jobs(self, queue: str | None, status: str | None, method: str | None,
                         limit: int, before: str | None, text: str | None = None) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, params = [], []
            for column, value in (("queue", queue), ("status", status), ("method", method)):
                if value is not None:
                    where.append(f"{column} = ?")
                    params.append(value)
            if text is not None:
                pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                where.append("(" + " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in ("id", "method", "key", "args", "error")) + ")")
                params += [pattern] * 5
            if before is not None:
                row = conn.execute("SELECT seq FROM jobs WHERE id = ?", (before,)).fetchone()
                if row is None:
                    raise JobNotFound(f"before: no job has id {before!r}", id=before)
                where.append("seq < ?")
                params.append(row[0])
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            rows = conn.execute(f"SELECT {COLS} FROM jobs {clause} ORDER BY seq DESC LIMIT ?", (*params, limit)).fetchall()
            return [row_to_job(r) for r in rows]

        return await self._read(read)

    async def _executions(self, job_id: str) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            job = self._require(conn, job_id)
            rows = conn.execute(
                "SELECT job_id, attempt, worker, status, started_at, finished_at, error FROM executions"
                " WHERE job_id = ? ORDER BY attempt", (job_id,)).fetchall()
            return with_running_attempt(job, [
                {"job_id": r[0], "attempt": r[1], "worker": r[2], "status": r[3], "started_at": r[4],
                 "finished_at": r[5], "error": models.loads(r[6]) if r[6] else None} for r in rows])

        return await self._read(read)

    async def _update_data(self, job_id: str, data: dict[str, Any], lease: str | None, now: float) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            job = self._require(tx.conn, job_id)
            if lease is not None and (job["lease"] != lease or job["status"] != models.STARTED):
                raise LeaseConflict(id=job_id)
            merged = {**(job["data"] or {}), **data}
            job = self._update_job(tx.conn, job_id, "", (), "data = ?, updated_at = ?", (models.dumps_str(merged), now))
            assert job is not None
            tx.emit(models.EV_UPDATED, job, job["status"])
            return job

        return await self._write(op)

    async def _abort(self, job_id: str, now: float) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            job = self._require(tx.conn, job_id)
            if job["status"] in models.TERMINAL:
                raise Conflict(f"job {job_id} already ended {job['status']}", id=job_id, status=job["status"])
            error = models.dumps_str(models.error_doc("JobAborted", "the job was aborted"))
            was = job["status"]
            if was == models.STARTED:
                tx.conn.execute(_END_ATTEMPT, ended_attempt(job, models.EXEC_ABORTED, now, error))
            job = self._update_job(tx.conn, job_id, "", (),
                                   "status = 'aborted', lease = NULL, lease_expires = NULL, error = ?, finished_at = ?, updated_at = ?",
                                   (error, now, now))
            assert job is not None
            tx.emit(models.EV_ABORTED, job, was)
            return job

        return await self._write(op)

    async def _retry(self, job_id: str, now: float) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            job = self._require(tx.conn, job_id)
            was = job["status"]
            if was not in (models.FAILED, models.ABORTED):
                raise Conflict(f"job {job_id} is {was}; only failed or aborted jobs can be retried",
                               id=job_id, status=was)
            job = self._update_job(tx.conn, job_id, "", (),
                                   "status = 'pending', run_at = ?, max_attempts = MAX(max_attempts, attempts + 1),"
                                   " lease = NULL, lease_expires = NULL, worker = NULL, finished_at = NULL, updated_at = ?",
                                   (now, now))
            assert job is not None
            tx.emit(models.EV_RETRYING, job, was)
            return job

        return await self._write(op)

    async def _ended_since(self, since: float) -> dict[str, int]:
        def read(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute("SELECT status, COUNT(*) FROM jobs WHERE finished_at >= ? GROUP BY status", (since,)).fetchall())

        return await self._read(read)

    async def _ended_series(self, since: float, step: float) -> list[tuple[int, str, int]]:
        def read(conn: sqlite3.Connection) -> list[tuple[int, str, int]]:
            return conn.execute("SELECT CAST((finished_at - ?) / ? AS INTEGER) AS b, status, COUNT(*) FROM jobs"
                                " WHERE finished_at >= ? GROUP BY b, status", (since, step, since)).fetchall()

        return await self._read(read)

    # ------------------------------------------------------------------ workers

    async def _claim(self, queues: list[str], worker: str, limit: int, lease_seconds: float,
                     now: float, lease_prefix: str = "") -> list[dict[str, Any]]:
        return await self._write(lambda tx: self._claim_in(tx, queues, worker, limit, lease_seconds, now, lease_prefix),
                                 items=limit)

    @staticmethod
    def _active_queues(conn: sqlite3.Connection, queues: list[str]) -> list[str]:
        marks = ", ".join("?" * len(queues))
        paused = {r[0] for r in conn.execute(f"SELECT name FROM queues WHERE paused = 1 AND name IN ({marks})", queues)}
        return [q for q in queues if q not in paused]

    def _claim_in(self, tx: _Tx, queues: list[str], worker: str, limit: int, lease_seconds: float,
                  now: float, lease_prefix: str) -> list[dict[str, Any]]:
        conn = tx.conn
        active = self._active_queues(conn, queues)
        if not active:
            return []
        lease = lease_prefix + secrets.token_hex(16)
        # One ordered walk of the ready index per queue (O(log n + limit)); several queues
        # are merged by priority afterwards.
        picks = " UNION ALL ".join(f"SELECT * FROM ({_READY_WALK})" for _ in active)
        params: list[Any] = []
        for queue in active:
            params += [queue, now, limit]
        sets = claim_sets(lease, now + lease_seconds, worker, now)
        rows = conn.execute(
            f"UPDATE jobs SET attempts = attempts + 1, {_CLAIM_SET}"
            f" WHERE seq IN (SELECT seq FROM ({picks}) ORDER BY priority DESC, run_at, seq LIMIT ?)"
            f" RETURNING {', '.join(CLAIM_READS)}, seq",
            (*sets, *params, limit)).fetchall()
        # RETURNING order is arbitrary: hand the jobs out in claim order.
        prio, run_at = CLAIM_READS.index("priority"), CLAIM_READS.index("run_at")
        rows.sort(key=lambda r: (-r[prio], r[run_at], r[-1]))
        jobs = [row_to_job(_CLAIM_VALUES(row + sets)) for row in rows]
        for job in jobs:
            tx.emit(models.EV_STARTED, job, models.PENDING)
        if jobs:
            tx.after_commit.append(functools.partial(self._claimed.remember, jobs))
        return jobs

    async def _enqueue_and_claim(self, job: models.NewJob, queues: list[str], worker: str,
                                 lease_seconds: float, now: float, lease_prefix: str
                                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        def op(tx: _Tx) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            conn = tx.conn
            (job_id,) = models.new_ids(1)
            doc = new_job(job, now, job_id)
            tx.emit(models.EV_CREATED, doc, None)
            self._ensure_queues(tx, {job.queue}, now)
            active = self._active_queues(conn, queues)
            # The claim's first pick among the jobs already ready, if any, against the new one.
            first = None
            for queue in active:
                found = conn.execute(_READY_WALK, (queue, now, 1)).fetchone()
                row = found[1:] if found is not None else None
                if row is not None and (first is None or (-row[0], row[1]) < (-first[0], first[1])):
                    first = row
            if job.queue not in active or (first is not None and (-first[0], first[1]) <= (-doc["priority"], doc["run_at"])):
                # Not the new job: it waits, and the claim takes its first pick as claim() would.
                insert_rows(conn, _INSERT_NEW, [new_job_row(doc)], _NEW_ROW)
                return doc, self._claim_in(tx, queues, worker, 1, lease_seconds, now, lease_prefix)
            lease = lease_prefix + secrets.token_hex(16)
            leased = leased_new_job(doc, worker, lease, lease_seconds, now)
            insert_rows(conn, f"INSERT INTO jobs ({COLS})", [job_row(leased)])
            tx.emit(models.EV_STARTED, leased, models.PENDING)
            tx.after_commit.append(functools.partial(self._claimed.remember, [leased]))
            return doc, [leased]

        return await self._write(op, items=1)

    async def _heartbeat(self, leases: list[tuple[str, str]], lease_seconds: float,
                         worker: str | None, now: float) -> list[dict[str, Any]]:
        def op(tx: _Tx) -> list[dict[str, Any]]:
            out = []
            expires = now + lease_seconds
            for job_id, lease in leases:
                cur = tx.conn.execute("UPDATE jobs SET lease_expires = ? WHERE id = ? AND lease = ? AND status = 'started'",
                                      (expires, job_id, lease))
                if cur.rowcount:
                    out.append({"id": job_id, "ok": True, "lease_expires": expires})
                else:
                    out.append(conflict(job_id, LeaseConflict.code, LeaseConflict.__doc__ or ""))
            if worker is not None:
                tx.conn.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker))
            return out

        return await self._write(op, items=max(1, len(leases)))

    async def _complete(self, outcomes: list[Outcome], now: float) -> list[dict[str, Any]]:
        def op(tx: _Tx) -> list[dict[str, Any]]:
            # The common case, a fenced completion that finished, is applied set-wise: per chunk
            # one UPDATE ... FROM (VALUES ...) RETURNING that finishes every job whose lease
            # still matches (the fence is in its WHERE), then the rows of their executions.
            # Every other outcome goes through _complete_one, in order, after them: a failure,
            # an unfenced completion, the second outcome of a job in the batch, and a finished
            # one the set-wise update left alone (stale lease, unknown id), which it reports.
            # A job this store claimed and still remembers, unchanged since (same lease, same
            # updated_at), is finished without reading its row back: its document is the claimed
            # one with the finish's changes. The others are read back as they are.
            conn = tx.conn
            fast = fenced_finishes(outcomes)
            finished: dict[str, dict[str, Any]] = {}
            take = self._claimed.take
            docs: dict[str, dict[str, Any]] = {}
            known: list[tuple[str, str | None, str, float]] = []
            values: list[tuple[str, str | None, str]] = []
            for job_id, i in fast.items():
                lease, text = outcomes[i].lease, models.json_text(outcomes[i].result)
                doc = take(job_id, lease)
                if doc is not None:
                    docs[job_id] = doc
                    known.append((job_id, lease, text, doc["updated_at"]))
                else:
                    values.append((job_id, lease, text))
            for chunk in models.iter_chunks(known, FINISH_KNOWN_CHUNK):
                matched = {job_id for (job_id,) in conn.execute(*_set_wise(_finish_known_sql, [now, now], chunk, 4))}
                for job_id, lease, text, _ in chunk:
                    if job_id in matched:
                        finished[job_id] = ClaimedDocs.finished(docs[job_id], json_value(text), now)
                    else:
                        values.append((job_id, lease, text))   # changed since the claim: read back below
            for chunk in models.iter_chunks(values, FINISH_CHUNK):
                for row in conn.execute(*_set_wise(_finish_sql, [now, now], chunk, 3)):
                    job = row_to_job(row)
                    finished[job["id"]] = job
            # The returned rows have the lease cleared: the attempt's is the one the update matched.
            insert_rows(conn, _END_ATTEMPTS, [ended_attempt(job, models.EXEC_FINISHED, now, lease=outcomes[fast[job_id]].lease)
                                              for job_id, job in finished.items()])
            out: list[dict[str, Any]] = []
            for i, outcome in enumerate(outcomes):
                job = finished.get(outcome.id) if fast.get(outcome.id) == i else None
                if job is None:
                    out.append(self._complete_one(tx, outcome, now))
                    continue
                tx.emit(models.EV_FINISHED, job, models.STARTED)
                out.append(ok(job))
            return out

        return await self._write(op, items=len(outcomes))

    def _complete_one(self, tx: _Tx, outcome: Outcome, now: float) -> dict[str, Any]:
        conn = tx.conn
        job = self._fetch(conn, outcome.id)
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
            new = self._update_job(conn, outcome.id, "", (),
                                   "status = 'finished', result = ?, error = NULL, lease = NULL, lease_expires = NULL, finished_at = ?, updated_at = ?",
                                   (models.json_text(outcome.result), now, now))
            if running:
                conn.execute(_END_ATTEMPT, ended_attempt(job, models.EXEC_FINISHED, now))
            kind = models.EV_FINISHED
        else:
            error = outcome.error or models.error_doc("Error", "the job failed")
            error_json = models.dumps_str(error)
            if running:
                conn.execute(_END_ATTEMPT, ended_attempt(job, models.EXEC_FAILED, now, error_json))
            run_at = self.retry_at(job, outcome.retry, now)
            if run_at is None:
                new = self._update_job(conn, outcome.id, "", (),
                                       "status = 'failed', error = ?, lease = NULL, lease_expires = NULL, finished_at = ?, updated_at = ?",
                                       (error_json, now, now))
                kind = models.EV_FAILED
            else:
                new = self._update_job(conn, outcome.id, "", (),
                                       "status = 'pending', error = ?, run_at = ?, lease = NULL, lease_expires = NULL, worker = NULL, updated_at = ?",
                                       (error_json, run_at, now))
                kind = models.EV_RETRYING
        assert new is not None
        tx.emit(kind, new, job["status"])
        return ok(new)

    async def _release(self, leases: list[tuple[str, str]], now: float) -> list[dict[str, Any]]:
        def op(tx: _Tx) -> list[dict[str, Any]]:
            out = []
            for job_id, lease in leases:
                job = self._fetch(tx.conn, job_id)
                if job is None or job["status"] != models.STARTED or job["lease"] != lease:
                    out.append(conflict(job_id, LeaseConflict.code, LeaseConflict.__doc__ or ""))
                    continue
                # The attempt never ran: nothing of it is kept (a row only an older version wrote).
                tx.conn.execute("DELETE FROM executions WHERE job_id = ? AND attempt = ?", (job_id, job["attempts"]))
                new = self._update_job(tx.conn, job_id, "", (),
                                       "status = 'pending', attempts = attempts - 1, lease = NULL, lease_expires = NULL,"
                                       " worker = NULL, started_at = NULL, updated_at = ?", (now,))
                assert new is not None
                tx.emit(models.EV_RELEASED, new, models.STARTED)
                out.append(ok(new))
            return out

        return await self._write(op)

    async def _requeue_expired(self, now: float) -> int:
        def op(tx: _Tx) -> int:
            conn = tx.conn
            rows = conn.execute(f"SELECT {COLS} FROM jobs WHERE status = 'started' AND lease_expires < ? LIMIT 1000",
                                (now,)).fetchall()
            for row in rows:
                job = row_to_job(row)
                error = models.error_doc("WorkerLost", f"the lease of worker {job['worker']} expired before the job ended")
                error_json = models.dumps_str(error)
                if job["attempts"] >= job["max_attempts"]:
                    new = self._update_job(conn, job["id"], "AND lease = ?", (job["lease"],),
                                           "status = 'failed', error = ?, lease = NULL, lease_expires = NULL, finished_at = ?, updated_at = ?",
                                           (error_json, now, now))
                    kind = models.EV_FAILED
                else:
                    new = self._update_job(conn, job["id"], "AND lease = ?", (job["lease"],),
                                           "status = 'pending', error = ?, run_at = ?, lease = NULL, lease_expires = NULL, worker = NULL, updated_at = ?",
                                           (error_json, now, now))
                    kind = models.EV_REQUEUED
                if new is not None:
                    conn.execute(_END_ATTEMPT, ended_attempt(job, models.EXEC_LOST, now, error_json))
                    tx.emit(kind, new, models.STARTED)
            return len(rows)

        return await self._write(op)

    async def _next_run_at(self, queues: list[str]) -> float | None:
        def read(conn: sqlite3.Connection) -> float | None:
            best = None
            for name in queues:
                (value,) = conn.execute("SELECT MIN(run_at) FROM jobs INDEXED BY jobs_delayed"
                                        " WHERE status = 'pending' AND run_at > created_at AND queue = ?", (name,)).fetchone()
                if value is not None and (best is None or value < best):
                    best = value
            return best

        return await self._read(read)

    async def _register_worker(self, info: dict[str, Any], now: float) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            # A worker registering again keeps its first registered_at: answer with the stored one.
            # JSON null values would delete keys in json_patch: drop them first.
            info_ = {k: v for k, v in info.items() if v is not None}
            # Fields not sent again (a pending command) are kept.
            registered_at, merged = tx.conn.execute(
                "INSERT INTO workers (id, info, registered_at, last_seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET info = json_patch(workers.info, excluded.info), last_seen = excluded.last_seen"
                " RETURNING registered_at, info",
                (info_["id"], models.dumps_str(info_), now, now)).fetchone()
            doc = {**models.loads(merged), "registered_at": registered_at, "last_seen": now}
            tx.events.append((models.EV_WORKER, None, None, doc))
            return doc

        return await self._write(op)

    async def _workers(self) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute("SELECT info, registered_at, last_seen FROM workers ORDER BY last_seen DESC").fetchall()
            return [{**models.loads(r[0]), "registered_at": r[1], "last_seen": r[2]} for r in rows]

        return await self._read(read)

    async def _worker(self, worker_id: str) -> dict[str, Any]:
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT info, registered_at, last_seen FROM workers WHERE id = ?", (worker_id,)).fetchone()
            if row is None:
                raise worker_not_found(worker_id)
            return {**models.loads(row[0]), "registered_at": row[1], "last_seen": row[2]}

        return await self._read(read)

    async def _command_worker(self, worker_id: str, command: str | None, now: float) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            row = tx.conn.execute("SELECT info, registered_at, last_seen FROM workers WHERE id = ?", (worker_id,)).fetchone()
            if row is None:
                raise worker_not_found(worker_id)
            info = {**models.loads(row[0]), "command": command}
            tx.conn.execute("UPDATE workers SET info = ? WHERE id = ?", (models.dumps_str(info), worker_id))
            doc = {**info, "registered_at": row[1], "last_seen": row[2]}
            tx.events.append((models.EV_WORKER, None, None, doc))
            return doc

        return await self._write(op)

    # ------------------------------------------------------------------ queues

    async def _queues(self) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for name, paused, strict in conn.execute("SELECT name, paused, strict FROM queues ORDER BY name"):
                out[name] = {"name": name, "paused": bool(paused), "strict": bool(strict),
                             "counts": dict.fromkeys(models.STATUSES, 0)}
            for name, status, count in conn.execute("SELECT queue, status, n FROM queue_counts WHERE n != 0"):
                entry = out.setdefault(name, {"name": name, "paused": False, "strict": False,
                                              "counts": dict.fromkeys(models.STATUSES, 0)})
                entry["counts"][status] = count
            for entry in out.values():
                # The creation time of the pending job enqueued first: the one with the lowest
                # seq (seqs grow with creation), found at the start of the queue's pending run
                # of the (queue, status) index. O(log n) per queue, where MIN(created_at) over
                # the pending jobs reads every one of them (most of a second at a million).
                entry["oldest_pending"] = None
                if entry["counts"][models.PENDING]:
                    row = conn.execute("SELECT created_at FROM jobs WHERE seq = (SELECT MIN(seq) FROM jobs"
                                       " INDEXED BY jobs_queue_status WHERE queue = ? AND status = 'pending')",
                                       (entry["name"],)).fetchone()
                    entry["oldest_pending"] = row[0] if row else None
            return list(out.values())

        return await self._read(read)

    async def _set_queue(self, name: str, settings: dict[str, bool], now: float) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            self._ensure_queues(tx, {name}, now)
            for column, value in settings.items():   # column names come from the contract, not the caller
                tx.conn.execute(f"UPDATE queues SET {column} = ?, updated_at = ? WHERE name = ?", (int(value), now, name))
            paused, strict = tx.conn.execute("SELECT paused, strict FROM queues WHERE name = ?", (name,)).fetchone()
            doc = {"name": name, "paused": bool(paused), "strict": bool(strict)}
            tx.events.append((models.EV_QUEUE, name, None, doc))
            return doc

        return await self._write(op)

    # ------------------------------------------------------------------ tokens

    @staticmethod
    def _token_doc(row: Sequence[Any]) -> dict[str, Any]:
        doc = dict(zip(("id", "hash", "name", "scopes", "queues", "methods", "created_at", "expires_at", "revoked_at"), row))
        for key in ("scopes", "queues", "methods"):
            doc[key] = models.loads(doc[key])
        return doc

    _TOKEN_COLS = "id, hash, name, scopes, queues, methods, created_at, expires_at, revoked_at"

    async def _create_token(self, record: dict[str, Any]) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            tx.conn.execute(f"INSERT INTO tokens ({self._TOKEN_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (record["id"], record["hash"], record["name"], models.dumps_str(record["scopes"]),
                             models.dumps_str(record["queues"]), models.dumps_str(record["methods"]),
                             record["created_at"], record["expires_at"], record["revoked_at"]))
            return {k: v for k, v in record.items() if k != "hash"}

        return await self._write(op)

    async def _token(self, token_id: str) -> dict[str, Any]:
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute(f"SELECT {self._TOKEN_COLS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise token_not_found(token_id)
            return self._token_doc(row)

        return await self._read(read)

    async def _revoke_token(self, token_id: str, now: float) -> dict[str, Any]:
        def op(tx: _Tx) -> dict[str, Any]:
            tx.conn.execute("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (now, token_id))
            row = tx.conn.execute(f"SELECT {self._TOKEN_COLS} FROM tokens WHERE id = ?", (token_id,)).fetchone()
            if row is None:
                raise token_not_found(token_id)
            return {k: v for k, v in self._token_doc(row).items() if k != "hash"}

        return await self._write(op)

    async def _tokens(self) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(f"SELECT {self._TOKEN_COLS} FROM tokens ORDER BY created_at DESC").fetchall()
            return [{k: v for k, v in self._token_doc(r).items() if k != "hash"} for r in rows]

        return await self._read(read)

    # ------------------------------------------------------------------ events

    async def _events_since(self, seq: int, limit: int, queue: str | None, job_id: str | None) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, params = ["seq > ?"], [seq]
            if queue is not None:
                where.append("queue = ?")
                params.append(queue)
            if job_id is not None:
                where.append("job_id = ?")
                params.append(job_id)
            rows = conn.execute(f"SELECT seq, ts, kind, queue, job_id, doc FROM events WHERE {' AND '.join(where)}"
                                " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
            return [{"seq": r[0], "ts": r[1], "kind": r[2], "queue": r[3], "job_id": r[4], "new_val": event_doc(_loads(r[5]))}
                    for r in rows]

        return await self._read(read)

    async def _last_seq(self) -> int:
        return await self._read(lambda conn: conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    async def _append_logs(self, lines: list[dict[str, Any]]) -> int:
        def op(tx: _Tx) -> int:
            conn = tx.conn
            ids = sorted({line["job_id"] for line in lines})
            queues: dict[str, str] = {}
            for chunk in models.iter_chunks(ids, 500):
                marks = ", ".join("?" * len(chunk))
                queues.update(conn.execute(f"SELECT id, queue FROM jobs WHERE id IN ({marks})", chunk).fetchall())
            (last,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM logs").fetchone()
            by_job: dict[str, list[dict[str, Any]]] = {}
            rows = []
            for line in lines:
                if line["job_id"] not in queues:
                    continue
                last += 1
                stored = {"id": last, "attempt": line["attempt"], "stream": line["stream"], "line": line["line"], "ts": line["ts"]}
                by_job.setdefault(line["job_id"], []).append(stored)
                rows.append((last, line["job_id"], line["attempt"], line["stream"], line["line"], line["ts"]))
            conn.executemany("INSERT INTO logs (id, job_id, attempt, stream, line, ts) VALUES (?, ?, ?, ?, ?, ?)", rows)
            for job_id, stored_lines in by_job.items():
                tx.events.append((models.EV_LOG, queues[job_id], job_id, {"id": job_id, "lines": stored_lines}))
            return len(rows)

        return await self._write(op)

    async def _logs(self, job_id: str, since: int, limit: int) -> list[dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            self._require(conn, job_id)
            rows = conn.execute("SELECT id, attempt, stream, line, ts FROM logs WHERE job_id = ? AND id > ?"
                                " ORDER BY id LIMIT ?", (job_id, since, limit)).fetchall()
            return [{"id": r[0], "attempt": r[1], "stream": r[2], "line": r[3], "ts": r[4]} for r in rows]

        return await self._read(read)

    async def _prune(self, cutoff: float) -> int:
        def op(tx: _Tx) -> int:
            conn = tx.conn
            conn.execute("DELETE FROM logs WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < ?"
                         " AND status IN ('finished', 'failed', 'aborted'))", (cutoff,))
            conn.execute("DELETE FROM executions WHERE job_id IN (SELECT id FROM jobs WHERE finished_at < ?"
                         " AND status IN ('finished', 'failed', 'aborted'))", (cutoff,))
            for queue, status, count in conn.execute(
                    "SELECT queue, status, COUNT(*) FROM jobs WHERE finished_at < ? AND status IN ('finished', 'failed', 'aborted')"
                    " GROUP BY queue, status", (cutoff,)):
                tx.count(queue, status, -count)
            cur = conn.execute("DELETE FROM jobs WHERE finished_at < ? AND status IN ('finished', 'failed', 'aborted')", (cutoff,))
            conn.execute("DELETE FROM events WHERE ts < ? AND seq < (SELECT MAX(seq) FROM events)", (cutoff,))
            return cur.rowcount

        return await self._write(op)


__all__ = ["SQLiteStore", "TQueuesError", "InvalidRequest"]
