"""Malformed requests on every route of the dispatcher, over real HTTP.

Each case must answer its 4xx with ``{"error": {"code": str, "message": str}}`` (never a 5xx,
never a non-JSON page), change nothing (job, events, queues, workers), and leave the
dispatcher serving normally. The table names the route each case exercises; a test checks
that every route of ``views.ROUTES`` and ``compat.ROUTES`` has cases and a wrong-method case.
"""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from support.server import Server
from yarl import URL

from tqueues.dispatcher import channel, compat, views

METHOD = "support.jobs:echo"
UNKNOWN = "f" * 32
NOTHING: Any = object()
ANY_CODE = "*"
MAX_BODY = 2048
OVERSIZE = b'{"pad": "' + b"x" * (2 * MAX_BODY) + b'"}'
JSON_CT = "application/json"


@dataclass(eq=False)
class Case:
    route: str                       # "METHOD /template" exercised (coverage), or "405 /template"
    name: str
    method: str
    path: str                        # already percent-encoded; may hold {job} and {lease}
    status: int
    json: Any = NOTHING              # sent as JSON text (stdlib json: big ints survive)
    data: Any = None                 # bytes, str, form dict/list, or a callable making FormData
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    setup: str | None = None         # None, "pending", "started" or "finished": a job in queue q
    settings: dict[str, Any] = field(default_factory=dict)
    code: str | None = None          # expected error code; None: the status's usual one

    @property
    def id(self) -> str:
        return f"{self.route} | {self.name}"


CASES: list[Case] = []


def default_path(route: str) -> str:
    _, template = route.split(" ", 1)
    return template.replace("{id}", "{job}").replace("{name}", "q")


def case(route: str, name: str, status: int, *, path: str | None = None, method: str | None = None, **kw: Any) -> None:
    CASES.append(Case(route, name, method or route.split(" ", 1)[0], path or default_path(route), status, **kw))


def body_cases(route: str, *, path: str | None = None, setup: str | None = None, empty_ok: bool = False) -> None:
    """What every route reading a JSON body must refuse."""
    raw = dict(path=path, setup=setup, content_type=JSON_CT)
    case(route, "bad JSON", 400, data=b'{"queue": ', **raw)
    case(route, "JSON with trailing garbage", 400, data=b"{} {}", **raw)
    case(route, "NaN is not JSON", 400, data=b'{"wait": NaN, "extend": NaN}', **raw)
    case(route, "body not UTF-8", 400, data=b'{"\xff\xfe": 1}', **raw)
    case(route, "JSON nesting too deep", 400, data=b"[" * 5000 + b"]" * 5000, **raw)
    case(route, "JSON array", 400, json=[1, 2], path=path, setup=setup)
    case(route, "JSON string", 400, json="text", path=path, setup=setup)
    case(route, "JSON number", 400, json=5, path=path, setup=setup)
    case(route, "JSON null", 400, json=None, path=path, setup=setup)
    if not empty_ok:
        case(route, "empty body", 400, data=b"", path=path, setup=setup)
        case(route, "blank body", 400, data=b" \n\t", **raw)
    case(route, "oversize body", 413, data=OVERSIZE, settings={"max_body": MAX_BODY}, code=ANY_CODE, **raw)


def bad_names(route: str, path_of: Callable[[str], str]) -> None:
    for name, encoded in (("space", "bad%20queue"), ("leading dash", "-q"), ("too long", "q" * 129),
                          ("non-ASCII", "f%C3%BC"), ("semicolon", "a;b")):
        case(route, f"bad queue name: {name}", 400, path=path_of(encoded))


# ---------------------------------------------------------------------------- POST /api/v1/jobs

R = "POST /api/v1/jobs"
body_cases(R)
JOB = {"queue": "q", "method": METHOD}
for name, spec in {
    "missing method": {"queue": "q"},
    "missing queue": {"method": METHOD},
    "method not a string": {**JOB, "method": 5},
    "method not importable-looking": {**JOB, "method": "os system"},
    "method too long": {**JOB, "method": "a" * 600},
    "queue not a string": {**JOB, "queue": 5},
    "queue with a space": {**JOB, "queue": "bad queue"},
    "queue empty": {**JOB, "queue": ""},
    "queue starting with a dash": {**JOB, "queue": "-q"},
    "queue too long": {**JOB, "queue": "q" * 129},
    "queue not ASCII": {**JOB, "queue": "fü"},
    "args a string": {**JOB, "args": "x"},
    "args an object": {**JOB, "args": {}},
    "kwargs a list": {**JOB, "kwargs": [1]},
    "kwargs reserved name": {**JOB, "kwargs": {"tq_parent_job": 1}},
    "priority a string": {**JOB, "priority": "1"},
    "priority a float": {**JOB, "priority": 1.5},
    "priority a bool": {**JOB, "priority": True},
    "priority huge": {**JOB, "priority": 10**9},
    "priority past 64 bits": {**JOB, "priority": 2**64 - 1},
    "priority hugely negative": {**JOB, "priority": -(10**7)},
    "max_attempts zero": {**JOB, "max_attempts": 0},
    "max_attempts huge": {**JOB, "max_attempts": 10**6},
    "timeout zero": {**JOB, "timeout": 0},
    "timeout negative": {**JOB, "timeout": -1},
    "timeout huge": {**JOB, "timeout": 1e12},
    "delay negative": {**JOB, "delay": -1},
    "delay huge": {**JOB, "delay": 1e12},
    "delay a word": {**JOB, "delay": "soon"},
    "run_at a word": {**JOB, "run_at": "yesterday"},
    "run_at negative": {**JOB, "run_at": -5},
    "run_at and delay": {**JOB, "run_at": 1, "delay": 1},
    "backoff huge": {**JOB, "backoff": 1e9},
    "backoff a string": {**JOB, "backoff": "1"},
    "key empty": {**JOB, "key": ""},
    "key too long": {**JOB, "key": "k" * 300},
    "key not a string": {**JOB, "key": 5},
    "data a list": {**JOB, "data": []},
    "data a string": {**JOB, "data": "x"},
    "unknown field": {**JOB, "colour": "red"},
    "jobs not a list": {"jobs": "x"},
    "jobs empty": {"jobs": []},
    "empty list": [],
    "list of non-objects": [1, 2],
    "batch with one bad job": [JOB, {"queue": "q"}],
    "batch with one unknown field": {"jobs": [JOB, {**JOB, "x": 1}]},
    "too many jobs": [JOB] * 10_001,
}.items():
    case(R, name, 400, json=spec)

# ---------------------------------------------------------------------------- GET /api/v1/jobs

R = "GET /api/v1/jobs"
for name, query in {"bad queue": "queue=bad%20q", "unknown status": "status=done", "limit zero": "limit=0",
                    "limit negative": "limit=-1", "limit too big": "limit=1001", "limit not a number": "limit=abc",
                    "limit a float": "limit=1.5", "limit past 64 bits": "limit=99999999999999999999"}.items():
    case(R, name, 400, path=f"/api/v1/jobs?{query}")
case(R, "before an unknown job", 404, path=f"/api/v1/jobs?before={UNKNOWN}", code="job_not_found")

# ---------------------------------------------------------------------------- GET /api/v1/jobs/{id}

R = "GET /api/v1/jobs/{id}"
case(R, "unknown id", 404, path=f"/api/v1/jobs/{UNKNOWN}", code="job_not_found")
case(R, "id too long", 400, path="/api/v1/jobs/" + "x" * 65)
for name, wait in {"negative": "-1", "not a number": "abc", "too long": "1e12", "NaN": "nan", "infinite": "inf"}.items():
    case(R, f"wait {name}", 400, path=f"/api/v1/jobs/{{job}}?wait={wait}", setup="pending")

# ---------------------------------------------------------------------------- PATCH /api/v1/jobs/{id}

R = "PATCH /api/v1/jobs/{id}"
body_cases(R, setup="pending")
case(R, "missing data", 400, json={}, setup="pending")
case(R, "data a list", 400, json={"data": [1]}, setup="pending")
case(R, "data null", 400, json={"data": None}, setup="pending")
case(R, "lease not a string", 400, json={"data": {"a": 1}, "lease": 5}, setup="pending")
case(R, "stale lease", 409, json={"data": {"a": 1}, "lease": "nope"}, setup="started", code="stale_lease")
case(R, "unknown id", 404, path=f"/api/v1/jobs/{UNKNOWN}", json={"data": {"a": 1}}, code="job_not_found")
case(R, "id too long", 400, path="/api/v1/jobs/" + "x" * 65, json={"data": {"a": 1}})

# ---------------------------------------------------------------------------- abort, executions

R = "POST /api/v1/jobs/{id}/abort"
case(R, "unknown id", 404, path=f"/api/v1/jobs/{UNKNOWN}/abort", code="job_not_found")
case(R, "id too long", 400, path="/api/v1/jobs/" + "x" * 65 + "/abort")
case(R, "job already finished", 409, setup="finished", code="conflict")

R = "GET /api/v1/jobs/{id}/executions"
case(R, "unknown id", 404, path=f"/api/v1/jobs/{UNKNOWN}/executions", code="job_not_found")
case(R, "id too long", 400, path="/api/v1/jobs/" + "x" * 65 + "/executions")
case(R, "logs not a boolean", 400, path="/api/v1/jobs/{job}/executions?logs=maybe", setup="pending")

R = "GET /api/v1/jobs/{id}/logs"
case(R, "unknown id", 404, path=f"/api/v1/jobs/{UNKNOWN}/logs", code="job_not_found")
case(R, "id too long", 400, path="/api/v1/jobs/" + "x" * 65 + "/logs")
for name, query in {"since negative": "since=-1", "since not a number": "since=x", "limit zero": "limit=0",
                    "limit too big": "limit=10001"}.items():
    case(R, name, 400, path=f"/api/v1/jobs/{{job}}/logs?{query}", setup="pending")

R = "POST /api/v1/jobs/{id}/retry"
case(R, "unknown id", 404, path=f"/api/v1/jobs/{UNKNOWN}/retry", code="job_not_found")
case(R, "id too long", 400, path="/api/v1/jobs/" + "x" * 65 + "/retry")
case(R, "job still pending", 409, setup="pending", code="conflict")
case(R, "job finished", 409, setup="finished", code="conflict")

R = "POST /api/v1/logs"
body_cases(R)
for name, body in {
    "lines missing": {},
    "lines not a list": {"lines": {}},
    "line not an object": {"lines": [5]},
    "job_id missing": {"lines": [{"stream": "stdout", "line": "x"}]},
    "stream unknown": {"lines": [{"job_id": "{job}", "stream": "stdin", "line": "x"}]},
    "line not a string": {"lines": [{"job_id": "{job}", "stream": "stdout", "line": 5}]},
    "attempt a string": {"lines": [{"job_id": "{job}", "stream": "stdout", "line": "x", "attempt": "1"}]},
    "ts a string": {"lines": [{"job_id": "{job}", "stream": "stdout", "line": "x", "ts": "now"}]},
}.items():
    case(R, name, 400, json=body, setup="pending")

# ---------------------------------------------------------------------------- complete, fail, heartbeat, release

for verb in ("complete", "fail", "heartbeat", "release"):
    R = f"POST /api/v1/jobs/{{id}}/{verb}"
    body_cases(R, setup="started")
    case(R, "missing lease", 400, json={}, setup="started")
    case(R, "lease not a string", 400, json={"lease": 5}, setup="started")
    case(R, "lease null", 400, json={"lease": None}, setup="started")
    case(R, "stale lease", 409, json={"lease": "nope"}, setup="started", code="stale_lease")
    case(R, "lease of a pending job", 409, json={"lease": "nope"}, setup="pending", code="stale_lease")
    case(R, "unknown id", 404, path=f"/api/v1/jobs/{UNKNOWN}/{verb}", json={"lease": "x"}, code="job_not_found")
    case(R, "id too long", 400, path="/api/v1/jobs/" + "x" * 65 + f"/{verb}", json={"lease": "x"})
for verb in ("complete", "fail"):
    R = f"POST /api/v1/jobs/{{id}}/{verb}"
    case(R, "retry not a bool", 400, json={"lease": "{lease}", "retry": "yes"}, setup="started")
R = "POST /api/v1/jobs/{id}/fail"
for name, error in {"a number": 5, "a list": ["x"], "type not a string": {"type": 1}, "message not a string": {"message": []},
                    "traceback not a string": {"traceback": 5}}.items():
    case(R, f"error {name}", 400, json={"lease": "{lease}", "error": error}, setup="started")
R = "POST /api/v1/jobs/{id}/heartbeat"
for name, extend in {"zero": 0, "negative": -1, "huge": 1e12, "a string": "10", "a bool": True}.items():
    case(R, f"extend {name}", 400, json={"lease": "{lease}", "extend": extend}, setup="started")
case(R, "worker not a string", 400, json={"lease": "{lease}", "worker": 5}, setup="started")

# ---------------------------------------------------------------------------- POST /api/v1/claim

R = "POST /api/v1/claim"
body_cases(R, setup="pending")
for name, body in {
    "missing queue": {},
    "queue null": {"queue": None},
    "queue a number": {"queue": 5},
    "queue an object": {"queue": {"q": 1}},
    "queues empty": {"queues": []},
    "queues with a number": {"queues": ["q", 5]},
    "bad queue name": {"queue": "bad queue"},
    "too many queues": {"queues": [f"q{i}" for i in range(101)]},
    "limit zero": {"queue": "q", "limit": 0},
    "limit negative": {"queue": "q", "limit": -1},
    "limit too big": {"queue": "q", "limit": 1001},
    "limit a string": {"queue": "q", "limit": "1"},
    "limit a float": {"queue": "q", "limit": 1.5},
    "limit a bool": {"queue": "q", "limit": True},
    "wait negative": {"queue": "q", "wait": -1},
    "wait past max_wait": {"queue": "q", "wait": 1e12},
    "wait a string": {"queue": "q", "wait": "1"},
    "wait a bool": {"queue": "q", "wait": True},
    "lease huge": {"queue": "q", "lease": 1e12},
    "lease zero": {"queue": "q", "lease": 0},
    "lease negative": {"queue": "q", "lease": -1},
    "lease a string": {"queue": "q", "lease": "30"},
    "worker empty": {"queue": "q", "worker": ""},
    "worker a number": {"queue": "q", "worker": 5},
    "worker too long": {"queue": "q", "worker": "w" * 201},
}.items():
    case(R, name, 400, json=body, setup="pending")

# ---------------------------------------------------------------------------- batches

R = "POST /api/v1/complete"
body_cases(R, setup="started")
GOOD = {"id": "{job}", "lease": "{lease}", "status": "finished"}
for name, outcomes in {
    "outcomes a string": "x",
    "outcomes an object": {},
    "outcome a number": [5],
    "outcome missing id": [{"lease": "x", "status": "finished"}],
    "outcome id a number": [{"id": 1, "lease": "x", "status": "finished"}],
    "outcome missing lease": [{"id": "{job}", "status": "finished"}],
    "outcome missing status": [{"id": "{job}", "lease": "{lease}"}],
    "outcome status unknown": [{**GOOD, "status": "done"}],
    "outcome error a number": [{**GOOD, "status": "failed", "error": 5}],
    "outcome retry a string": [{**GOOD, "status": "failed", "retry": "no"}],
    "valid outcome then a bad one": [GOOD, {**GOOD, "status": "done"}],
    "too many outcomes": [GOOD] * 10_001,
}.items():
    case(R, name, 400, json={"outcomes": outcomes}, setup="started")
case(R, "missing outcomes", 400, json={}, setup="started")

R = "POST /api/v1/heartbeat"
body_cases(R, setup="started")
LEASE = {"id": "{job}", "lease": "{lease}"}
for name, body in {
    "leases a string": {"leases": "x"},
    "lease item a number": {"leases": [5]},
    "lease item missing lease": {"leases": [{"id": "{job}"}]},
    "lease item id a number": {"leases": [{"id": 1, "lease": "x"}]},
    "valid lease then a bad one": {"leases": [LEASE, {"id": "{job}"}], "extend": 600},
    "too many leases": {"leases": [LEASE] * 10_001},
    "extend zero": {"leases": [LEASE], "extend": 0},
    "extend negative": {"leases": [LEASE], "extend": -1},
    "extend huge": {"leases": [LEASE], "extend": 1e12},
    "extend a string": {"leases": [LEASE], "extend": "60"},
    "worker a number": {"leases": [LEASE], "worker": 5},
}.items():
    case(R, name, 400, json=body, setup="started")

R = "POST /api/v1/release"
body_cases(R, setup="started")
for name, body in {
    "missing leases": {},
    "leases a string": {"leases": "x"},
    "lease item a number": {"leases": [5]},
    "lease item missing lease": {"leases": [{"id": "{job}"}]},
    "valid lease then a bad one": {"leases": [LEASE, {"id": 5, "lease": "x"}]},
}.items():
    case(R, name, 400, json=body, setup="started")

# ---------------------------------------------------------------------------- queues

R = "PUT /api/v1/queues/{name}"
body_cases(R, empty_ok=True)
case(R, "paused a string", 400, json={"paused": "yes"})
case(R, "paused a number", 400, json={"paused": 1})
bad_names(R, lambda name: f"/api/v1/queues/{name}")
for verb in ("pause", "resume"):
    bad_names(f"POST /api/v1/queues/{{name}}/{verb}", lambda name, verb=verb: f"/api/v1/queues/{name}/{verb}")

# ---------------------------------------------------------------------------- workers

R = "POST /api/v1/workers"
body_cases(R)
for name, body in {
    "missing id": {"host": "h"},
    "id a number": {"id": 5},
    "id empty": {"id": ""},
    "id too long": {"id": "w" * 201},
    "pid a string": {"id": "w", "pid": "42"},
    "pid a float": {"id": "w", "pid": 4.2},
    "pid a bool": {"id": "w", "pid": True},
    "queues a string": {"id": "w", "queues": "q"},
    "queues with a number": {"id": "w", "queues": [1]},
    "functions with a null": {"id": "w", "functions": [None]},
    "concurrency a string": {"id": "w", "concurrency": "2"},
    "prefetch a string": {"id": "w", "prefetch": "auto"},
    "host a number": {"id": "w", "host": 5},
    "status a number": {"id": "w", "status": 5},
    "jobs_done a string": {"id": "w", "jobs_done": "1"},
}.items():
    case(R, name, 400, json=body)

R = "POST /api/v1/workers/{id}/stop"
case(R, "unknown worker", 404, path="/api/v1/workers/nobody/stop", code="not_found")
case(R, "id too long", 400, path="/api/v1/workers/" + "w" * 201 + "/stop")

R = "GET /api/v1/stats"
for name, query in {"window zero": "window=0", "window negative": "window=-5", "window huge": "window=1e9",
                    "window not a number": "window=soon"}.items():
    case(R, name, 400, path=f"/api/v1/stats?{query}")

R = "POST /api/v1/prune"
body_cases(R)
for name, body in {"older_than missing": {}, "older_than negative": {"older_than": -1},
                   "older_than a string": {"older_than": "1d"}, "older_than a bool": {"older_than": True}}.items():
    case(R, name, 400, json=body)

R = "POST /api/v1/tokens"
body_cases(R)
for name, body in {"scopes missing": {}, "scopes not a list": {"scopes": "admin"}, "unknown scope": {"scopes": ["root"]},
                   "empty scopes": {"scopes": []}, "a scope that is a list": {"scopes": [[]]},
                   "queues not a list": {"scopes": ["read"], "queues": "q"}, "a queue glob that is a list": {"scopes": ["read"], "queues": [[]]},
                   "queue glob not a string": {"scopes": ["read"], "queues": [5]},
                   "expires_in negative": {"scopes": ["read"], "expires_in": -1},
                   "name too long": {"scopes": ["read"], "name": "n" * 201}}.items():
    case(R, name, 400, json=body)
R = "DELETE /api/v1/tokens/{id}"
case(R, "unknown token", 404, path="/api/v1/tokens/nope", code="not_found")
case(R, "id too long", 400, path="/api/v1/tokens/" + "t" * 65)
R = "GET /api/v1/tokens"
case(R, "unknown query is fine but POST body junk is not", 405, method="PUT", path="/api/v1/tokens")

# ---------------------------------------------------------------------------- events

R = "GET /api/v1/events"
for name, query in {"since negative": "since=-1", "since not a number": "since=abc", "since a float": "since=1.5",
                    "since past 64 bits": f"since={2**63}", "limit zero": "limit=0", "limit too big": "limit=10001",
                    "wait negative": "wait=-1", "wait past max_wait": "wait=1e12", "bad queue": "queue=bad%20q"}.items():
    case(R, name, 400, path=f"/api/v1/events?{query}")
case(R, "websocket upgrade without a handshake", 400, headers={"Upgrade": "websocket"}, code=ANY_CODE)
case(R, "websocket upgrade with a bad since", 400, path="/api/v1/events?since=-1", headers={"Upgrade": "websocket"})

# ---------------------------------------------------------------------------- the TQueues root API

R = "GET /"
case(R, "no queue", 400, path="/")
case(R, "empty queue name", 400, path="/?queue=")
case(R, "bad queue name", 400, path="/?queue=bad%20q")
for name, wait in {"negative": "-1", "not a number": "abc", "past max_wait": "1e12"}.items():
    case(R, f"wait {name}", 400, path=f"/?queue=foo&wait={wait}")
case(R, "nothing to claim: 404 to retry", 404, path="/?queue=foo&wait=0", code="no_job_available")

R = "POST /"
body_cases(R, path="/")
for name, spec in {"missing method": {"queue": "foo"}, "missing queue": {"method": METHOD},
                   "args a string": {**JOB, "args": "x"}, "unknown field": {**JOB, "colour": "red"},
                   "priority huge": {**JOB, "priority": 10**12}, "bad queue": {**JOB, "queue": "bad q"}}.items():
    case(R, f"JSON {name}", 400, json=spec)
FORM = {"queue": "foo", "method": METHOD}
for name, form in {
    "missing method": {"queue": "foo"},
    "missing queue": {"method": METHOD},
    "kwargs not JSON": {**FORM, "kwargs": "{nope"},
    "kwargs a JSON list": {**FORM, "kwargs": "[1]"},
    "args broken JSON": {**FORM, "args": "[1,"},
    "priority a word": {**FORM, "priority": "high"},
    "priority huge": {**FORM, "priority": "1e9"},
    "delay negative": {**FORM, "delay": "-5"},
    "data not JSON": {**FORM, "data": "nope"},
    "unknown field": {**FORM, "colour": "red"},
    "bad queue": {**FORM, "queue": "bad q"},
}.items():
    case(R, f"form {name}", 400, data=form)
case(R, "form bad default queue", 400, path="/?queue=bad%20q", data={"method": METHOD})


def file_upload() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("queue", "foo")
    form.add_field("method", METHOD)
    form.add_field("args", b"[1]", filename="args.json", content_type=JSON_CT)
    return form


case(R, "form file upload", 400, data=file_upload)
MULTIPART = "multipart/form-data; boundary=xyz"
for name, content_type, raw in (
    ("multipart without a boundary", "multipart/form-data", b"garbage"),
    ("multipart body without its boundary", MULTIPART, b"garbage"),
    ("multipart field without a name", MULTIPART, b'--xyz\r\nContent-Disposition: form-data\r\n\r\nfoo\r\n--xyz--\r\n'),
    ("nested multipart", MULTIPART, b'--xyz\r\nContent-Disposition: form-data; name="queue"\r\n'
                                    b'Content-Type: multipart/mixed; boundary=abc\r\n\r\n--abc--\r\n\r\n--xyz--\r\n'),
    ("form bytes not UTF-8", "application/x-www-form-urlencoded", b"\xff\xfe=1&queue=foo"),
    ("form in an unknown charset", "application/x-www-form-urlencoded; charset=nonexistent", b"queue=foo&method=a:b"),
):
    case(R, name, 400, data=raw, content_type=content_type)
case(R, "oversize form", 413, data={**FORM, "args": "[" + "1," * MAX_BODY + "1]"}, settings={"max_body": MAX_BODY},
     code=ANY_CODE)

R = "PUT /"
case(R, "no queue", 400, path="/")
case(R, "empty queue name", 400, path="/?queue=")
case(R, "bad queue name", 400, path="/?queue=-q")

R = "PATCH /"
P = "/?queue=q&id={job}"
body_cases(R, path=P, setup="pending")
case(R, "no queue", 400, path="/?id={job}", json={"x": 1}, setup="pending")
case(R, "no id", 400, path="/?queue=q", json={"x": 1}, setup="pending")
case(R, "bad queue name", 400, path="/?queue=bad%20q&id={job}", json={"x": 1}, setup="pending")
case(R, "unknown id", 404, path=f"/?queue=q&id={UNKNOWN}", json={"x": 1}, code="job_not_found")
case(R, "job of another queue", 404, path="/?queue=other&id={job}", json={"x": 1}, setup="pending", code="job_not_found")
case(R, "no field to update", 400, path=P, json={}, setup="pending")
case(R, "only a lease", 400, path=P, json={"lease": "{lease}"}, setup="started")
case(R, "data not an object", 400, path=P, json={"data": 5}, setup="pending")
case(R, "lease not a string", 400, path=P, json={"x": 1, "lease": 5}, setup="pending")
case(R, "stale lease in the body", 409, path=P, json={"x": 1, "lease": "nope"}, setup="started", code="stale_lease")
case(R, "stale lease in the query", 409, path=P + "&lease=nope", json={"x": 1}, setup="started", code="stale_lease")

R = "DELETE /"
case(R, "no queue", 400, path="/?id={job}", setup="pending")
case(R, "no id", 400, path="/?queue=q", setup="pending")
case(R, "bad queue name", 400, path="/?queue=bad%20q&id={job}", setup="pending")
case(R, "unknown id", 404, path=f"/?queue=q&id={UNKNOWN}", code="job_not_found")
case(R, "job of another queue", 404, path="/?queue=other&id={job}", setup="pending", code="job_not_found")
case(R, "stale lease", 409, path="/?queue=q&id={job}&lease=nope", setup="started", code="stale_lease")

R = "GET /ws"
WS_HEADERS = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
case(R, "no queue", 400, path="/ws", headers=WS_HEADERS)
case(R, "bad queue name", 400, path="/ws?queue=bad%20q", headers=WS_HEADERS)
case(R, "not a websocket request", 400, path="/ws?queue=foo", code=ANY_CODE)

R = "GET /api/v1/enqueue"   # its messages' own malformed cases: test_enqueue_channel.py
case(R, "not a websocket request", 400)

# ---------------------------------------------------------------------------- wrong methods, unknown paths

ALL_ROUTES = [(m, p) for m, p, _ in (*views.ROUTES, *compat.ROUTES, *channel.ROUTES)]
for template in dict.fromkeys(p for _, p in ALL_ROUTES):
    allowed = {m for m, p in ALL_ROUTES if p == template}
    wrong = next(m for m in ("DELETE", "PUT", "PATCH", "POST", "GET", "OPTIONS") if m not in allowed)
    case(f"405 {template}", f"{wrong} is not allowed", 405, method=wrong, path=default_path(f"X {template}"),
         json={"queue": "q", "method": METHOD}, setup="pending")
case("GET /api/v1/nope", "unknown path", 404, path="/api/v1/nope", code=ANY_CODE)
case("POST /api/v2/jobs", "unknown API version", 404, path="/api/v2/jobs", json=JOB, code=ANY_CODE)

USUAL_CODES = {400: "invalid_request", 405: "method_not_allowed"}


# ---------------------------------------------------------------------------- running a case


async def prepare(server: Server, setup: str | None) -> dict[str, str]:
    """A job in queue q in the given state; {job} and {lease} for the case."""
    ctx = {"job": UNKNOWN, "lease": "no-such-lease"}
    if setup is None:
        return ctx
    for leftover in await server.store.list_jobs(queue="q", status="pending"):   # of earlier cases
        await server.store.abort(leftover["id"])
    status, job = await server.call("POST", "/api/v1/jobs", json={**JOB, "max_attempts": 1})
    assert status == 201, job
    ctx["job"] = job["id"]
    if setup in ("started", "finished"):
        status, claimed = await server.call("POST", "/api/v1/claim", json={"queue": "q", "worker": "holder", "lease": 60})
        assert [j["id"] for j in claimed["jobs"]] == [job["id"]], "prepare jobs to be claimed before pending ones"
        ctx["lease"] = claimed["jobs"][0]["lease"]
    if setup == "finished":
        status, _ = await server.call("POST", f"/api/v1/jobs/{ctx['job']}/complete", json={"lease": ctx["lease"]})
        assert status == 200
    return ctx


def fill(value: Any, ctx: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.replace("{job}", ctx["job"]).replace("{lease}", ctx["lease"])
    if isinstance(value, list):
        return [fill(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, ctx) for k, v in value.items()}
    return value


async def send(server: Server, c: Case, ctx: dict[str, str]) -> tuple[int, Any, str, Any]:
    """(status, headers, content type, decoded body or raw text) of the case's request."""
    headers = dict(c.headers)
    kwargs: dict[str, Any] = {}
    if c.json is not NOTHING:
        kwargs["data"] = json.dumps(fill(c.json, ctx)).encode()
        headers["Content-Type"] = JSON_CT
    elif c.data is not None:
        kwargs["data"] = c.data() if callable(c.data) else fill(c.data, ctx)
    if c.content_type:
        headers["Content-Type"] = c.content_type
    if isinstance(kwargs.get("data"), bytes) and len(kwargs["data"]) > 64 * 1024:
        kwargs["data"] = io.BytesIO(kwargs["data"])   # aiohttp warns about big raw bytes bodies
    url = URL(server.url.rstrip("/") + fill(c.path, ctx), encoded=True)
    async with server.session.request(c.method, url, headers=headers, **kwargs) as response:
        raw = await response.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        return response.status, response.headers, response.content_type, body


async def snapshot(server: Server, ctx: dict[str, str]) -> Any:
    store = server.store
    job = await store.get(ctx["job"]) if ctx["job"] != UNKNOWN else None
    return job, await store.last_seq(), await store.queues(), await store.workers(), len(await store.list_jobs(limit=1000))


def check_error(c: Case, status: int, headers: Any, content_type: str, body: Any) -> None:
    assert status == c.status, f"answered {status} {body!r:.300}"
    assert 400 <= status < 500
    assert content_type == JSON_CT, f"answered {content_type} {body!r:.300}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    expected = c.code or USUAL_CODES.get(c.status)
    if expected not in (None, ANY_CODE):
        assert error["code"] == expected, f"answered {body}"
    if status == 405:
        assert headers.get("Allow"), "a 405 names the allowed methods"


async def serves_normally(server: Server) -> None:
    status, health = await server.call("GET", "/api/v1/health")
    assert status == 200 and health["ok"] is True
    status, job = await server.call("POST", "/api/v1/jobs", json={"queue": "after", "method": METHOD, "args": [1]})
    assert status == 201, job
    status, claimed = await server.call("POST", "/api/v1/claim", json={"queue": "after"})
    assert status == 200 and [j["id"] for j in claimed["jobs"]] == [job["id"]]
    status, done = await server.call("POST", f"/api/v1/jobs/{job['id']}/complete",
                                     json={"lease": claimed["jobs"][0]["lease"], "result": 2})
    assert status == 200 and done["status"] == "finished"


# ---------------------------------------------------------------------------- tests

ROUTE_NAMES = {f"{m} {p}" for m, p in ALL_ROUTES}


def group_of(c: Case) -> str:
    """Cases run grouped (one dispatcher per group, a fresh job per case): per route, plus one
    group for the oversize bodies (another max_body), the wrong methods and the unknown paths."""
    if c.settings:
        return f"413 oversize bodies ({', '.join(f'{k}={v}' for k, v in c.settings.items())})"
    if c.route.startswith("405 "):
        return "405 wrong methods"
    return c.route if c.route in ROUTE_NAMES else "404 unknown paths"


GROUPS: dict[str, list[Case]] = {}
for _c in CASES:
    GROUPS.setdefault(group_of(_c), []).append(_c)


@pytest.mark.parametrize("group", list(GROUPS), ids=list(GROUPS))
async def test_given_malformed_requests_then_each_answers_a_json_4xx_and_changes_nothing(
        start_server: Callable[..., Awaitable[Server]], group: str) -> None:
    cases = GROUPS[group]
    server = await start_server(**cases[0].settings)
    failures = []
    for c in cases:
        # Given a job in the state the case needs
        ctx = await prepare(server, c.setup)
        before = await snapshot(server, ctx)
        # When the malformed request is sent
        status, headers, content_type, body = await send(server, c, ctx)
        try:
            # Then it answers its 4xx as a JSON error object
            check_error(c, status, headers, content_type, body)
            # And nothing changed: the job, the events, the queues, the workers
            assert await snapshot(server, ctx) == before, "the request changed the store"
            # And the dispatcher still answers
            assert (await server.call("GET", "/api/v1/health"))[0] == 200, "the dispatcher stopped answering"
        except AssertionError as exc:
            failures.append(f"{c.id}: {str(exc).splitlines()[0]}")
    assert failures == [], "\n".join(failures)
    # And after them all, the dispatcher still runs a job end to end
    await serves_normally(server)


NO_INPUT = {"GET /api/v1/queues", "GET /api/v1/workers", "GET /api/v1/openapi.json", "GET /api/v1/health",
            "GET /api/v1/me"}


def test_given_the_route_tables_then_every_route_has_malformed_cases_and_a_wrong_method_case() -> None:
    # Every route taking input (a body, a query, a path parameter) has its own cases
    covered = {c.route for c in CASES}
    missing = [f"{m} {p}" for m, p in ALL_ROUTES if f"{m} {p}" not in covered | NO_INPUT]
    assert missing == [], "routes without malformed-request cases"
    # And every path answers a wrong method with 405
    assert {p for _, p in ALL_ROUTES} <= {c.route.split(" ", 1)[1] for c in CASES if c.route.startswith("405 ")}
    # Routes that read a JSON body get the whole battery of body cases
    for method, path in ALL_ROUTES:
        names = {c.name for c in CASES if c.route == f"{method} {path}"}
        if method in ("POST", "PUT", "PATCH") and not path.endswith(("/abort", "/pause", "/resume", "/retry", "/stop")) and method != "DELETE" and path != "/":
            assert {"bad JSON", "JSON array", "oversize body"} <= names, f"{method} {path}"
        if (method, path) in {("POST", "/"), ("PATCH", "/")}:
            assert {"bad JSON", "JSON array", "oversize body"} <= names, f"{method} {path}"


async def test_given_every_malformed_request_at_once_then_all_are_4xx_and_the_dispatcher_still_works(
        start_server: Callable[..., Awaitable[Server]]) -> None:
    # Given one dispatcher with jobs in each state a case may need
    server = await start_server()
    contexts = {setup: await prepare(server, setup) for setup in (None, "finished", "started", "pending")}
    # When every case is sent to it concurrently (oversize cases at the default limit are no longer oversize)
    cases = [c for c in CASES if not c.settings]
    answers = await asyncio.gather(*(send(server, c, contexts[c.setup]) for c in cases))
    # Then each is a JSON 4xx error
    bad = [(c.id, status, body) for c, (status, _, content_type, body) in zip(cases, answers)
           if not (400 <= status < 500 and content_type == JSON_CT and isinstance(body, dict)
                   and isinstance(body.get("error", {}).get("code"), str))]
    assert bad == []
    # And the dispatcher still runs jobs end to end, and the started job can still be finished by its holder
    await serves_normally(server)
    started = contexts["started"]
    status, done = await server.call("POST", f"/api/v1/jobs/{started['job']}/complete", json={"lease": started["lease"]})
    assert status == 200 and done["status"] == "finished"
