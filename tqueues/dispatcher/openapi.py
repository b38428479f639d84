"""The OpenAPI 3.1 document served at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from .. import __version__

ERROR = {"$ref": "#/components/schemas/Error"}
JOB = {"$ref": "#/components/schemas/Job"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


# What any route may answer besides its own outcomes: authentication and scopes (with --auth),
# the rate limit, and the store being unreachable. Routes reading a body may also answer 413.
COMMON_ERRORS = {401: "No valid token (with --auth)", 403: "The token lacks a scope, queue or method",
                 429: "Rate limit reached; see Retry-After", 503: "The store is unreachable; see Retry-After"}
ERROR_TEXT = {400: "Malformed request", 404: "Unknown object", 409: "Conflict: nothing changed",
              413: "Request body too large", 422: "Method not registered on a strict queue"}


def _op(summary: str, *, body: dict[str, Any] | None = None, ok: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None, errors: tuple[int, ...] = (400,),
        created: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK", **_json(ok or {"type": "object"})}}
    if created:
        responses["201"] = {"description": "Created", **_json(ok or {"type": "object"})}
    statuses = {**{status: ERROR_TEXT.get(status, "Error") for status in errors}, **COMMON_ERRORS}
    if body is not None:
        statuses[400] = ERROR_TEXT[400]
        statuses[413] = ERROR_TEXT[413]
    for status in sorted(statuses):
        responses[str(status)] = {"description": statuses[status], **_json(ERROR)}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, kind: str = "string", description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": description}


ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
LEASE_BODY = {"type": "object", "required": ["lease"], "properties": {"lease": {"type": "string"}}}
LEASES = {"type": "array", "items": {"type": "object", "required": ["id", "lease"],
                                     "properties": {"id": {"type": "string"}, "lease": {"type": "string"}}}}
RESULTS = {"type": "object", "properties": {"results": {"type": "array", "items": {"type": "object"}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "tqueues dispatcher", "version": __version__,
             "description": "Jobs, claims with leases, queues, workers and events. With --auth, every route but"
                            " /api/v1/health needs 'Authorization: Bearer TOKEN' (401 without, 403 without the"
                            " right scope or queue, 429 past the rate limit)."},
    "paths": {
        "/api/v1/jobs": {
            "post": _op("Enqueue one job, a list of jobs, or {\"jobs\": [...]} (201 when any job was created;"
                        " 422 for a method no worker of a strict queue registered)", created=True, errors=(400, 422),
                        body={"oneOf": [{"$ref": "#/components/schemas/NewJob"},
                                        {"type": "array", "items": {"$ref": "#/components/schemas/NewJob"}},
                                        {"type": "object", "required": ["jobs"], "properties": {
                                            "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/NewJob"}},
                                            "documents": {"type": "boolean", "description":
                                                          "false: answer each job with id, status and created only"}}}]},
                        ok={"oneOf": [JOB, {"type": "object", "properties": {"jobs": {"type": "array", "items": {
                            "oneOf": [JOB, {"type": "object", "properties": {
                                "id": {"type": "string"}, "status": {"type": "string"},
                                "created": {"type": "boolean"}}}]}}}}]}),
            "get": _op("List jobs, newest first (404 when the before cursor names no job)", errors=(400, 404),
                       params=[_q("queue"), _q("status"), _q("method"), _q("limit", "integer"),
                               _q("before", description="job id cursor"),
                               _q("text", description="part of the id, method, key, arguments or error")]),
        },
        "/api/v1/jobs/{id}": {
            "get": _op("Get a job; with wait=SECONDS, wait for it to end", ok=JOB,
                       params=[ID, _q("wait", "number")], errors=(400, 404)),
            "patch": _op("Merge data into the job's data", params=[ID], ok=JOB, errors=(400, 404, 409),
                         body={"type": "object", "required": ["data"],
                               "properties": {"data": {"type": "object"}, "lease": {"type": "string"}}}),
        },
        "/api/v1/jobs/{id}/abort": {"post": _op("Abort a pending or started job", params=[ID], ok=JOB, errors=(400, 404, 409))},
        "/api/v1/jobs/{id}/executions": {"get": _op("Every attempt of a job (with logs=true, each with its captured lines)",
                                                    params=[ID, _q("logs", "boolean")], errors=(400, 404),
                                                    ok={"type": "array", "items": {"$ref": "#/components/schemas/Execution"}})},
        "/api/v1/jobs/{id}/logs": {"get": _op("Captured output lines of a job with id > since, oldest first",
                                              params=[ID, _q("since", "integer"), _q("limit", "integer")], errors=(400, 404),
                                              ok={"type": "array", "items": {"$ref": "#/components/schemas/LogLine"}})},
        "/api/v1/jobs/{id}/retry": {"post": _op("Put a failed or aborted job back to pending", params=[ID], ok=JOB,
                                                errors=(400, 404, 409))},
        "/api/v1/logs": {"post": _op("Store captured output lines (workers)", ok={"type": "object"}, body={
            "type": "object", "required": ["lines"], "properties": {"lines": {"type": "array", "items": {
                "type": "object", "required": ["job_id", "stream", "line"],
                "properties": {"job_id": {"type": "string"}, "attempt": {"type": "integer"},
                               "stream": {"enum": ["stdout", "stderr", "log"]}, "line": {"type": "string"},
                               "ts": {"type": "number"}}}}}})},
        "/api/v1/jobs/{id}/complete": {"post": _op("Finish an attempt (fenced by lease)", params=[ID], ok=JOB, errors=(400, 404, 409),
                                                   body={**LEASE_BODY, "properties": {"lease": {"type": "string"}, "result": {}}})},
        "/api/v1/jobs/{id}/fail": {"post": _op("Fail an attempt (fenced by lease); retried while attempts remain", params=[ID],
                                               ok=JOB, errors=(400, 404, 409),
                                               body={**LEASE_BODY, "properties": {"lease": {"type": "string"}, "retry": {"type": "boolean"},
                                                                                  "error": {"$ref": "#/components/schemas/JobError"}}})},
        "/api/v1/jobs/{id}/heartbeat": {"post": _op("Extend a lease", params=[ID], body=LEASE_BODY, errors=(400, 404, 409))},
        "/api/v1/jobs/{id}/release": {"post": _op("Hand a leased job back unrun", params=[ID], body=LEASE_BODY, errors=(400, 404, 409))},
        "/api/v1/claim": {"post": _op("Lease ready jobs; long-polls up to wait seconds", body={
            "type": "object", "required": ["queue"],
            "properties": {"queue": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                           "worker": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
                           "wait": {"type": "number"}, "lease": {"type": "number"}}},
            ok={"type": "object", "properties": {"jobs": {"type": "array", "items": JOB}, "lease_seconds": {"type": "number"}}})},
        "/api/v1/complete": {"post": _op("Record many outcomes at once", ok=RESULTS, body={
            "type": "object", "required": ["outcomes"],
            "properties": {"outcomes": {"type": "array", "items": {"$ref": "#/components/schemas/Outcome"}}}})},
        "/api/v1/heartbeat": {"post": _op("Extend many leases; marks the worker seen", ok=RESULTS, body={
            "type": "object", "properties": {"worker": {"type": "string"}, "leases": LEASES, "extend": {"type": "number"}}})},
        "/api/v1/release": {"post": _op("Hand many leased jobs back", ok=RESULTS,
                                        body={"type": "object", "properties": {"leases": LEASES}})},
        "/api/v1/queues": {"get": _op("Queues with counts per status", errors=())},
        "/api/v1/queues/{name}": {"put": _op("Create a queue or change its settings", params=[NAME],
                                             body={"type": "object", "properties": {"paused": {"type": "boolean"},
                                                                                    "strict": {"type": "boolean"}}})},
        "/api/v1/queues/{name}/pause": {"post": _op("Pause a queue: no claims until resumed", params=[NAME])},
        "/api/v1/queues/{name}/resume": {"post": _op("Resume a paused queue", params=[NAME])},
        "/api/v1/workers": {
            "post": _op("Register a worker", body={"type": "object", "required": ["id"]}, created=True),
            "get": _op("Registered workers with last_seen and status", errors=()),
        },
        "/api/v1/events": {"get": _op("Events since a seq, as a JSON list (the cursor is in the X-Last-Seq header);"
                                      " long-polls with wait; upgrade to a websocket for a live feed",
                                      params=[_q("since", "integer"), _q("queue"), _q("job", description="job id"),
                                              _q("kind", description="comma-separated kinds"),
                                              _q("limit", "integer"), _q("wait", "number")],
                                      ok={"type": "array", "items": {"$ref": "#/components/schemas/Event"}})},
        "/api/v1/enqueue": {"get": _op(
            "Upgrade to a websocket that enqueues: each text message {\"ref\": R, \"job\": {...}} or"
            " {\"ref\": R, \"jobs\": [...]} is answered by {\"ref\": R, \"status\": 201, \"job\" or \"jobs\": ...}"
            " or {\"ref\": R, \"status\": 4xx, \"error\": {...}}, as POST /api/v1/jobs would answer; answers may"
            " come back in any order", errors=(400, 401, 403))},
        "/api/v1/openapi.json": {"get": _op("This OpenAPI document", errors=())},
        "/api/v1/workers/{id}/stop": {"post": _op("Ask a worker to drain and exit", params=[ID], errors=(400, 404))},
        "/api/v1/stats": {"get": _op("Counts per status, recent outcomes and throughput, live workers",
                                     params=[_q("window", "number", "seconds"),
                                             _q("step", "number", "seconds per bucket of the series")])},
        "/api/v1/prune": {"post": _op("Delete ended jobs older than older_than seconds", body={
            "type": "object", "required": ["older_than"], "properties": {"older_than": {"type": "number"}}})},
        "/api/v1/tokens": {
            "get": _op("Access tokens (never their secrets)", errors=(401, 403)),
            "post": _op("Create an access token; the answer is the only place it is shown", errors=(400,), created=True, body={
                "type": "object", "required": ["scopes"], "properties": {
                    "scopes": {"type": "array", "items": {"enum": ["submit", "work", "read", "admin"]}},
                    "queues": {"type": "array", "items": {"type": "string"}},
                    "methods": {"type": "array", "items": {"type": "string"}},
                    "name": {"type": "string"}, "expires_in": {"type": "number"}}}),
        },
        "/api/v1/tokens/{id}": {"delete": _op("Revoke an access token", params=[ID], errors=(400, 401, 403, 404))},
        "/api/v1/health": {"get": _op("Liveness of the dispatcher (open without a token)", errors=())},
        "/api/v1/me": {"get": _op("The presented token: kind, id, scopes, queues and methods", errors=())},
    },
    "components": {"schemas": {
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        "JobError": {"type": "object", "properties": {"type": {"type": "string"}, "message": {"type": "string"},
                                                      "traceback": {"type": ["string", "null"]}}},
        "NewJob": {"type": "object", "required": ["queue", "method"], "properties": {
            "queue": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:\\-]{0,127}$"},
            "method": {"type": "string", "description": "package.module:function"},
            "args": {"type": "array"}, "kwargs": {"type": "object"}, "priority": {"type": "integer"},
            "run_at": {"type": ["number", "string"]}, "delay": {"type": "number"},
            "max_attempts": {"type": "integer", "minimum": 1}, "timeout": {"type": "number"},
            "backoff": {"type": "number"}, "key": {"type": "string"}, "data": {"type": "object"},
            "secrets": {"type": "array", "items": {"type": "string"},
                        "description": "kwargs names shown as *** to everyone but the worker running the job"}}},
        "Job": {"type": "object", "properties": {
            "id": {"type": "string"}, "queue": {"type": "string"}, "method": {"type": "string"},
            "args": {"type": "array"}, "kwargs": {"type": "object"},
            "status": {"enum": ["pending", "started", "finished", "failed", "aborted"]},
            "priority": {"type": "integer"}, "run_at": {"type": "number"}, "attempts": {"type": "integer"},
            "max_attempts": {"type": "integer"}, "timeout": {"type": ["number", "null"]},
            "lease": {"type": ["string", "null"]}, "lease_expires": {"type": ["number", "null"]},
            "worker": {"type": ["string", "null"]}, "data": {"type": "object"}, "result": {},
            "error": {"oneOf": [{"$ref": "#/components/schemas/JobError"}, {"type": "null"}]},
            "key": {"type": ["string", "null"]}, "created_at": {"type": "number"},
            "started_at": {"type": ["number", "null"]}, "finished_at": {"type": ["number", "null"]}}},
        "Execution": {"type": "object", "properties": {
            "job_id": {"type": "string"}, "attempt": {"type": "integer"}, "worker": {"type": ["string", "null"]},
            "status": {"enum": ["started", "finished", "failed", "lost", "aborted"]},
            "started_at": {"type": ["number", "null"]}, "finished_at": {"type": ["number", "null"]},
            "error": {"oneOf": [{"$ref": "#/components/schemas/JobError"}, {"type": "null"}]}}},
        "LogLine": {"type": "object", "properties": {
            "id": {"type": "integer"}, "attempt": {"type": "integer"}, "stream": {"enum": ["stdout", "stderr", "log"]},
            "line": {"type": "string"}, "ts": {"type": "number"}}},
        "Event": {"type": "object", "properties": {
            "seq": {"type": "integer"}, "ts": {"type": "number"}, "kind": {"type": "string"},
            "queue": {"type": ["string", "null"]}, "job_id": {"type": ["string", "null"]}, "new_val": {}}},
        "Outcome": {"type": "object", "required": ["id", "lease", "status"], "properties": {
            "id": {"type": "string"}, "lease": {"type": "string"}, "status": {"enum": ["finished", "failed"]},
            "result": {}, "error": {"$ref": "#/components/schemas/JobError"}, "retry": {"type": "boolean"}}},
    }},
}
