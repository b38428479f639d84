"""Plain types of tqueues: statuses, job specs, validation and (de)serialisation.

This module is a leaf: it imports nothing of tqueues except :mod:`tqueues.errors`, so every
other layer (store, dispatcher, worker, client) can share it without cycles.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import threading
import time
from collections.abc import Mapping   # isinstance with typing.Mapping costs several exceptions per call
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from .errors import InvalidRequest

# --------------------------------------------------------------------------- statuses

PENDING = "pending"
STARTED = "started"
FINISHED = "finished"
FAILED = "failed"
ABORTED = "aborted"

STATUSES = (PENDING, STARTED, FINISHED, FAILED, ABORTED)
TERMINAL = frozenset({FINISHED, FAILED, ABORTED})

# Outcomes of one execution (attempt).
EXEC_STARTED = "started"
EXEC_FINISHED = "finished"
EXEC_FAILED = "failed"
EXEC_LOST = "lost"          # lease expired: the worker died or was cut off
EXEC_ABORTED = "aborted"
EXEC_RELEASED = "released"  # handed back by a worker that shut down before running it

# Event kinds.
EV_CREATED = "job.created"
EV_STARTED = "job.started"
EV_FINISHED = "job.finished"
EV_FAILED = "job.failed"
EV_RETRYING = "job.retrying"
EV_REQUEUED = "job.requeued"
EV_RELEASED = "job.released"
EV_ABORTED = "job.aborted"
EV_UPDATED = "job.updated"
EV_LOG = "job.log"
EV_QUEUE = "queue.updated"
EV_WORKER = "worker.updated"

JOB_KINDS = frozenset({EV_CREATED, EV_STARTED, EV_FINISHED, EV_FAILED, EV_RETRYING, EV_REQUEUED, EV_RELEASED,
                       EV_ABORTED, EV_UPDATED})

# Event kinds after which a job may be claimed.
READY_KINDS = frozenset({EV_CREATED, EV_RETRYING, EV_REQUEUED, EV_RELEASED})

# --------------------------------------------------------------------------- limits

QUEUE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
METHOD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)?$")
MAX_KEY_LEN = 256
MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS = 1000
MAX_BATCH = 10_000
MAX_CLAIM = 1000            # the most jobs one claim may lease
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = 1.0
MAX_BACKOFF = 3600.0

JOB_FIELDS = frozenset({
    "queue", "method", "args", "kwargs", "priority", "run_at", "delay", "max_attempts",
    "timeout", "key", "backoff", "data", "secrets",
})
_BASIC_FIELDS = frozenset({"queue", "method", "args", "kwargs"})
REDACTED = "***"


def now() -> float:
    """Wall-clock time in seconds since the epoch; every stored timestamp uses it."""
    return time.time()


_last_ms = 0
_counter = 0
_id_lock = threading.Lock()     # ids are made on the loop and on the store's writer thread
_random = b""                   # unpredictable bytes, drawn from the OS a few thousand at a time
_random_at = 0
RANDOM_CHUNK = 4096


def _forget_random() -> None:   # a forked child must not reuse its parent's bytes
    global _random, _random_at
    _random, _random_at = b"", 0


os.register_at_fork(after_in_child=_forget_random)


def new_id() -> str:
    """A new job id: 32 hex digits, time-ordered (milliseconds, a counter, then 64 random bits).

    Ids made later sort later, so the indexes keyed by job id (executions, events, the id
    itself) grow at their end instead of being written at random pages.
    """
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` new job ids (see new_id), in the order they were made: one clock reading
    and one draw of random bytes for a whole batch."""
    global _last_ms, _counter, _random, _random_at
    with _id_lock:
        ms = time.time_ns() // 1_000_000
        if ms != _last_ms:
            _last_ms, _counter = ms, -1
        first = _counter + 1
        # Past 65,536 ids in one millisecond the counter wraps (the random part keeps them unique).
        _counter = (_counter + count) & 0xFFFF
        need = 8 * count
        if _random_at + need > len(_random):
            _random, _random_at = os.urandom(max(RANDOM_CHUNK, need)), 0
        tail = _random[_random_at:_random_at + need].hex()
        _random_at += need
    prefix = f"{ms:012x}"
    return [f"{prefix}{(first + i) & 0xFFFF:04x}{tail[16 * i:16 * i + 16]}" for i in range(count)]


# --------------------------------------------------------------------------- JSON

def dumps(obj: Any) -> bytes:
    """Serialise to JSON bytes (orjson; non-string dict keys and numpy-free)."""
    try:
        # Documents almost never have a non-string key, and the option costs a third more.
        return orjson.dumps(obj)
    except TypeError:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def dumps_str(obj: Any) -> str:
    return dumps(obj).decode()


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def json_or_none(body: bytes) -> Any:
    """An HTTP answer's JSON, or None when it has no body or the body is not JSON."""
    try:
        return orjson.loads(body) if body else None
    except ValueError:
        return None


def to_jsonable(value: Any) -> Any:
    """``value`` if JSON can carry it, else its ``repr`` (results must never break a job)."""
    kind = type(value)
    # The usual results without a trial serialisation (orjson refuses integers beyond 64 bits
    # and strings with lone surrogates, so those are tried).
    if value is None or kind is bool or kind is float or kind is int and -2**63 <= value < 2**64 \
            or kind is str and value.isascii():
        return value
    try:
        dumps(value)
        return value
    except TypeError:
        return repr(value)


def json_column(value: Any) -> str:
    """The JSON text of a stored document's value (JSON already), the usual empty ones without
    a call to the serialiser (the same text it writes)."""
    if not value:
        if type(value) is list:
            return "[]"
        if type(value) is dict:
            return "{}"
    return dumps_str(value)


def json_text(value: Any) -> str:
    """The JSON text of ``value``, or of its ``repr`` when JSON cannot carry it: what
    ``dumps_str(to_jsonable(value))`` gives, serialising once."""
    return jsonable_text(value)[1]


def jsonable_text(value: Any) -> tuple[Any, str]:
    """``to_jsonable(value)`` and its JSON text, serialising once."""
    try:
        return value, dumps(value).decode()
    except TypeError:
        value = repr(value)
        return value, dumps(value).decode()


# --------------------------------------------------------------------------- validation

def _bad(field_name: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field_name}: {message}", field=field_name)


def check_queue(name: Any, field_name: str = "queue") -> str:
    if isinstance(name, str) and name in _VALID_QUEUES:   # a batch names the same queue 1,000 times
        return name
    if not isinstance(name, str) or not name:
        raise _bad(field_name, "a non-empty string is required")
    if not QUEUE_RE.match(name):
        raise _bad(field_name, "must be 1-128 characters of letters, digits and _ . : - (starting with a letter or digit)")
    _remember(_VALID_QUEUES, name)
    return name


def check_method(name: Any) -> str:
    if isinstance(name, str) and name in _VALID_METHODS:
        return name
    if not isinstance(name, str) or not name:
        raise _bad("method", "a non-empty string is required")
    if len(name) > 512 or not METHOD_RE.match(name):
        raise _bad("method", "must name a function as 'package.module:function'")
    _remember(_VALID_METHODS, name)
    return name


_VALID_QUEUES: set[str] = set()    # names that passed their check (bounded: see _remember)
_VALID_METHODS: set[str] = set()


def _remember(names: set[str], name: str) -> None:
    if len(names) >= 10_000:
        names.clear()
    names.add(name)


def _number(value: Any, field_name: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(field_name, "a finite number is required")
    if minimum is not None and value < minimum:
        raise _bad(field_name, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise _bad(field_name, f"must be <= {maximum}")
    return float(value)


def _integer(value: Any, field_name: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field_name, "an integer is required")
    if not minimum <= value <= maximum:
        raise _bad(field_name, f"must be between {minimum} and {maximum}")
    return value


def parse_time(value: Any, field_name: str) -> float:
    """Seconds since the epoch from a number or an ISO 8601 string."""
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _bad(field_name, "an epoch number or ISO 8601 time is required") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        return parsed.timestamp()
    return _number(value, field_name, minimum=0)


@dataclass(slots=True)
class NewJob:
    """A validated request to enqueue one job."""

    queue: str
    method: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    run_at: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    key: str | None = None
    backoff: float = DEFAULT_BACKOFF
    data: dict[str, Any] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, obj: Any, *, default_queue: str | None = None) -> "NewJob":
        """Validate one job object as sent by a producer; raise InvalidRequest naming the field."""
        if type(obj) is not dict:   # what JSON decodes to; any other mapping is read as one
            if not isinstance(obj, Mapping):
                raise InvalidRequest("a job must be a JSON object")
            obj = dict(obj)
        if not JOB_FIELDS.issuperset(obj):
            unknown = sorted(map(str, set(obj) - JOB_FIELDS))
            raise InvalidRequest(f"unknown job field(s): {', '.join(unknown)}", field=unknown[0])
        get = obj.get
        queue = get("queue", default_queue)
        if queue is None:
            raise _bad("queue", "is required")
        queue = check_queue(queue)
        method = check_method(get("method"))
        args = get("args")
        if args is None and "args" not in obj:
            args = []
        elif type(args) is not list:
            if not isinstance(args, (list, tuple)):
                raise _bad("args", "a JSON array is required")
            args = list(args)
        kwargs = get("kwargs")
        if kwargs is None:
            kwargs = {}
        elif type(kwargs) is not dict or not all(type(k) is str for k in kwargs):
            if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise _bad("kwargs", "a JSON object is required")
        if kwargs and "tq_parent_job" in kwargs:
            raise _bad("kwargs", "'tq_parent_job' is reserved for the worker")
        job = cls(queue, method, args, kwargs)
        if _BASIC_FIELDS.issuperset(obj):
            return job   # the usual job: nothing else to check
        if get("priority") is not None:
            job.priority = _integer(obj["priority"], "priority", -MAX_PRIORITY, MAX_PRIORITY)
        if get("run_at") is not None and get("delay") is not None:
            raise InvalidRequest("give run_at or delay, not both", field="delay")
        if get("run_at") is not None:
            job.run_at = parse_time(obj["run_at"], "run_at")
        elif get("delay") is not None:
            job.run_at = now() + _number(obj["delay"], "delay", minimum=0, maximum=10 * 365 * 86400)
        if get("max_attempts") is not None:
            job.max_attempts = _integer(obj["max_attempts"], "max_attempts", 1, MAX_ATTEMPTS)
        if get("timeout") is not None:
            job.timeout = _number(obj["timeout"], "timeout", minimum=0.001, maximum=30 * 86400)
        if get("backoff") is not None:
            job.backoff = _number(obj["backoff"], "backoff", minimum=0, maximum=MAX_BACKOFF)
        key = get("key")
        if key is not None:
            if not isinstance(key, str) or not key or len(key) > MAX_KEY_LEN:
                raise _bad("key", f"a string of 1-{MAX_KEY_LEN} characters is required")
            job.key = key
        secrets = get("secrets")
        if secrets is not None:
            if not isinstance(secrets, list) or not all(isinstance(k, str) for k in secrets) or len(secrets) > 100:
                raise _bad("secrets", "a list of keyword-argument names is required")
            job.secrets = sorted(set(secrets))
        data = get("data")
        if data is not None:
            if not isinstance(data, dict):
                raise _bad("data", "a JSON object is required")
            job.data = data
        return job


def parse_jobs(body: Any, *, default_queue: str | None = None) -> tuple[list[NewJob], bool]:
    """Validate a body holding one job, a list of jobs or ``{"jobs": [...]}``.

    Returns the jobs and whether the body was a batch (so the answer keeps the same shape).
    """
    batch = True
    if isinstance(body, Mapping) and "jobs" in body and "method" not in body:
        items = body["jobs"]
    elif isinstance(body, list):
        items = body
    else:
        items, batch = [body], False
    if not isinstance(items, list):
        raise _bad("jobs", "a JSON array is required")
    if not items:
        raise _bad("jobs", "at least one job is required")
    if len(items) > MAX_BATCH:
        raise _bad("jobs", f"at most {MAX_BATCH} jobs per request")
    jobs = []
    for index, item in enumerate(items):
        try:
            jobs.append(NewJob.from_json(item, default_queue=default_queue))
        except InvalidRequest as exc:
            if batch:
                exc.message = f"jobs[{index}]: {exc.message}"
                exc.args = (exc.message,)
            raise
    return jobs, batch


def public_job(doc: dict[str, Any]) -> dict[str, Any]:
    """A job document as shown to anyone but the worker holding it: no lease token, and the
    keyword arguments named in ``secrets`` replaced by ``***``."""
    secrets = doc.get("secrets")
    if doc.get("lease") is None and not secrets:
        return doc
    out = dict(doc)
    out["lease"] = None
    if secrets and isinstance(doc.get("kwargs"), dict):
        out["kwargs"] = {k: (REDACTED if k in secrets else v) for k, v in doc["kwargs"].items()}
    return out


def public_event(event: dict[str, Any]) -> dict[str, Any]:
    """An event with its job document made public (see :func:`public_job`)."""
    doc = event.get("new_val")
    if isinstance(doc, dict) and event.get("kind", "").startswith("job.") and "method" in doc:
        shown = public_job(doc)
        if shown is not doc:
            return {**event, "new_val": shown}
    return event


def backoff_delay(base: float, attempt: int, rand: float) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, scaled by 0.5-1.5, capped.

    ``rand`` is a uniform number in [0, 1) supplied by the caller (so tests can pin it).
    """
    if base <= 0:
        return 0.0
    raw = base * (2 ** min(max(attempt - 1, 0), 30))
    return min(raw * (0.5 + rand), MAX_BACKOFF)


def error_doc(exc_type: str, message: str, traceback: str | None = None) -> dict[str, Any]:
    """The stored shape of a job's error."""
    return {"type": exc_type, "message": message, "traceback": traceback}


def iter_chunks(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
