"""The TQueues root API, driven exactly as its documentation shows, over real HTTP.

PUT /?queue=foo creates a queue; POST / creates a job (form or JSON); GET /?queue=foo claims
one (blocking while the queue is empty, 404 to retry); PATCH /?queue=foo&id=X updates its data;
DELETE /?queue=foo&id=X marks it finished; GET /ws?queue=foo streams new_val documents.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import aiohttp
from support.server import Server

from tqueues.dispatcher import HUB

DOC_METHOD = "method.to.execute"   # the documentation's own example


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition was not reached in time"
        await asyncio.sleep(0.002)


async def post_form(server: Server, queue: str = "foo", args: Any = (1, 2), kwargs: Any = None) -> dict[str, Any]:
    status, job = await server.call("POST", "/", data={
        "queue": queue, "method": DOC_METHOD, "args": json.dumps(list(args)), "kwargs": json.dumps(kwargs or {})})
    assert status == 200, job
    return job


# ---------------------------------------------------------------------------- PUT, POST


async def test_given_a_queue_name_when_put_then_the_queue_exists(server: Server) -> None:
    # When PUT /?queue=foo
    status, body = await server.call("PUT", "/", params={"queue": "foo"})
    # Then 200 and the queue is listed (once, even when PUT again)
    assert status == 200 and body["ok"] is True
    assert (await server.call("PUT", "/", params={"queue": "foo"}))[0] == 200
    assert [q["name"] for q in await server.store.queues()] == ["foo"]


async def test_given_a_form_body_when_posted_then_the_created_job_document_is_answered(server: Server) -> None:
    await server.call("PUT", "/", params={"queue": "foo"})
    # When a job is posted as a form, args and kwargs as JSON text
    status, job = await server.call("POST", "/", data={
        "queue": "foo", "method": DOC_METHOD, "args": "[1, \"two\"]", "kwargs": "{\"three\": 3}"})
    # Then the created job is answered, decoded, with its id
    assert status == 200
    assert isinstance(job["id"], str) and job["id"]
    assert (job["queue"], job["method"], job["args"], job["kwargs"], job["status"]) == (
        "foo", DOC_METHOD, [1, "two"], {"three": 3}, "pending")
    assert (await server.store.get(job["id"]))["args"] == [1, "two"]


async def test_given_a_json_body_when_posted_then_the_created_job_document_is_answered(server: Server) -> None:
    status, job = await server.call("POST", "/", json={"queue": "foo", "method": DOC_METHOD, "args": [3], "kwargs": {"k": "v"}})
    assert status == 200
    assert (job["queue"], job["args"], job["kwargs"]) == ("foo", [3], {"k": "v"})
    assert (await server.store.get(job["id"]))["status"] == "pending"


async def test_given_a_form_with_repeated_plain_args_when_posted_then_each_is_one_argument(server: Server) -> None:
    status, job = await server.call("POST", "/", data=[("queue", "foo"), ("method", DOC_METHOD), ("args", "a"), ("args", "b")])
    assert status == 200 and job["args"] == ["a", "b"]


# ---------------------------------------------------------------------------- GET (claim)


async def test_given_a_job_when_get_queue_then_it_is_claimed_with_its_documented_fields(server: Server) -> None:
    job = await post_form(server, args=[1, 2], kwargs={"x": 1})
    # When GET /?queue=foo
    status, got = await server.call("GET", "/", params={"queue": "foo"})
    # Then the job comes with queue, method, args and kwargs, now started
    assert status == 200
    assert (got["id"], got["queue"], got["method"], got["args"], got["kwargs"]) == (
        job["id"], "foo", DOC_METHOD, [1, 2], {"x": 1})
    assert got["status"] == "started" and got["lease"]
    # And it is not handed out twice
    status, _ = await server.call("GET", "/", params={"queue": "foo", "wait": "0"})
    assert status == 404


async def test_given_an_empty_queue_when_get_blocks_then_a_job_posted_meanwhile_is_answered(server: Server) -> None:
    # Given a GET /?queue=foo blocking on an empty queue (as documented: no wait parameter)
    waiting = asyncio.ensure_future(server.call("GET", "/", params={"queue": "foo"}))
    await until(lambda: "foo" in server.app[HUB].queue_waiters)
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # When a job is posted to the queue
    posted_at = time.monotonic()
    job = await post_form(server)
    status, got = await asyncio.wait_for(waiting, 5)
    # Then the blocked GET answers it at once
    assert time.monotonic() - posted_at < 0.5
    assert status == 200 and got["id"] == job["id"]


async def test_given_a_blocked_get_whose_client_gave_up_when_a_job_is_posted_then_the_next_get_gets_it(
        server: Server) -> None:
    # Given a GET /?queue=foo blocking on an empty queue, whose client then disconnects
    waiting = asyncio.ensure_future(server.call("GET", "/", params={"queue": "foo"}))
    await until(lambda: "foo" in server.app[HUB].queue_waiters)
    waiting.cancel()
    await asyncio.sleep(0.1)
    # When a job is posted
    job = await post_form(server)
    await asyncio.sleep(0.1)
    # Then it was not claimed for the departed client: the next GET gets it
    assert (await server.store.get(job["id"]))["status"] == "pending"
    status, got = await server.call("GET", "/", params={"queue": "foo", "wait": "0"})
    assert status == 200 and got["id"] == job["id"]


async def test_given_an_empty_queue_when_get_waits_briefly_then_404_json_to_retry(server: Server) -> None:
    started = time.monotonic()
    status, body = await server.call("GET", "/", params={"queue": "foo", "wait": "0.2"})
    assert status == 404
    assert body["error"]["code"] == "no_job_available" and isinstance(body["error"]["message"], str)
    assert 0.18 <= time.monotonic() - started < 2.0


async def test_given_jobs_in_two_queues_when_get_one_queue_then_only_its_job_is_claimed(server: Server) -> None:
    await post_form(server, queue="bar")
    foo = await post_form(server, queue="foo")
    status, got = await server.call("GET", "/", params={"queue": "foo", "wait": "0"})
    assert status == 200 and got["id"] == foo["id"]
    assert (await server.call("GET", "/", params={"queue": "foo", "wait": "0"}))[0] == 404


# ---------------------------------------------------------------------------- PATCH, DELETE


async def test_given_a_claimed_job_when_patched_then_its_data_is_updated(server: Server) -> None:
    job = await post_form(server)
    await server.call("GET", "/", params={"queue": "foo"})
    # When PATCH /?queue=foo&id=X with fields, and then with a data object
    status, patched = await server.call("PATCH", "/", params={"queue": "foo", "id": job["id"]}, json={"progress": 50})
    assert status == 200 and patched["data"] == {"progress": 50}
    status, patched = await server.call("PATCH", "/", params={"queue": "foo", "id": job["id"]},
                                        json={"data": {"progress": 100, "note": "done"}})
    # Then the data is merged and stored
    assert status == 200 and patched["data"] == {"progress": 100, "note": "done"}
    assert (await server.store.get(job["id"]))["data"] == {"progress": 100, "note": "done"}


async def test_given_a_job_of_another_queue_when_patched_or_deleted_then_404_and_it_is_unchanged(server: Server) -> None:
    job = await post_form(server, queue="bar")
    status, body = await server.call("PATCH", "/", params={"queue": "foo", "id": job["id"]}, json={"x": 1})
    assert status == 404 and body["error"]["code"] == "job_not_found"
    status, body = await server.call("DELETE", "/", params={"queue": "foo", "id": job["id"]})
    assert status == 404
    stored = await server.store.get(job["id"])
    assert (stored["status"], stored["data"]) == ("pending", {})


async def test_given_a_claimed_job_when_deleted_then_it_is_finished(server: Server) -> None:
    job = await post_form(server)
    await server.call("GET", "/", params={"queue": "foo"})
    # When DELETE /?queue=foo&id=X
    status, body = await server.call("DELETE", "/", params={"queue": "foo", "id": job["id"]})
    # Then 200 and the job is finished
    assert status == 200
    assert body["status"] == "finished"
    stored = await server.store.get(job["id"])
    assert stored["status"] == "finished" and stored["lease"] is None
    # And deleting again still answers 200 (the documentation: always 200)
    status, again = await server.call("DELETE", "/", params={"queue": "foo", "id": job["id"]})
    assert status == 200 and again["status"] == "finished"


async def test_given_the_documented_worker_loop_then_each_job_is_consumed_once_in_order(server: Server) -> None:
    # Given a queue with two jobs
    await server.call("PUT", "/", params={"queue": "foo"})
    first = await post_form(server, args=[1])
    second = await post_form(server, args=[2])
    done = []
    # When a worker loops: GET a job, PATCH progress, DELETE it; until the queue answers 404
    while True:
        status, job = await server.call("GET", "/", params={"queue": "foo", "wait": "0"})
        if status == 404:
            break
        assert status == 200
        ident = {"queue": "foo", "id": job["id"]}
        assert (await server.call("PATCH", "/", params=ident, json={"seen": True}))[0] == 200
        assert (await server.call("DELETE", "/", params=ident))[0] == 200
        done.append(job["id"])
    # Then both jobs were consumed once, oldest first, and ended finished with their data
    assert done == [first["id"], second["id"]]
    for ident in done:
        stored = await server.store.get(ident)
        assert (stored["status"], stored["data"]) == ("finished", {"seen": True})


# ---------------------------------------------------------------------------- websocket


async def test_given_a_websocket_on_a_queue_then_it_streams_that_queues_job_documents_only(server: Server) -> None:
    async with server.session.ws_connect(server.url + "ws?queue=foo") as ws:
        await until(lambda: len(server.app[HUB].feeds) == 1)
        # When a job of foo is created, a job of another queue is created, and foo's job is claimed and finished
        job = await post_form(server)
        other = await post_form(server, queue="bar")
        status, _ = await server.call("GET", "/", params={"queue": "foo"})
        assert status == 200
        status, _ = await server.call("DELETE", "/", params={"queue": "foo", "id": job["id"]})
        assert status == 200
        # Then foo's job document arrives as it was after each change: pending, started, finished
        docs = []
        while not docs or docs[-1]["status"] != "finished":
            message = await ws.receive(timeout=3)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            docs.append(json.loads(message.data))
    # And nothing of the other queue came in between (events arrive in order)
    assert [(d["id"], d["queue"], d["status"]) for d in docs] == [
        (job["id"], "foo", "pending"), (job["id"], "foo", "started"), (job["id"], "foo", "finished")]
    assert other["id"] not in {d["id"] for d in docs}
    assert "kind" not in docs[0] and "seq" not in docs[0]   # bare new_val documents, as TQueues sent
