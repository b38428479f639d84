"""The RethinkDB store: the original engine of TQueues, shared by any number of dispatchers.

RethinkDB makes every write of ONE document atomic and has no multi-document transactions.
Everything below follows from that: each change that must be atomic is shaped as a
conditional write of one document, and what cannot be (a job and its event) is written in an
order that a crash can only leave recoverable.

Tables (database from the URL, names prefixed ``tqueues_`` so a database can be shared)
    ``jobs`` (id = the time-ordered job id), ``events`` (id = seq), ``logs`` (id = a global line
    number), ``queues``, ``workers``, ``tokens``, ``keys`` (idempotency keys) and ``meta``
    (counters). The store creates missing tables and secondary indexes itself, idempotently,
    so several dispatchers may start at once. Each job document embeds its executions (one
    entry per attempt, ``_execs``): claiming, completing or losing an attempt then changes the
    job and its execution in one atomic write, never in two.

Claims
    Candidates are read from the compound index ``ready`` = ``[queue, status, -priority,
    run_at, id]`` with ``between([q, "pending", minval], [q, "pending", maxval])`` and
    ``order_by(index="ready")``, stopping after ``limit`` due jobs: no table scan, no sort. They
    are then leased by ONE ``update`` whose function is ``r.branch(status == "pending" and
    run_at <= now, {...lease...}, {})`` with ``return_changes=True``: a document is leased only
    if it is still pending when the server applies the update, atomically per document, so two
    dispatchers can never both lease it. The jobs that came back in ``changes`` are the claim;
    candidates lost to another dispatcher are replaced by the next ones, in a few more rounds.
    Candidates being claimed by this process are skipped by its other concurrent claims.

Fencing
    Heartbeat, release and every outcome are conditional writes too: the branch compares the
    document's ``status`` and ``lease`` with the lease presented (and with what the answer was
    computed from), so a stale lease changes nothing and is reported as a conflict.

Events and ``seq``
    ``seq`` comes from a counter document in ``meta`` incremented by an atomic single-document
    ``update`` with ``return_changes``; one update reserves a block for every operation waiting
    at that moment. The counter never goes back, so seqs are unique and increasing across
    dispatchers. A job write carries the seq of the event that announces it (``_seq``, with
    the event kind in ``_kind``), and the event document ``{id: seq, ...}`` is inserted right
    after the job write.

    The window: between the job write and the event insert (one round trip) the event does not
    exist yet; if the dispatcher dies in it, the job changed but its event is missing. Seqs
    reserved by another dispatcher may also become visible out of order. Readers therefore
    never skip a missing seq on their own: ``last_seq`` and ``events_since`` stop at the first
    gap (the *watermark*: every seq up to it exists), so a client resuming from ``since=N``
    never misses an event written later below N. Gaps are closed by a sweeper in every
    dispatcher: a seq still missing after ``GRACE`` seconds is recovered from the job whose
    ``_seq`` names it (the event is rebuilt from the job document, which is exactly what the
    lost insert would have written) or, when no job names it (a conditional write that lost,
    an operation that died before writing, a queue or worker event), filled with a *void*
    document that readers skip. Both inserts use the seq as primary key with
    ``conflict="error"``, so recovery is idempotent: whoever inserts a seq first wins, a second
    attempt changes nothing; an event insert that finds its seq voided (a writer slower than
    ``GRACE``) takes a new seq. Seqs reserved for writes that lost a race are voided at once by
    their writer. Only the latest change of a job can be recovered: if a job changed again
    before the sweeper ran, the earlier event stays a void and the later one announces the
    current document.

Live events
    Every dispatcher follows a changefeed on the events table; each change wakes a reader that
    publishes events to in-process subscribers strictly in seq order from its cursor (a slow
    poll backs the changefeed up, and a reconnecting changefeed resumes from the cursor, so
    nothing is lost). A dispatcher publishes its own events at once when they continue the
    cursor.

Connections
    A small pool of multiplexed connections (the asyncio driver runs many queries on one
    connection) plus one for the changefeed. A connection that breaks is replaced on next
    use; while the server cannot be reached, calls raise StoreUnavailable at once (the
    dispatcher answers 503 with Retry-After) and reconnection is retried with an exponential
    backoff of up to 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import time
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, unquote, urlsplit

from .. import models
from ..errors import ConfigurationError, Conflict, JobNotFound, LeaseConflict, StoreUnavailable, TQueuesError
from .base import JOB_KEYS, Outcome, Store, conflict, new_job, ok, redact, token_not_found, worker_not_found

try:  # imported lazily by open_store; the module itself needs the driver
    from rethinkdb import RethinkDB
    from rethinkdb import errors as rdb_errors
    from rethinkdb.net import Cursor as _Cursor
except ImportError:  # pragma: no cover - reported when the store is opened
    RethinkDB = None  # type: ignore[assignment,misc]
    rdb_errors = None  # type: ignore[assignment]
    _Cursor = None  # type: ignore[assignment,misc]

log = logging.getLogger("tqueues.store.rethinkdb")

r: Any = None
if RethinkDB is not None:
    r = RethinkDB()
    r.set_loop_type("asyncio")

SCHEMA_VERSION = 1
PREFIX = "tqueues_"
TABLES = ("jobs", "events", "logs", "queues", "workers", "tokens", "keys", "meta")
DEFAULT_PORT = 28015
DEFAULT_DB = "tqueues"
DEFAULT_POOL = 4
CONNECT_TIMEOUT = 5.0
QUERY_TIMEOUT = 60.0
SCHEMA_TIMEOUT = 600.0
MAX_BACKOFF = 5.0
CLAIM_ROUNDS = 5
READ_CHUNK = 1000
DB_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")

#: Job fields holding seconds since the epoch: RethinkDB stores numbers as doubles and sends
#: whole ones without a fraction, so they are turned back into floats when read.
JOB_FLOATS = ("run_at", "timeout", "backoff", "lease_expires", "created_at", "started_at", "finished_at", "updated_at")
EXEC_FIELDS = ("status", "finished_at", "error")
TOKEN_FIELDS = ("id", "hash", "name", "scopes", "queues", "methods", "created_at", "expires_at", "revoked_at")


# --------------------------------------------------------------------------- schema

def index_functions() -> dict[str, dict[str, Callable[[Any], Any]]]:
    """The secondary indexes of each table (name → index function).

    Index functions never put ``null`` inside a compound key (RethinkDB does not index null
    values); a function returns plain ``None`` for documents that must stay out of an index.
    """
    return {
        "jobs": {
            # Claims: pending jobs of a queue by priority (high first), then run_at, then enqueue order.
            "ready": lambda j: [j["queue"], j["status"], j["priority"].mul(-1), j["run_at"], j["id"]],
            # next_run_at: the earliest run_at of a queue's pending jobs.
            "queue_run_at": lambda j: [j["queue"], j["status"], j["run_at"]],
            # list_jobs and per-status counts, newest first by id.
            "queue_status_id": lambda j: [j["queue"], j["status"], j["id"]],
            "queue_id": lambda j: [j["queue"], j["id"]],
            "status_id": lambda j: [j["status"], j["id"]],
            # requeue_expired: leases of started jobs only.
            "lease_expires": lambda j: r.branch(j["status"].eq(models.STARTED), j["lease_expires"], None),
            # stats and prune: ended jobs (finished_at is null, so unindexed, for the others).
            "finished_at": lambda j: j["finished_at"],
            # the sweeper: which job a missing event belongs to.
            "event_seq": lambda j: j["_seq"],
        },
        "events": {
            "queue_seq": lambda e: r.branch(e.has_fields("queue"), [e["queue"], e["id"]], None),
            "job_seq": lambda e: r.branch(e.has_fields("job_id"), [e["job_id"], e["id"]], None),
        },
        "logs": {
            "job_line": lambda line: [line["job_id"], line["id"]],
        },
    }


def parse_url(url: str) -> dict[str, Any]:
    """``rethinkdb://[user[:password]@]host[:port][/database][?pool_size=N]`` → connection settings."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "rethinkdb":
        raise ConfigurationError(f"not a rethinkdb:// URL: {redact(url)}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigurationError(f"the port of {redact(url)} is not a number") from None
    database = unquote(parts.path.lstrip("/")) or DEFAULT_DB
    if not DB_NAME_RE.match(database):
        raise ConfigurationError(f"RethinkDB database names are letters, digits and underscores, not {database!r}")
    query = dict(parse_qsl(parts.query))
    try:
        pool_size = int(query.pop("pool_size")) if "pool_size" in query else None
    except ValueError:
        raise ConfigurationError("pool_size must be an integer") from None
    if query:
        raise ConfigurationError(f"unknown rethinkdb:// URL parameter(s): {', '.join(sorted(query))}")
    return {"host": parts.hostname or "localhost", "port": port, "db": database,
            "user": unquote(parts.username) if parts.username else "admin",
            "password": unquote(parts.password) if parts.password else "", "pool_size": pool_size}


def pk(value: str) -> str:
    """A primary key for a caller-chosen string: itself when short enough for RethinkDB
    (primary keys hold at most 127 bytes), else a digest of it."""
    if len(value.encode()) <= 100:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def key_id(key: str) -> str:
    """The primary key of an idempotency key's document (keys may be longer than RethinkDB allows)."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def as_json(value: Any) -> Any:
    """``value`` as a ReQL term parsed by the server from JSON.

    Documents go to the server as one JSON string instead of being built term by term by the
    driver: any nesting depth works (the driver stops at 20 levels), and the values stored
    are exactly what the other stores keep (JSON types only; orjson raises on anything else
    before anything is written).
    """
    return r.json(models.dumps_str(value))


def text_match(j: Any, text: str) -> Any:
    """Whether ``text`` occurs, ignoring case, in the job's id, method, key, positional
    arguments or error (as JSON). Keyword arguments are never searched (they may hold secrets).

    ``split`` on the text as a literal separator finds it without a regular expression, so no
    character of the text is special. ReQL's ``downcase`` lowers ASCII letters only, so the
    text is lowered the same way.
    """
    needle = text.translate(ASCII_LOWER)
    fields = [j["id"], j["method"], r.branch(j["key"].eq(None), "", j["key"]), j["args"].to_json_string(),
              r.branch(j["error"].eq(None), "", j["error"].to_json_string())]
    return r.or_(*(field.downcase().split(needle).count().gt(1) for field in fields))


def _f(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """The contract's job document from a stored one (internal ``_`` fields dropped)."""
    out = {k: doc.get(k) for k in JOB_KEYS}
    for key in JOB_FLOATS:
        out[key] = _f(out[key])
    return out


def to_event(doc: dict[str, Any]) -> dict[str, Any]:
    """The contract's event from a stored event document."""
    new_val = doc.get("new_val")
    if isinstance(new_val, dict) and doc.get("job_id") is not None and "method" in new_val:
        new_val = public(new_val)
    return {"seq": int(doc["id"]), "ts": float(doc["ts"]), "kind": doc["kind"], "queue": doc.get("queue"),
            "job_id": doc.get("job_id"), "new_val": new_val}


def event_doc(seq: int, kind: str, ts: float, new_val: dict[str, Any], queue: str | None = None,
              job_id: str | None = None) -> dict[str, Any]:
    """A stored event; ``queue`` and ``job_id`` are left out when None, so the indexes over
    them hold only the events that have them."""
    doc: dict[str, Any] = {"id": seq, "ts": ts, "kind": kind, "new_val": new_val}
    if queue is not None:
        doc["queue"] = queue
    if job_id is not None:
        doc["job_id"] = job_id
    return doc


def job_event(seq: int, kind: str, job: dict[str, Any], ts: float) -> dict[str, Any]:
    return event_doc(seq, kind, ts, job, job["queue"], job["id"])


def void_doc(seq: int, ts: float) -> dict[str, Any]:
    """A seq that will never carry an event; readers skip it."""
    return {"id": seq, "ts": ts, "void": True}


def _disconnected(exc: BaseException) -> bool:
    """True for errors that mean the server is unreachable rather than the query wrong."""
    if isinstance(exc, (OSError, asyncio.TimeoutError, ConnectionError)):
        return True
    if rdb_errors is None:
        return False
    return isinstance(exc, (rdb_errors.ReqlDriverError, rdb_errors.ReqlAvailabilityError))


def _unavailable(exc: BaseException) -> StoreUnavailable:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return StoreUnavailable(f"RethinkDB is unreachable: {text}")


def _changes(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The new documents a write with ``return_changes`` reports (deletions left out)."""
    return [c["new_val"] for c in result.get("changes") or () if c.get("new_val") is not None]


class _Counter:
    """Reserves ranges of a counter document, merging every request made while one update
    is in flight into the next update (one round trip for many operations)."""

    def __init__(self, store: "RethinkDBStore", name: str) -> None:
        self._store = store
        self._name = name
        self._waiting: list[tuple[int, asyncio.Future[int]]] = []
        self._running = False

    async def reserve(self, count: int) -> int:
        """The first of ``count`` new consecutive values."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append((count, future))
        if not self._running:
            self._running = True
            asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                total = sum(count for count, _ in batch)
                try:
                    last = await self._store._bump(self._name, total)
                except BaseException as exc:
                    error = exc if isinstance(exc, Exception) else StoreUnavailable("the store is closing")
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                first = last - total + 1
                for count, future in batch:
                    if not future.done():
                        future.set_result(first)
                    first += count
        finally:
            self._running = False
            for _, future in self._waiting:
                if not future.done():
                    future.set_exception(StoreUnavailable("the store is closing"))
            self._waiting = []


class RethinkDBStore(Store):
    """Jobs in RethinkDB, shared by any number of dispatchers (see the module docstring)."""

    scheme = "rethinkdb"
    shared = True

    #: How long a seq may stay missing before the sweeper recovers or voids it.
    GRACE = 5.0
    SWEEP_INTERVAL = 1.0
    #: The slow poll that backs the changefeed up.
    POLL_INTERVAL = 1.0

    def __init__(self, url: str, pool_size: int | None = None) -> None:
        super().__init__(url)
        settings = parse_url(url)
        self.host: str = settings["host"]
        self.port: int = settings["port"]
        self.db: str = settings["db"]
        self.user: str = settings["user"]
        self._password: str = settings["password"]
        self.pool_size = pool_size or settings["pool_size"] or DEFAULT_POOL
        if self.pool_size < 1:
            raise ConfigurationError("pool_size must be at least 1")
        self._conns: list[Any] = [None] * self.pool_size
        self._slot_locks = [asyncio.Lock() for _ in range(self.pool_size)]
        self._rr = 0
        self._retry_at = 0.0          # monotonic time before which no reconnection is tried
        self._delay = 0.0
        self._last_error = ""
        self._closed = True
        self._tasks: list[asyncio.Task[None]] = []
        self._feed_conn: Any = None
        self._connecting: set[asyncio.Future[Any]] = set()
        self._closing: set[asyncio.Future[None]] = set()
        self._seqs = _Counter(self, "seq")
        self._outbox: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        self._emitting = False
        self._cursor = 0               # last seq published to subscribers
        self._high = 0                 # every seq up to here exists (or was pruned)
        self._pruned = 0               # events up to here may have been deleted
        self._wake = asyncio.Event()
        self._missing: dict[int, float] = {}
        self._claiming: set[str] = set()
        self._pick_lock = asyncio.Lock()
        self._reap_lock = asyncio.Lock()
        if r is not None:
            self._bind_tables()

    def _bind_tables(self) -> None:
        db = r.db(self.db)
        self.jobs = db.table(PREFIX + "jobs")
        self.events = db.table(PREFIX + "events")
        self.logs_table = db.table(PREFIX + "logs")
        self.queues_table = db.table(PREFIX + "queues")
        self.workers_table = db.table(PREFIX + "workers")
        self.tokens_table = db.table(PREFIX + "tokens")
        self.keys = db.table(PREFIX + "keys")
        self.meta = db.table(PREFIX + "meta")

    @property
    def display_url(self) -> str:
        return f"rethinkdb://{self.host}:{self.port}/{self.db}"

    # ------------------------------------------------------------------ connections

    async def _connect(self) -> Any:
        """A new connection, or StoreUnavailable at once while the backoff after a failure runs.

        The connection is made in a task of its own that a cancelled caller does not interrupt
        (the driver would leave a half-open socket behind); :meth:`_close` waits for those
        tasks, and a connection nobody is waiting for any more is closed.
        """
        now = time.monotonic()
        if now < self._retry_at:
            raise StoreUnavailable(f"RethinkDB at {self.host}:{self.port} is unreachable ({self._last_error}); "
                                   f"retrying in {self._retry_at - now:.1f} s")
        task = asyncio.ensure_future(asyncio.wait_for(
            r.connect(host=self.host, port=self.port, db=self.db, user=self.user, password=self._password,
                      timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT + 1))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)
        try:
            conn = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._close_orphan)
            raise
        except Exception as exc:
            if not _disconnected(exc):
                raise
            self._delay = min(self._delay * 2, MAX_BACKOFF) if self._delay else 0.1
            self._retry_at = time.monotonic() + self._delay
            self._last_error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, rdb_errors.ReqlAuthError):
                raise StoreUnavailable(f"RethinkDB at {self.host}:{self.port} refused user {self.user!r}: "
                                       f"{self._last_error}") from None
            raise StoreUnavailable(f"RethinkDB at {self.host}:{self.port} is unreachable: {self._last_error}") from None
        self._delay = 0.0
        self._retry_at = 0.0
        return conn

    def _close_orphan(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._close_later(task.result())

    def _close_later(self, conn: Any) -> None:
        """Close a connection in the background; :meth:`_close` waits for it."""
        async def close_quietly() -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(noreply_wait=False), 5)

        closing = asyncio.ensure_future(close_quietly())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _conn(self) -> Any:
        """A connection of the pool (round robin); a broken one is replaced."""
        if self._closed:
            raise StoreUnavailable("the store is closed")
        self._rr = (self._rr + 1) % self.pool_size
        slot = self._rr
        conn = self._conns[slot]
        if conn is not None and conn.is_open():
            return conn
        async with self._slot_locks[slot]:
            conn = self._conns[slot]
            if conn is not None and conn.is_open():
                return conn
            self._conns[slot] = None
            conn = await self._connect()
            if self._closed:
                self._close_later(conn)
                raise StoreUnavailable("the store is closed")
            self._conns[slot] = conn
            return conn

    def _discard(self, conn: Any) -> None:
        for slot, held in enumerate(self._conns):
            if held is conn:
                self._conns[slot] = None
        self._close_later(conn)

    async def _run(self, query: Any, *, raw: bool = False, timeout: float = QUERY_TIMEOUT) -> Any:
        """Run a query on a pooled connection; a cursor is read to the end into a list.

        Unreachable-server errors become StoreUnavailable unless ``raw`` (schema set-up needs
        to see "already exists").
        """
        conn = await self._conn()

        async def go() -> Any:
            result = await query.run(conn)
            if _Cursor is not None and isinstance(result, _Cursor):
                return [item async for item in result]
            return result

        try:
            return await asyncio.wait_for(go(), timeout)
        except TQueuesError:
            raise
        except asyncio.TimeoutError:
            self._discard(conn)
            raise StoreUnavailable(f"RethinkDB did not answer within {timeout:.0f} s") from None
        except Exception as exc:
            if raw or not _disconnected(exc):
                raise
            if not conn.is_open():
                self._discard(conn)
            raise _unavailable(exc) from None

    # ------------------------------------------------------------------ lifecycle

    async def _open(self) -> None:
        if r is None:
            raise ConfigurationError("the RethinkDB store needs the rethinkdb driver: pip install 'tqueues[rethinkdb]'")
        self._closed = False
        try:
            await self._ensure_schema()
            self._pruned = await self._meta_value("pruned")
            top = await self._run(self.events.order_by(index=r.desc("id")).limit(1)["id"])
            # Events written before this store opened are not published; start near the top.
            self._high = max(self._pruned, int(top[0]) - READ_CHUNK if top else 0)
            await self._watermark()
            self._cursor = self._high
        except StoreUnavailable as exc:
            await self._close_connections()
            self._closed = True
            raise StoreUnavailable(f"cannot open RethinkDB store {self.display_url}: {exc.message}") from None
        except BaseException:
            await self._close_connections()
            self._closed = True
            raise
        self._tasks = [asyncio.ensure_future(self._feed_loop()), asyncio.ensure_future(self._catch_up_loop()),
                       asyncio.ensure_future(self._sweep_loop())]

    async def _close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._feed_conn is not None:      # ends the changefeed cursor the feed task reads
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._feed_conn.close(noreply_wait=False), 2)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 10)
        self._tasks = []
        if self._connecting:          # connections still being made: wait, then close them below
            await asyncio.wait(set(self._connecting), timeout=CONNECT_TIMEOUT + 2)
            await asyncio.sleep(0)    # let their done-callbacks hand orphans to _close_later
        await self._close_connections()
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=6)

    async def _close_connections(self) -> None:
        conns = [c for c in self._conns if c is not None]
        self._conns = [None] * self.pool_size
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(noreply_wait=False), 5)

    async def _ensure_schema(self) -> None:
        """Create the database, tables, indexes and counters that are missing (idempotent)."""
        try:
            await self._run(r.db_list().contains(self.db).do(
                lambda exists: r.branch(exists, {"dbs_created": 0}, r.db_create(self.db))), raw=True)
        except Exception as exc:
            self._schema_error(exc)
        existing = set(await self._run(r.db(self.db).table_list()))

        async def create_table(name: str) -> None:
            try:
                await self._run(r.db(self.db).table_create(PREFIX + name), raw=True)
            except Exception as exc:
                self._schema_error(exc)

        await asyncio.gather(*(create_table(n) for n in TABLES if PREFIX + n not in existing))
        await asyncio.gather(*(self._run(r.db(self.db).table(PREFIX + n).wait(wait_for="ready_for_writes",
                                                                               timeout=SCHEMA_TIMEOUT),
                                         timeout=SCHEMA_TIMEOUT + 5) for n in TABLES))
        for table_name, indexes in index_functions().items():
            table = r.db(self.db).table(PREFIX + table_name)
            present = set(await self._run(table.index_list()))

            async def create_index(table: Any, name: str, function: Callable[[Any], Any]) -> None:
                try:
                    await self._run(table.index_create(name, function), raw=True)
                except Exception as exc:
                    self._schema_error(exc)

            await asyncio.gather(*(create_index(table, name, fn) for name, fn in indexes.items() if name not in present))
            # Building an index over an existing table can take minutes.
            await self._run(table.index_wait(), timeout=SCHEMA_TIMEOUT)
        await self._run(self.meta.insert([{"id": "seq", "value": 0}, {"id": "log", "value": 0},
                                          {"id": "pruned", "value": 0}, {"id": "schema", "value": SCHEMA_VERSION}],
                                         conflict="error"))
        version = await self._meta_value("schema")
        if version > SCHEMA_VERSION:
            raise ConfigurationError(f"the database {self.db} has tqueues schema version {version}, "
                                     f"newer than this tqueues ({SCHEMA_VERSION})")

    @staticmethod
    def _schema_error(exc: Exception) -> None:
        """Ignore "already exists" (another dispatcher created it first); raise anything else."""
        if "already exists" in str(exc):
            return
        if _disconnected(exc):
            raise _unavailable(exc) from None
        raise exc

    async def _meta_value(self, name: str) -> int:
        value = await self._run(self.meta.get(name)["value"].default(0))
        return int(value)

    async def _bump(self, name: str, count: int) -> int:
        """Atomically add ``count`` to a counter; its new value (the last one reserved)."""
        result = await self._run(self.meta.get(name).update(lambda m: {"value": m["value"].add(count)},
                                                             return_changes=True))
        changed = _changes(result)
        if not changed:
            raise StoreUnavailable(f"the {name} counter of database {self.db} is missing; reopen the store")
        return int(changed[0]["value"])

    # ------------------------------------------------------------------ events: writing

    async def _emit(self, docs: list[dict[str, Any]]) -> None:
        """Insert event (and void) documents, merged with those of concurrent operations.

        The change they describe is already written; if the insert fails the sweeper recovers
        the events from the jobs (or voids their seqs), so the caller's answer stands.
        """
        if not docs:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((docs, future))
        if not self._emitting:
            self._emitting = True
            asyncio.ensure_future(self._emit_loop())
        await future

    async def _emit_loop(self) -> None:
        batch: list[tuple[list[dict[str, Any]], asyncio.Future[None]]] = []
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                docs = [doc for docs, _ in batch for doc in docs]
                try:
                    await self._insert_events(docs)
                except Exception as exc:
                    log.warning("events %d-%d not written (%s); they will be recovered from the jobs",
                                min(d["id"] for d in docs), max(d["id"] for d in docs), exc)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
                batch = []
        finally:
            self._emitting = False
            for _, future in batch + self._outbox:
                if not future.done():
                    future.set_result(None)
            self._outbox = []

    async def _insert_events(self, docs: list[dict[str, Any]]) -> None:
        for _ in range(3):
            result = await self._run(self.events.insert(as_json(docs), conflict="error"))
            if not result.get("errors"):
                self._deliver(sorted(docs, key=lambda d: d["id"]))
                return
            # Some seqs were taken: voided by a sweeper because this write came late. Events
            # whose seq now holds a void get new seqs; the others are already there.
            real = [d for d in docs if not d.get("void")]
            stored = {d["id"]: d for d in await self._run(self.events.get_all(*[d["id"] for d in real]))} if real else {}
            redo = [d for d in real if stored.get(d["id"], {}).get("void")]
            self._wake.set()
            if not redo:
                return
            first = await self._seqs.reserve(len(redo))
            docs = [{**doc, "id": first + i} for i, doc in enumerate(redo)]
        log.warning("gave up re-sequencing %d late event(s)", len(docs))

    def _deliver(self, docs: list[dict[str, Any]]) -> None:
        """Publish the documents (sorted by seq) that continue the cursor; wake the reader for the rest."""
        out = []
        consumed = True
        for doc in docs:
            seq = doc["id"]
            if seq <= self._cursor:
                continue
            if seq != self._cursor + 1:
                consumed = False
                break
            self._cursor = seq
            if not doc.get("void"):
                out.append(to_event(doc))
        self._high = max(self._high, self._cursor)
        if out:
            self._publish(out)
        if not consumed:
            self._wake.set()

    # ------------------------------------------------------------------ events: reading

    async def _contiguous(self, after: int, limit: int, ids_only: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """The events right after ``after`` up to the first missing seq, at most ``limit``.

        Returns the base actually used (raised to the prune watermark when the events before
        it were pruned) and the documents, voids included.
        """
        query = self.events.between(after, r.maxval, left_bound="open").order_by(index="id").limit(limit)
        if ids_only:
            query = query.pluck("id")
        docs = await self._run(query)
        if docs and docs[0]["id"] != after + 1:
            self._pruned = await self._meta_value("pruned")
            if self._pruned > after:
                after = self._pruned
                docs = [d for d in docs if d["id"] > after]
        out = []
        expected = after + 1
        for doc in docs:
            if doc["id"] != expected:
                break
            out.append(doc)
            expected += 1
        return after, out

    async def _watermark(self) -> int:
        """The highest seq such that every seq up to it exists (the readable end of the log)."""
        high = max(self._high, self._cursor)
        while True:
            base, docs = await self._contiguous(high, READ_CHUNK, ids_only=True)
            high = int(docs[-1]["id"]) if docs else base
            if len(docs) < READ_CHUNK:
                break
        self._high = max(self._high, high)
        return self._high

    async def _catch_up_loop(self) -> None:
        # The loops also stop on _closed: wait_for may swallow a cancellation that arrives
        # just as the event it waits for is set.
        while not self._closed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.POLL_INTERVAL)
            self._wake.clear()
            try:
                while True:
                    base, docs = await self._contiguous(self._cursor, READ_CHUNK)
                    if base > self._cursor:
                        self._cursor = base
                    if not docs:
                        break
                    self._deliver(docs)
                    if len(docs) < READ_CHUNK:
                        break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                log.debug("catching up on events failed: %s", exc)
                await asyncio.sleep(0.2)

    async def _feed_loop(self) -> None:
        """Follow the events table's changefeed; every change wakes the reader."""
        delay = 0.1
        while not self._closed:
            conn = None
            try:
                conn = self._feed_conn = await self._connect()
                if self._closed:
                    break
                cursor = await self.events.changes().run(conn)
                delay = 0.1
                self._wake.set()          # whatever was written while not following
                async for _change in cursor:
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("event changefeed: %s; reconnecting in %.1f s", exc, delay)
            finally:
                self._feed_conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(noreply_wait=False), 2)
            if self._closed:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _sweep_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.SWEEP_INTERVAL)
            try:
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("event sweeper: %s", exc)

    async def _sweep(self) -> None:
        """Recover or void the seqs missing for longer than GRACE (see the module docstring)."""
        high = await self._watermark()
        reserved = await self._meta_value("seq")
        if reserved <= high:
            self._missing.clear()
            return
        upper = min(reserved, high + 10_000)
        present = set(await self._run(self.events.between(high, upper, left_bound="open", right_bound="closed")["id"]))
        now = time.monotonic()
        missing = [seq for seq in range(high + 1, upper + 1) if seq not in present]
        self._missing = {seq: self._missing.get(seq, now) for seq in missing}
        due = [seq for seq in missing if now - self._missing[seq] >= self.GRACE]
        if due:
            await self._fill(due)

    async def _fill(self, seqs: list[int]) -> None:
        """Insert the event each seq announced, rebuilt from its job, or a void."""
        by_seq = {int(job["_seq"]): job for job in await self._run(self.jobs.get_all(*seqs, index="event_seq"))}
        ts = models.now()
        docs = []
        for seq in seqs:
            job = by_seq.get(seq)
            if job is not None:
                docs.append(job_event(seq, job["_kind"], public(job), _f(job["updated_at"])))
            else:
                docs.append(void_doc(seq, ts))
        result = await self._run(self.events.insert(as_json(docs), conflict="error"))
        recovered = sum(1 for d in docs if not d.get("void"))
        log.info("closed %d gap(s) in the event log: %d event(s) recovered from their jobs, %d void (%d already there)",
                 len(seqs), recovered, len(seqs) - recovered, result.get("errors", 0))
        for seq in seqs:
            self._missing.pop(seq, None)
        self._wake.set()

    async def _events_since(self, seq: int, limit: int, queue: str | None, job_id: str | None) -> list[dict[str, Any]]:
        high = await self._watermark()
        if seq >= high:
            return []
        if job_id is not None:
            query = self.events.between([job_id, seq], [job_id, high], index="job_seq", left_bound="open",
                                        right_bound="closed").order_by(index="job_seq")
            if queue is not None:
                query = query.filter(lambda e: e["queue"].eq(queue))
        elif queue is not None:
            query = self.events.between([queue, seq], [queue, high], index="queue_seq", left_bound="open",
                                        right_bound="closed").order_by(index="queue_seq")
        else:
            query = self.events.between(seq, high, left_bound="open", right_bound="closed").order_by(index="id") \
                .filter(lambda e: e.has_fields("void").not_())
        return [to_event(doc) for doc in await self._run(query.limit(limit))]

    async def _last_seq(self) -> int:
        return await self._watermark()

    # ------------------------------------------------------------------ helpers

    async def _fetch(self, job_id: str) -> dict[str, Any] | None:
        return await self._run(self.jobs.get(job_id))

    async def _require(self, job_id: str) -> dict[str, Any]:
        job = await self._fetch(job_id)
        if job is None:
            raise JobNotFound(f"no job has id {job_id!r}", id=job_id)
        return job

    async def _fetch_many(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        unique = list(dict.fromkeys(ids))
        if not unique:
            return {}
        return {doc["id"]: doc for doc in await self._run(self.jobs.get_all(*unique))}

    async def _ensure_queues(self, names: Iterable[str], now: float) -> None:
        docs = [{"id": pk(n), "name": n, "paused": False, "strict": False, "created_at": now, "updated_at": now}
                for n in sorted(set(names))]
        if docs:
            await self._run(self.queues_table.insert(docs, conflict="error"))   # existing ones are left as they are

    async def _apply(self, plans: list[dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
        """Apply planned changes of jobs, each only if the job is still as the plan saw it.

        A plan is ``{"id", "status", "lease", "set", "attempt", "exec", "kind"}``: when the job
        still has that status and lease, the fields of ``set`` replace its own, the execution
        of ``attempt`` takes the fields of ``exec``, and its event gets the next seq. One
        ``replace`` for all plans, atomic per job. Returns the new documents of the jobs that
        changed; the seqs of the others are voided.
        """
        if not plans:
            return {}
        first = await self._seqs.reserve(len(plans))
        for offset, plan in enumerate(plans):
            plan["seq"] = first + offset
        keys = sorted({key for plan in plans for key in plan["set"]} | {"_seq", "_kind", "_execs"})
        spec = {p["id"]: {"status": p["status"], "lease": p["lease"], "attempt": p["attempt"],
                          "exec": p["exec"] or {}, "set": {**p["set"], "_seq": p["seq"], "_kind": p["kind"]}}
                for p in plans}
        # If this raises, whether the writes happened is unknown: the sweeper settles each
        # reserved seq from the job that names it, or voids it.
        result = await self._run(self.plans_query(list(spec), spec, keys))
        won = {doc["id"]: doc for doc in _changes(result) if doc.get("_seq") == spec[doc["id"]]["set"]["_seq"]}
        docs = []
        out: dict[str, dict[str, Any]] = {}
        for plan in plans:
            doc = won.get(plan["id"])
            if doc is None:
                docs.append(void_doc(plan["seq"], now))
            else:
                out[plan["id"]] = public(doc)
                docs.append(job_event(plan["seq"], plan["kind"], out[plan["id"]], now))
        await self._emit(docs)
        return out

    def plans_query(self, ids: list[str], spec: dict[str, Any], keys: list[str]) -> Any:
        """The conditional ``replace`` of :meth:`_apply` (a method so tests can build it).

        ``without`` then ``merge``: merge alone would merge nested objects (``error``,
        ``result``) into the old ones instead of replacing them.
        """
        def change(j: Any, plans: Any) -> Any:
            plan = plans[j["id"]]
            execs = j["_execs"].map(lambda e: r.branch(e["attempt"].eq(plan["attempt"]),
                                                        e.without(*EXEC_FIELDS).merge(plan["exec"]), e))
            return r.branch(j["status"].eq(plan["status"]).and_(j["lease"].eq(plan["lease"])),
                            j.without(*keys).merge(plan["set"]).merge({"_execs": execs}),
                            j)

        return as_json(spec).do(lambda plans: self.jobs.get_all(*ids).replace(lambda j: change(j, plans),
                                                                               return_changes=True))

    # ------------------------------------------------------------------ producers

    async def _enqueue(self, jobs: list[models.NewJob], now: float) -> list[tuple[dict[str, Any], bool]]:
        docs: list[dict[str, Any]] = []
        first_by_key: dict[str, dict[str, Any]] = {}
        order: list[tuple[str, Any]] = []       # ("doc", doc) or ("key", key) per input
        ids = models.new_ids(len(jobs))
        for spec, job_id in zip(jobs, ids):
            if spec.key is not None and spec.key in first_by_key:
                order.append(("key", spec.key))
                continue
            # Through JSON once: a value JSON cannot carry fails the whole batch before any write.
            doc = models.loads(models.dumps(new_job(spec, now, job_id)))
            docs.append(doc)
            if spec.key is not None:
                first_by_key[spec.key] = doc
                order.append(("key", spec.key))
            else:
                order.append(("doc", doc))
        existing = await self._claim_keys(first_by_key, now) if first_by_key else {}
        fresh = [doc for doc in docs if doc["key"] is None or doc["key"] not in existing]
        if fresh:
            first = await self._seqs.reserve(len(fresh))
            rows = [{**doc, "_seq": first + i, "_kind": models.EV_CREATED, "_execs": []} for i, doc in enumerate(fresh)]
            await self._ensure_queues((doc["queue"] for doc in fresh), now)
            result = await self._run(self.jobs.insert(as_json(rows), conflict="error"))
            if result.get("inserted") != len(rows):
                raise StoreUnavailable(f"RethinkDB stored {result.get('inserted')} of {len(rows)} jobs: "
                                       f"{result.get('first_error')}")
            await self._emit([job_event(row["_seq"], models.EV_CREATED, doc, now) for row, doc in zip(rows, fresh)])
        out: list[tuple[dict[str, Any], bool]] = []
        created: set[str] = set()
        for what, value in order:
            if what == "doc":
                out.append((value, True))
                continue
            if value in existing:
                out.append((existing[value], False))
                continue
            doc = first_by_key[value]
            out.append((doc, doc["id"] not in created))
            created.add(doc["id"])
        return out

    async def _claim_keys(self, wanted: dict[str, dict[str, Any]], now: float) -> dict[str, dict[str, Any]]:
        """Reserve idempotency keys for new jobs; the existing job of every key already taken.

        A key document (id = digest of the key) is inserted before its job, with
        ``conflict="error"``: of several dispatchers enqueueing one key at once, exactly one
        inserts it. The others wait for that job to appear. A key whose job never appears
        (its dispatcher died between the two inserts, or the job was pruned and the key left
        behind) is taken over, by a conditional update, once this process has waited GRACE
        seconds for it.
        """
        kid = {key: key_id(key) for key in wanted}
        existing: dict[str, dict[str, Any]] = {}
        pending = dict(wanted)
        deadline = time.monotonic() + 2 * self.GRACE + 5
        missing_since: dict[tuple[str, str], float] = {}
        while pending:
            if time.monotonic() > deadline:
                raise StoreUnavailable("an idempotency key is held by a job that has not appeared; retry")
            owners = {k["key"]: k for k in await self._run(self.keys.get_all(*[kid[key] for key in pending]))}
            free = [key for key in pending if key not in owners]
            if free:
                await self._run(self.keys.insert(
                    [{"id": kid[key], "key": key, "job_id": pending[key]["id"], "at": models.now()} for key in free],
                    conflict="error"))
                continue          # read the owners again: some inserts may have lost
            for key in [key for key in pending if owners[key]["job_id"] == pending[key]["id"]]:
                del pending[key]
            taken = {key: owners[key]["job_id"] for key in pending}
            if not taken:
                break
            found = await self._fetch_many(taken.values())
            for key, job_id in taken.items():
                if job_id in found:
                    existing[key] = public(found[job_id])
                    del pending[key]
                    continue
                # Stale only once this process has itself watched the job stay missing for
                # GRACE (another dispatcher's clock may be off) and the key is that old too.
                since = missing_since.setdefault((key, job_id), time.monotonic())
                if (time.monotonic() - since >= self.GRACE
                        and models.now() - float(owners[key]["at"]) >= self.GRACE):
                    await self._run(self.take_over_key_query(kid[key], job_id, pending[key]["id"]))
            if pending:
                await asyncio.sleep(0.05)
        return existing

    def take_over_key_query(self, key_doc_id: str, old_job: str, new_job_id: str) -> Any:
        """Point a key at a new job, only if it still names the job that never appeared."""
        return self.keys.get(key_doc_id).update(
            lambda k: r.branch(k["job_id"].eq(old_job), {"job_id": new_job_id, "at": models.now()}, {}))

    async def _get(self, job_id: str) -> dict[str, Any]:
        return public(await self._require(job_id))

    async def _list_jobs(self, queue: str | None, status: str | None, method: str | None,
                         limit: int, before: str | None, text: str | None = None) -> list[dict[str, Any]]:
        if before is not None and await self._fetch(before) is None:
            raise JobNotFound(f"before: no job has id {before!r}", id=before)
        return [public(doc) for doc in await self._run(self.list_jobs_query(queue, status, method, limit, before, text))]

    def list_jobs_query(self, queue: str | None, status: str | None, method: str | None, limit: int,
                        before: str | None, text: str | None) -> Any:
        """Newest first on the index that covers the most filters; the rest are filtered on the way."""
        top = before if before is not None else r.maxval
        low: Any
        high: Any
        if queue is not None and status is not None:
            index, low, high = "queue_status_id", [queue, status, r.minval], [queue, status, top]
        elif queue is not None:
            index, low, high = "queue_id", [queue, r.minval], [queue, top]
        elif status is not None:
            index, low, high = "status_id", [status, r.minval], [status, top]
        else:
            index, low, high = "id", r.minval, top
        query = self.jobs.between(low, high, index=index).order_by(index=r.desc(index))
        if method is not None:
            query = query.filter(lambda j: j["method"].eq(method))
        if text is not None:
            query = query.filter(lambda j: text_match(j, text))
        return query.limit(limit)

    async def _executions(self, job_id: str) -> list[dict[str, Any]]:
        job = await self._require(job_id)
        return [{"job_id": job_id, "attempt": int(e["attempt"]), "worker": e.get("worker"), "status": e["status"],
                 "started_at": _f(e.get("started_at")), "finished_at": _f(e.get("finished_at")), "error": e.get("error")}
                for e in sorted(job.get("_execs") or (), key=lambda e: e["attempt"])]

    async def _update_data(self, job_id: str, data: dict[str, Any], lease: str | None, now: float) -> dict[str, Any]:
        job = await self._require(job_id)
        if lease is not None and (job["lease"] != lease or job["status"] != models.STARTED):
            raise LeaseConflict(id=job_id)
        data = models.loads(models.dumps(data))
        seq = await self._seqs.reserve(1)
        result = await self._run(self.update_data_query(job_id, data, lease, now, seq))
        changed = _changes(result)
        if not changed or changed[0].get("_seq") != seq:
            await self._emit([void_doc(seq, now)])
            if await self._fetch(job_id) is None:
                raise JobNotFound(f"no job has id {job_id!r}", id=job_id)
            raise LeaseConflict(id=job_id)
        new = public(changed[0])
        await self._emit([job_event(seq, models.EV_UPDATED, new, now)])
        return new

    def update_data_query(self, job_id: str, data: dict[str, Any], lease: str | None, now: float, seq: int) -> Any:
        """Merge top-level keys of ``data`` in one atomic replace (fenced when ``lease`` is given)."""
        def change(j: Any, new_data: Any) -> Any:
            merged = (j["data"].without(*data) if data else j["data"]).merge(new_data)
            new = j.without("data", "updated_at", "_seq", "_kind").merge(
                {"data": merged, "updated_at": now, "_seq": seq, "_kind": models.EV_UPDATED})
            allowed = j["status"].eq(models.STARTED).and_(j["lease"].eq(lease)) if lease is not None else True
            return r.branch(j.eq(None), None, r.branch(allowed, new, j))

        return as_json(data).do(lambda new_data: self.jobs.get(job_id).replace(lambda j: change(j, new_data),
                                                                               return_changes=True))

    async def _abort(self, job_id: str, now: float) -> dict[str, Any]:
        for _ in range(5):
            job = await self._require(job_id)
            if job["status"] in models.TERMINAL:
                raise Conflict(f"job {job_id} already ended {job['status']}", id=job_id, status=job["status"])
            error = models.error_doc("JobAborted", "the job was aborted")
            started = job["status"] == models.STARTED
            won = await self._apply([{
                "id": job_id, "status": job["status"], "lease": job["lease"], "kind": models.EV_ABORTED,
                "set": {"status": models.ABORTED, "lease": None, "lease_expires": None, "error": error,
                        "finished_at": now, "updated_at": now},
                "attempt": job["attempts"] if started else -1,
                "exec": {"status": models.EXEC_ABORTED, "finished_at": now, "error": error} if started else None,
            }], now)
            if job_id in won:
                return won[job_id]
        raise Conflict(f"job {job_id} kept changing while being aborted; try again", id=job_id)

    async def _retry(self, job_id: str, now: float) -> dict[str, Any]:
        for _ in range(5):
            job = await self._require(job_id)
            if job["status"] not in (models.FAILED, models.ABORTED):
                raise Conflict(f"job {job_id} is {job['status']}; only failed or aborted jobs can be retried",
                               id=job_id, status=job["status"])
            won = await self._apply([{
                "id": job_id, "status": job["status"], "lease": job["lease"], "kind": models.EV_RETRYING,
                "set": {"status": models.PENDING, "run_at": now,
                        "max_attempts": max(int(job["max_attempts"]), int(job["attempts"]) + 1), "lease": None,
                        "lease_expires": None, "worker": None, "finished_at": None, "updated_at": now},
                "attempt": -1, "exec": None,
            }], now)
            if job_id in won:
                return won[job_id]
        raise Conflict(f"job {job_id} kept changing while being retried; try again", id=job_id)

    async def _ended_since(self, since: float) -> dict[str, int]:
        rows = await self._run(self.jobs.between(since, r.maxval, index="finished_at").group("status").count().ungroup())
        return {row["group"]: int(row["reduction"]) for row in rows}

    def ended_series_query(self, since: float, step: float) -> Any:
        return (self.jobs.between(since, r.maxval, index="finished_at")
                .group(lambda j: [j["finished_at"].sub(since).div(step).floor(), j["status"]]).count().ungroup())

    async def _ended_series(self, since: float, step: float) -> list[tuple[int, str, int]]:
        rows = await self._run(self.ended_series_query(since, step))
        return [(int(row["group"][0]), row["group"][1], int(row["reduction"])) for row in rows]

    # ------------------------------------------------------------------ workers

    async def _paused(self, queues: list[str]) -> set[str]:
        docs = await self._run(self.queues_table.get_all(*[pk(q) for q in queues]))
        return {doc["name"] for doc in docs if doc.get("paused")}

    def candidates_query(self, queue: str, now: float, limit: int) -> Any:
        """Due pending jobs of one queue in claim order, walked on the ``ready`` index."""
        return (self.jobs.between([queue, models.PENDING, r.minval], [queue, models.PENDING, r.maxval], index="ready")
                .order_by(index="ready").filter(lambda j: j["run_at"].le(now)).limit(limit)
                .pluck("id", "priority", "run_at"))

    def claim_query(self, seqs: dict[str, int], worker: str, lease: str, expires: float, now: float) -> Any:
        """Lease each job that is still pending and due; the others are left unchanged."""
        def change(j: Any, seq_of: Any) -> Any:
            attempt = j["attempts"].add(1)
            execution = {"attempt": attempt, "worker": worker, "lease": lease, "status": models.EXEC_STARTED,
                         "started_at": now, "finished_at": None, "error": None}
            return r.branch(
                j["status"].eq(models.PENDING).and_(j["run_at"].le(now)),
                {"status": models.STARTED, "attempts": attempt, "lease": lease, "lease_expires": expires,
                 "worker": worker, "started_at": now, "updated_at": now, "_seq": seq_of[j["id"]],
                 "_kind": models.EV_STARTED,
                 "_execs": j["_execs"].filter(lambda e: e["attempt"].ne(attempt)).append(execution)},
                {})

        return r.expr(seqs).do(lambda seq_of: self.jobs.get_all(*seqs).update(lambda j: change(j, seq_of),
                                                                             return_changes=True))

    async def _claim(self, queues: list[str], worker: str, limit: int, lease_seconds: float,
                     now: float, lease_prefix: str = "") -> list[dict[str, Any]]:
        paused = await self._paused(queues)
        active = [q for q in queues if q not in paused]
        if not active:
            return []
        lease = lease_prefix + secrets.token_hex(16)
        expires = now + lease_seconds
        claimed: list[dict[str, Any]] = []
        for _ in range(CLAIM_ROUNDS):
            need = limit - len(claimed)
            if need <= 0:
                break
            # Claims of this process pick their candidates one at a time and skip the ones the
            # others are leasing right now, so they never race each other for the same jobs.
            async with self._pick_lock:
                fetch = need + min(len(self._claiming), 1000)
                found = await asyncio.gather(*(self._run(self.candidates_query(q, now, fetch)) for q in active))
                pool = sorted((c for batch in found for c in batch if c["id"] not in self._claiming),
                              key=lambda c: (-c["priority"], c["run_at"], c["id"]))[:need]
                ids = [c["id"] for c in pool]
                self._claiming.update(ids)
            if not pool:
                break
            try:
                first = await self._seqs.reserve(len(ids))
                seqs = {job_id: first + i for i, job_id in enumerate(ids)}
                result = await self._run(self.claim_query(seqs, worker, lease, expires, now))
                won = {doc["id"]: doc for doc in _changes(result) if doc.get("lease") == lease}
                docs = []
                for job_id in ids:
                    doc = won.get(job_id)
                    if doc is None:
                        docs.append(void_doc(seqs[job_id], now))
                    else:
                        job = public(doc)
                        claimed.append(job)
                        docs.append(job_event(seqs[job_id], models.EV_STARTED, job, now))
                await self._emit(docs)
            finally:
                self._claiming.difference_update(ids)
            if len(won) == len(ids) and len(pool) < need:
                break     # everything there was is claimed
        claimed.sort(key=lambda j: (-j["priority"], j["run_at"], j["id"]))
        return claimed

    def heartbeat_query(self, leases: dict[str, list[str]], expires: float) -> Any:
        """Extend each lease that is still current; stale ones are left unchanged."""
        return r.expr(leases).do(lambda held: self.jobs.get_all(*leases).update(
            lambda j: r.branch(j["status"].eq(models.STARTED).and_(held[j["id"]].contains(j["lease"])),
                               {"lease_expires": expires}, {}),
            return_changes=True))

    async def _heartbeat(self, leases: list[tuple[str, str]], lease_seconds: float,
                         worker: str | None, now: float) -> list[dict[str, Any]]:
        expires = now + lease_seconds
        held: dict[str, list[str]] = {}
        for job_id, lease in leases:
            held.setdefault(job_id, []).append(lease)
        calls = []
        if held:
            calls.append(self._run(self.heartbeat_query(held, expires)))
        if worker is not None:
            calls.append(self._run(self.workers_table.get(pk(worker)).update({"last_seen": now})))
        results = await asyncio.gather(*calls)
        alive = {(doc["id"], doc["lease"]) for doc in _changes(results[0])} if held else set()
        return [{"id": job_id, "ok": True, "lease_expires": expires} if (job_id, lease) in alive
                else conflict(job_id, LeaseConflict.code, LeaseConflict.__doc__ or "")
                for job_id, lease in leases]

    def _outcome_plan(self, job: dict[str, Any], outcome: Outcome, now: float) -> dict[str, Any]:
        """The change an outcome makes to ``job`` as read (see :meth:`_apply`)."""
        if outcome.status == models.FINISHED:
            kind = models.EV_FINISHED
            fields: dict[str, Any] = {"status": models.FINISHED, "result": models.to_jsonable(outcome.result),
                                      "error": None, "lease": None, "lease_expires": None, "finished_at": now,
                                      "updated_at": now}
            execution = {"status": models.EXEC_FINISHED, "finished_at": now, "error": None}
        else:
            error = outcome.error or models.error_doc("Error", "the job failed")
            execution = {"status": models.EXEC_FAILED, "finished_at": now, "error": error}
            run_at = self.retry_at(job, outcome.retry, now)
            if run_at is None:
                kind = models.EV_FAILED
                fields = {"status": models.FAILED, "error": error, "lease": None, "lease_expires": None,
                          "finished_at": now, "updated_at": now}
            else:
                kind = models.EV_RETRYING
                fields = {"status": models.PENDING, "error": error, "run_at": run_at, "lease": None,
                          "lease_expires": None, "worker": None, "updated_at": now}
        return {"id": job["id"], "status": job["status"], "lease": job["lease"], "kind": kind,
                "set": models.loads(models.dumps(fields)), "attempt": job["attempts"], "exec": execution}

    async def _complete(self, outcomes: list[Outcome], now: float) -> list[dict[str, Any]]:
        # Every outcome of the batch is applied by one conditional replace (set-wise); an outcome
        # whose job changed between the read and the write is decided again from a fresh read.
        out: list[dict[str, Any] | None] = [None] * len(outcomes)
        jobs = await self._fetch_many(o.id for o in outcomes)
        todo = list(range(len(outcomes)))
        for _ in range(3):
            state = dict(jobs)
            plans: dict[int, dict[str, Any]] = {}
            for index in todo:
                outcome = outcomes[index]
                job = state.get(outcome.id)
                if job is None:
                    out[index] = conflict(outcome.id, JobNotFound.code, f"no job has id {outcome.id!r}")
                elif outcome.lease is None and job["status"] in models.TERMINAL:
                    out[index] = ok(public(job))        # TQueues DELETE /: already ended
                elif outcome.lease is not None and (job["status"] != models.STARTED or job["lease"] != outcome.lease):
                    out[index] = conflict(outcome.id, LeaseConflict.code, LeaseConflict.__doc__ or "")
                else:
                    plan = self._outcome_plan(job, outcome, now)
                    plans[index] = plan
                    state[outcome.id] = {**job, **plan["set"]}   # a later outcome of this job sees it done
            won = await self._apply(list(plans.values()), now)
            todo = []
            for index, plan in plans.items():
                if plan["id"] in won:
                    out[index] = ok(won[plan["id"]])
                else:
                    todo.append(index)
            if not todo:
                break
            fresh = await self._fetch_many(outcomes[i].id for i in todo)
            for i in todo:
                jobs.pop(outcomes[i].id, None)
            jobs.update(fresh)
        for index in todo:       # still losing races after every round
            out[index] = conflict(outcomes[index].id, LeaseConflict.code, LeaseConflict.__doc__ or "")
        return out  # type: ignore[return-value]

    def release_query(self, plans: dict[str, dict[str, Any]], now: float) -> Any:
        """Hand each job back unrun if its lease is still current: the attempt and its execution are undone."""
        def change(j: Any, plan_of: Any) -> Any:
            plan = plan_of[j["id"]]
            return r.branch(
                j["status"].eq(models.STARTED).and_(j["lease"].eq(plan["lease"])),
                {"status": models.PENDING, "attempts": j["attempts"].sub(1), "lease": None, "lease_expires": None,
                 "worker": None, "started_at": None, "updated_at": now, "_seq": plan["seq"],
                 "_kind": models.EV_RELEASED, "_execs": j["_execs"].filter(lambda e: e["attempt"].ne(j["attempts"]))},
                {})

        return r.expr(plans).do(lambda plan_of: self.jobs.get_all(*plans).update(lambda j: change(j, plan_of),
                                                                                return_changes=True))

    async def _release(self, leases: list[tuple[str, str]], now: float) -> list[dict[str, Any]]:
        jobs = await self._fetch_many(job_id for job_id, _ in leases)
        planned: dict[str, str] = {}
        for job_id, lease in leases:
            job = jobs.get(job_id)
            if job is not None and job_id not in planned and job["status"] == models.STARTED and job["lease"] == lease:
                planned[job_id] = lease
        won: dict[str, dict[str, Any]] = {}
        if planned:
            first = await self._seqs.reserve(len(planned))
            plans: dict[str, dict[str, Any]] = {job_id: {"lease": lease, "seq": first + i}
                                                for i, (job_id, lease) in enumerate(planned.items())}
            result = await self._run(self.release_query(plans, now))
            won = {doc["id"]: public(doc) for doc in _changes(result) if doc.get("_seq") == plans[doc["id"]]["seq"]}
            await self._emit([job_event(p["seq"], models.EV_RELEASED, won[job_id], now) if job_id in won
                              else void_doc(p["seq"], now) for job_id, p in plans.items()])
        out, done = [], set()
        for job_id, lease in leases:
            if job_id in won and job_id not in done and planned.get(job_id) == lease:
                done.add(job_id)
                out.append(ok(won[job_id]))
            else:
                out.append(conflict(job_id, LeaseConflict.code, LeaseConflict.__doc__ or ""))
        return out

    async def _requeue_expired(self, now: float) -> int:
        # Concurrent reapers of one process would only race each other; other dispatchers are
        # fenced by the conditional write (a job changes once, the loser's seq is voided).
        async with self._reap_lock:
            expired = await self._run(self.jobs.between(r.minval, now, index="lease_expires").limit(1000))
            plans = []
            for job in expired:
                error = models.error_doc("WorkerLost", f"the lease of worker {job['worker']} expired before the job ended")
                if job["attempts"] >= job["max_attempts"]:
                    kind = models.EV_FAILED
                    fields = {"status": models.FAILED, "error": error, "lease": None, "lease_expires": None,
                              "finished_at": now, "updated_at": now}
                else:
                    kind = models.EV_REQUEUED
                    fields = {"status": models.PENDING, "error": error, "run_at": now, "lease": None,
                              "lease_expires": None, "worker": None, "updated_at": now}
                plans.append({"id": job["id"], "status": models.STARTED, "lease": job["lease"], "kind": kind,
                              "set": fields, "attempt": job["attempts"],
                              "exec": {"status": models.EXEC_LOST, "finished_at": now, "error": error}})
            return len(await self._apply(plans, now))

    async def _next_run_at(self, queues: list[str]) -> float | None:
        found = await asyncio.gather(*(self._run(
            self.jobs.between([q, models.PENDING, r.minval], [q, models.PENDING, r.maxval], index="queue_run_at")
            .order_by(index="queue_run_at").limit(1)["run_at"]) for q in queues))
        values = [float(v) for batch in found for v in batch]
        return min(values) if values else None

    @staticmethod
    def _worker_doc(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc["info"], "registered_at": _f(doc["registered_at"]), "last_seen": _f(doc["last_seen"])}

    def register_worker_query(self, info: dict[str, Any], now: float) -> Any:
        """Insert the worker, or merge its top-level fields into the stored ones (a pending
        command it does not send again is kept) and mark it seen."""
        doc = {"id": pk(info["id"]), "info": info, "registered_at": now, "last_seen": now}
        keys = list(info)
        return self.workers_table.insert(
            as_json(doc), return_changes="always",
            conflict=lambda _id, old, new: old.without("info", "last_seen").merge(
                {"info": old["info"].without(*keys).merge(new["info"]), "last_seen": new["last_seen"]}))

    async def _register_worker(self, info: dict[str, Any], now: float) -> dict[str, Any]:
        info = models.loads(models.dumps(info))
        result = await self._run(self.register_worker_query(info, now))
        changed = _changes(result)
        stored = changed[0] if changed else await self._run(self.workers_table.get(pk(info["id"])))
        doc = self._worker_doc(stored)
        await self._emit([event_doc(await self._seqs.reserve(1), models.EV_WORKER, now, doc)])
        return doc

    async def _workers(self) -> list[dict[str, Any]]:
        return [self._worker_doc(d) for d in await self._run(self.workers_table.order_by(r.desc("last_seen")))]

    async def _worker(self, worker_id: str) -> dict[str, Any]:
        doc = await self._run(self.workers_table.get(pk(worker_id)))
        if doc is None:
            raise worker_not_found(worker_id)
        return self._worker_doc(doc)

    async def _command_worker(self, worker_id: str, command: str | None, now: float) -> dict[str, Any]:
        if await self._run(self.workers_table.get(pk(worker_id))) is None:
            raise worker_not_found(worker_id)
        result = await self._run(self.workers_table.get(pk(worker_id)).update({"info": {"command": command}},
                                                                             return_changes="always"))
        changed = _changes(result)
        if not changed:
            raise worker_not_found(worker_id)
        doc = self._worker_doc(changed[0])
        await self._emit([event_doc(await self._seqs.reserve(1), models.EV_WORKER, now, doc)])
        return doc

    # ------------------------------------------------------------------ queues

    def queue_counts_query(self, names: list[str]) -> Any:
        """Per queue: the number of jobs in each status (in the order of STATUSES, counted on the
        index) and when its oldest pending job was created (job ids grow with creation time, so
        it is the first pending one on the same index)."""
        def per_queue(q: Any) -> Any:
            counts = r.expr(list(models.STATUSES)).map(
                lambda s: self.jobs.between([q, s, r.minval], [q, s, r.maxval], index="queue_status_id").count())
            oldest = (self.jobs.between([q, models.PENDING, r.minval], [q, models.PENDING, r.maxval],
                                        index="queue_status_id")
                      .order_by(index="queue_status_id").limit(1)["created_at"].coerce_to("array"))
            return {"counts": counts, "oldest": oldest}

        return r.expr(names).map(per_queue)

    async def _queues(self) -> list[dict[str, Any]]:
        docs = sorted(await self._run(self.queues_table), key=lambda d: d["name"])
        if not docs:
            return []
        per_queue = await self._run(self.queue_counts_query([d["name"] for d in docs]))
        return [{"name": d["name"], "paused": bool(d.get("paused")), "strict": bool(d.get("strict")),
                 "counts": {s: int(n) for s, n in zip(models.STATUSES, found["counts"])},
                 "oldest_pending": _f(found["oldest"][0]) if found["oldest"] else None}
                for d, found in zip(docs, per_queue)]

    def set_queue_query(self, name: str, settings: dict[str, bool], now: float) -> Any:
        patch = {**settings, "updated_at": now} if settings else {}
        doc = {"id": pk(name), "name": name, "paused": False, "strict": False, "created_at": now, "updated_at": now,
               **settings}
        return self.queues_table.insert(doc, return_changes="always",
                                        conflict=lambda _id, old, new: old.merge(patch))

    async def _set_queue(self, name: str, settings: dict[str, bool], now: float) -> dict[str, Any]:
        result = await self._run(self.set_queue_query(name, settings, now))
        changed = _changes(result)
        stored = changed[0] if changed else await self._run(self.queues_table.get(pk(name)))
        doc = {"name": name, "paused": bool(stored.get("paused")), "strict": bool(stored.get("strict"))}
        await self._emit([event_doc(await self._seqs.reserve(1), models.EV_QUEUE, now, doc, queue=name)])
        return doc

    # ------------------------------------------------------------------ tokens

    @staticmethod
    def _token_doc(doc: dict[str, Any], with_hash: bool) -> dict[str, Any]:
        out = {key: doc.get(key) for key in TOKEN_FIELDS if with_hash or key != "hash"}
        out["id"] = doc.get("token_id", doc["id"])
        for key in ("created_at", "expires_at", "revoked_at"):
            out[key] = _f(out[key])
        return out

    async def _create_token(self, record: dict[str, Any]) -> dict[str, Any]:
        doc = {**{k: record.get(k) for k in TOKEN_FIELDS}, "id": pk(record["id"]), "token_id": record["id"]}
        result = await self._run(self.tokens_table.insert(as_json(doc), conflict="error"))
        if result.get("errors"):
            raise Conflict(f"a token with id {record['id']!r} already exists", id=record["id"])
        return {k: v for k, v in record.items() if k != "hash"}

    async def _token(self, token_id: str) -> dict[str, Any]:
        doc = await self._run(self.tokens_table.get(pk(token_id)))
        if doc is None:
            raise token_not_found(token_id)
        return self._token_doc(doc, with_hash=True)

    async def _revoke_token(self, token_id: str, now: float) -> dict[str, Any]:
        result = await self._run(self.tokens_table.get(pk(token_id)).update(
            lambda t: {"revoked_at": r.branch(t["revoked_at"].eq(None), now, t["revoked_at"])},
            return_changes="always"))
        changed = _changes(result)
        if not changed:
            raise token_not_found(token_id)
        return self._token_doc(changed[0], with_hash=False)

    async def _tokens(self) -> list[dict[str, Any]]:
        docs = await self._run(self.tokens_table.order_by(r.desc("created_at")))
        return [self._token_doc(d, with_hash=False) for d in docs]

    # ------------------------------------------------------------------ logs

    async def _append_logs(self, lines: list[dict[str, Any]]) -> int:
        found = await self._fetch_many(line["job_id"] for line in lines)
        kept = [line for line in lines if line["job_id"] in found]
        if not kept:
            return 0
        first = await self._bump("log", len(kept)) - len(kept) + 1
        rows = [{"id": first + i, "job_id": line["job_id"], "attempt": line["attempt"], "stream": line["stream"],
                 "line": line["line"], "ts": line["ts"]} for i, line in enumerate(kept)]
        await self._run(self.logs_table.insert(as_json(rows), conflict="error"))
        by_job: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_job.setdefault(row["job_id"], []).append({k: row[k] for k in ("id", "attempt", "stream", "line", "ts")})
        first_seq = await self._seqs.reserve(len(by_job))
        now = models.now()
        await self._emit([event_doc(first_seq + i, models.EV_LOG, now, {"id": job_id, "lines": stored},
                                    found[job_id]["queue"], job_id)
                          for i, (job_id, stored) in enumerate(by_job.items())])
        return len(rows)

    async def _logs(self, job_id: str, since: int, limit: int) -> list[dict[str, Any]]:
        await self._require(job_id)
        rows = await self._run(self.logs_table.between([job_id, since], [job_id, r.maxval], index="job_line",
                                                       left_bound="open").order_by(index="job_line").limit(limit))
        return [{"id": int(row["id"]), "attempt": row["attempt"], "stream": row["stream"], "line": row["line"],
                 "ts": _f(row["ts"])} for row in rows]

    # ------------------------------------------------------------------ prune

    async def _prune(self, cutoff: float) -> int:
        deleted = 0
        while True:
            # Ended jobs by finished_at; their logs and keys go first, so a prune that stops half
            # way leaves jobs to prune again, never orphans nobody would find.
            ended = await self._run(self.jobs.between(r.minval, cutoff, index="finished_at")
                                    .filter(lambda j: r.expr(sorted(models.TERMINAL)).contains(j["status"]))
                                    .limit(READ_CHUNK).pluck("id", "key"))
            if not ended:
                break
            ids = [doc["id"] for doc in ended]
            await self._run(r.expr(ids).for_each(lambda job_id: self.logs_table.between(
                [job_id, r.minval], [job_id, r.maxval], index="job_line").delete()))
            keyed = [key_id(doc["key"]) for doc in ended if doc.get("key")]
            if keyed:
                await self._run(self.keys.get_all(*keyed).filter(lambda k: r.expr(ids).contains(k["job_id"])).delete())
            result = await self._run(self.jobs.get_all(*ids).filter(
                lambda j: r.expr(sorted(models.TERMINAL)).contains(j["status"]).and_(j["finished_at"].lt(cutoff)))
                .delete())
            deleted += int(result.get("deleted", 0))
            if len(ended) < READ_CHUNK:
                break
        await self._prune_events(cutoff)
        return deleted

    async def _prune_events(self, cutoff: float) -> None:
        """Delete the events older than ``cutoff`` that form a prefix of the log, keeping the
        newest; the prune watermark is raised first, so readers skip the range at once."""
        high = await self._watermark()
        pruned = await self._meta_value("pruned")
        young = await self._run(self.events.between(pruned, high, left_bound="open", right_bound="closed")
                                .order_by(index="id").filter(lambda e: e["ts"].ge(cutoff)).limit(1)["id"])
        bound = min(high - 1, int(young[0]) - 1 if young else high - 1)
        if bound <= pruned:
            return
        await self._run(self.meta.get("pruned").update(
            lambda m: {"value": r.branch(m["value"].lt(bound), bound, m["value"])}))
        self._pruned = max(self._pruned, bound)
        await self._run(self.events.between(r.minval, bound, right_bound="closed").delete())


async def drop_database(url: str) -> None:
    """Drop the database named by ``url`` (for tests and tear-downs); missing is fine."""
    if r is None:
        raise ConfigurationError("the RethinkDB store needs the rethinkdb driver: pip install 'tqueues[rethinkdb]'")
    settings = parse_url(url)
    conn = await r.connect(host=settings["host"], port=settings["port"], user=settings["user"],
                           password=settings["password"], timeout=CONNECT_TIMEOUT)
    try:
        await r.db_list().contains(settings["db"]).do(
            lambda exists: r.branch(exists, r.db_drop(settings["db"]), {"dbs_dropped": 0})).run(conn)
    finally:
        await conn.close(noreply_wait=False)


__all__ = ["RethinkDBStore", "drop_database", "index_functions", "parse_url"]
