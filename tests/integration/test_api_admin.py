"""/api/v1 queues, workers, health and the OpenAPI document over real HTTP."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Iterator

from support.server import Server

from tqueues import models
from tqueues.dispatcher import channel, views

METHOD = "support.jobs:echo"


async def enqueue(server: Server, **spec: Any) -> dict[str, Any]:
    status, job = await server.call("POST", "/api/v1/jobs", json={"queue": "q", "method": METHOD, **spec})
    assert status == 201, job
    return job


def by_name(queues: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {q["name"]: q for q in queues}


# ---------------------------------------------------------------------------- queues


async def test_given_jobs_in_several_states_when_queues_are_listed_then_counts_are_per_status(server: Server) -> None:
    # Given three jobs in "a": one finished, one started, one pending; and one pending in "b"
    for _ in range(3):
        await enqueue(server, queue="a")
    await enqueue(server, queue="b")
    status, claimed = await server.call("POST", "/api/v1/claim", json={"queue": "a", "limit": 2})
    first = claimed["jobs"][0]
    await server.call("POST", f"/api/v1/jobs/{first['id']}/complete", json={"lease": first["lease"]})
    # When the queues are listed
    status, body = await server.call("GET", "/api/v1/queues")
    # Then each queue shows its counts for every status
    assert status == 200
    queues = by_name(body["queues"])
    assert set(queues) == {"a", "b"}
    assert queues["a"]["counts"] == {"pending": 1, "started": 1, "finished": 1, "failed": 0, "aborted": 0}
    assert queues["b"]["counts"] == {"pending": 1, "started": 0, "finished": 0, "failed": 0, "aborted": 0}
    assert queues["a"]["paused"] is False


async def test_given_a_new_queue_name_when_put_then_the_queue_exists_empty_and_settings_apply(server: Server) -> None:
    # When a queue is created with PUT and no body
    status, made = await server.call("PUT", "/api/v1/queues/reports")
    assert status == 200 and made == {"name": "reports", "paused": False, "strict": False}
    # And PUT again with a setting
    status, changed = await server.call("PUT", "/api/v1/queues/reports", json={"paused": True})
    assert status == 200 and changed == {"name": "reports", "paused": True, "strict": False}
    # Then it is listed, paused, with no jobs
    status, body = await server.call("GET", "/api/v1/queues")
    reports = by_name(body["queues"])["reports"]
    assert reports["paused"] is True and sum(reports["counts"].values()) == 0


async def test_given_a_queue_when_paused_and_resumed_then_the_listing_follows(server: Server) -> None:
    await enqueue(server)
    status, _ = await server.call("POST", "/api/v1/queues/q/pause")
    assert status == 200
    assert by_name((await server.call("GET", "/api/v1/queues"))[1]["queues"])["q"]["paused"] is True
    status, _ = await server.call("POST", "/api/v1/queues/q/resume")
    assert status == 200
    assert by_name((await server.call("GET", "/api/v1/queues"))[1]["queues"])["q"]["paused"] is False
    status, claimed = await server.call("POST", "/api/v1/claim", json={"queue": "q"})
    assert len(claimed["jobs"]) == 1


# ---------------------------------------------------------------------------- workers


async def test_given_a_worker_when_registered_then_it_is_listed_alive_with_its_info(server: Server) -> None:
    # When a worker registers
    status, doc = await server.call("POST", "/api/v1/workers", json={
        "id": "host-1:42", "host": "host-1", "pid": 42, "queues": ["q", "r"], "functions": ["support.jobs:echo"],
        "concurrency": 4, "prefetch": 16, "version": "0.1.0", "status": "running"})
    assert status == 201
    assert doc["id"] == "host-1:42" and doc["last_seen"] == doc["registered_at"]
    # Then it is listed alive with what it said
    status, body = await server.call("GET", "/api/v1/workers")
    assert status == 200
    (worker,) = body["workers"]
    assert (worker["id"], worker["pid"], worker["queues"], worker["concurrency"], worker["prefetch"]) == (
        "host-1:42", 42, ["q", "r"], 4, 16)
    assert worker["status"] == "alive"


async def test_given_a_worker_that_registers_again_when_listed_then_it_appears_once_with_the_new_info(
        server: Server) -> None:
    await server.call("POST", "/api/v1/workers", json={"id": "w", "concurrency": 1})
    status, _ = await server.call("POST", "/api/v1/workers", json={"id": "w", "concurrency": 8, "status": "stopped"})
    assert status == 201
    (worker,) = (await server.call("GET", "/api/v1/workers"))[1]["workers"]
    assert (worker["concurrency"], worker["status"]) == (8, "stopped")


async def test_given_a_silent_worker_when_listed_after_the_worker_timeout_then_it_is_shown_dead(
        start_server: Callable[..., Awaitable[Server]]) -> None:
    server = await start_server(worker_timeout=0.1)
    await server.call("POST", "/api/v1/workers", json={"id": "quiet"})
    await server.call("POST", "/api/v1/workers", json={"id": "gone", "status": "stopped"})
    await asyncio.sleep(0.2)
    status, body = await server.call("GET", "/api/v1/workers")
    assert status == 200
    assert {w["id"]: w["status"] for w in body["workers"]} == {"quiet": "dead", "gone": "stopped"}


# ---------------------------------------------------------------------------- health, OpenAPI


async def test_given_a_dispatcher_when_health_is_asked_then_ok_with_version_and_store(server: Server) -> None:
    status, body = await server.call("GET", "/api/v1/health")
    assert status == 200
    assert body["ok"] is True and body["store"] == server.store.scheme and isinstance(body["version"], str)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


async def test_given_a_dispatcher_when_the_openapi_document_is_fetched_then_it_describes_every_api_route(
        server: Server) -> None:
    status, doc = await server.call("GET", "/api/v1/openapi.json")
    # Then it is an OpenAPI 3 document
    assert status == 200
    assert str(doc["openapi"]).startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    # And every /api/v1 route of the dispatcher is described, with responses
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    routes = {(method, path) for method, path, _ in (*views.ROUTES, *channel.ROUTES)}
    assert routes - documented == set(), "routes missing from openapi.json"
    assert documented - routes == set(), "openapi.json describes routes that do not exist"
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], f"{method} {path} has no responses"
            params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert params == [seg[1:-1] for seg in path.split("/") if seg.startswith("{")], f"{method} {path}"
    # And every reference resolves to a component schema
    schemas = doc["components"]["schemas"]
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    # And the job status enum matches the real statuses
    assert set(schemas["Job"]["properties"]["status"]["enum"]) == set(models.STATUSES)
