"""A property-based fuzz of /api/v1 driven by its own OpenAPI document.

For every operation the document lists, hypothesis builds requests: bodies made of the
declared properties with values of any JSON type (and sometimes wholly arbitrary JSON), query
parameters with arbitrary text, path ids that exist or not. Every answer must be one the
document declares for that operation, never a 5xx, with the error shape on every 4xx and a
body of the declared JSON type on every 2xx.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.procs import start_dispatcher

from tqueues.dispatcher.openapi import OPENAPI

SKIP = {("GET", "/api/v1/events")}   # a long-poll and a websocket; covered by the malformed-request table

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
plausible = {
    "queue": st.sampled_from(["q", "fuzz", "bad queue", "", "-x"]),
    "queues": st.lists(st.sampled_from(["q", "fuzz", "bad queue"]), max_size=3),
    "method": st.sampled_from(["m:f", "app.jobs:run", "os system", ""]),
    "lease": st.text(max_size=40), "id": st.text(max_size=40), "status": st.sampled_from(["finished", "failed", "x"]),
    "scopes": st.lists(st.sampled_from(["read", "submit", "work", "admin", "root"]), max_size=3),
}


def body_strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    properties = (schema.get("properties") or {}) if isinstance(schema, dict) else {}
    if not properties:
        return json_values
    fields = {name: plausible.get(name, json_values) | json_values for name in properties}
    objects = st.fixed_dictionaries({}, optional=fields)
    return st.one_of(objects, objects, objects, json_values)


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            if (method.upper(), path) not in SKIP:
                yield method.upper(), path, op


@pytest.fixture(scope="module")
def dispatcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    proc, url = start_dispatcher(tmp, f"sqlite:///{tmp / 'fuzz.db'}", "--max-wait", "0.2", "--loglevel", "WARNING")
    job = call(url, "POST", "api/v1/jobs", {"queue": "q", "method": "m:f"})[1]
    try:
        yield url, job["id"]
    finally:
        proc.terminate()
        proc.close()


def call(url: str, method: str, path: str, body: Any = None, query: dict[str, str] | None = None) -> tuple[int, Any]:
    target = url + path + ("?" + urllib.parse.urlencode(query) if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(target, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        return error.code, json.loads(raw) if raw else None


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """The top-level JSON type of an answer against its declared schema (refs resolved)."""
    if "$ref" in schema:
        schema = OPENAPI["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if "oneOf" in schema:
        return any(conforms(value, option) for option in schema["oneOf"])
    kind = schema.get("type")
    expected = {"object": dict, "array": list, "string": str}.get(kind) if isinstance(kind, str) else None
    if expected is not None and not isinstance(value, expected):
        return False
    if isinstance(value, dict):
        return all(key in value for key in schema.get("required", []))
    return True


@pytest.mark.parametrize("method, path, op", list(operations()), ids=lambda v: v if isinstance(v, str) else "")
def test_fuzzed_requests_get_only_documented_answers_and_never_a_5xx(dispatcher: tuple[str, str], method: str,
                                                                     path: str, op: dict[str, Any]) -> None:
    url, known = dispatcher
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    query_names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]

    @settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(body=body_strategy(body_schema) if body_schema else st.none(),
           query=st.dictionaries(st.sampled_from(query_names), st.text(max_size=12), max_size=3) if query_names else st.just({}),
           ident=st.sampled_from([known, "f" * 32, "x" * 70, "a b"]))
    def run(body: Any, query: dict[str, str], ident: str) -> None:
        concrete = path.replace("{id}", urllib.parse.quote(ident, safe="")).replace("{name}", "q")
        status, answer = call(url, method, concrete.lstrip("/"), body, query)
        assert status < 500, (method, concrete, body, query, status, answer)
        assert str(status) in op["responses"], f"{method} {path} answered {status}, not in the document: {answer}"
        if status >= 400:
            assert isinstance(answer["error"]["code"], str) and isinstance(answer["error"]["message"], str)
        else:
            declared = op["responses"][str(status)]["content"]["application/json"]["schema"]
            assert conforms(answer, declared), (method, path, status, answer)

    run()
    assert call(url, "GET", "api/v1/health")[0] == 200   # still serving
