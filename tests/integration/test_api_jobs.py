"""/api/v1 jobs over real HTTP: enqueue, idempotency, read, list, data, abort, executions, wait."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from support.server import Server

import tqueues
from tqueues.dispatcher import HUB

METHOD = "support.jobs:echo"
JOB_DOC_KEYS = {"id", "queue", "method", "args", "kwargs", "status", "attempts", "result", "error", "data"}


async def enqueue(server: Server, **spec: Any) -> dict[str, Any]:
    status, job = await server.call("POST", "/api/v1/jobs", json={"queue": "q", "method": METHOD, **spec})
    assert status == 201, job
    return job


async def claim(server: Server, queue: str = "q", **body: Any) -> list[dict[str, Any]]:
    status, answer = await server.call("POST", "/api/v1/claim", json={"queue": queue, "worker": "w1", **body})
    assert status == 200, answer
    return answer["jobs"]


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition was not reached in time"
        await asyncio.sleep(0.002)


# ---------------------------------------------------------------------------- enqueue


async def test_given_one_job_when_posted_then_201_with_the_full_job_document(server: Server) -> None:
    # When one job object is posted
    status, job = await server.call("POST", "/api/v1/jobs", json={
        "queue": "emails", "method": METHOD, "args": [1, "two"], "kwargs": {"three": 3}, "data": {"owner": "me"}})
    # Then it is created and answered as a complete, pending document
    assert status == 201
    assert JOB_DOC_KEYS <= set(job)
    assert isinstance(job["id"], str) and job["id"]
    assert (job["queue"], job["method"], job["args"], job["kwargs"]) == ("emails", METHOD, [1, "two"], {"three": 3})
    assert (job["status"], job["attempts"], job["result"], job["error"]) == ("pending", 0, None, None)
    assert job["data"] == {"owner": "me"}
    # And it is stored as answered
    assert (await server.store.get(job["id"]))["args"] == [1, "two"]


async def test_given_a_list_of_jobs_when_posted_then_answered_as_jobs_in_order(server: Server) -> None:
    # When a bare JSON list of two jobs is posted
    status, body = await server.call("POST", "/api/v1/jobs", json=[
        {"queue": "q", "method": METHOD, "args": [1]}, {"queue": "q", "method": METHOD, "args": [2]}])
    # Then the answer keeps the batch shape, in order, with distinct ids
    assert status == 201
    assert [j["args"] for j in body["jobs"]] == [[1], [2]]
    assert len({j["id"] for j in body["jobs"]}) == 2


async def test_given_a_jobs_object_when_posted_then_answered_as_jobs(server: Server) -> None:
    # When {"jobs": [...]} is posted
    status, body = await server.call("POST", "/api/v1/jobs", json={"jobs": [
        {"queue": "a", "method": METHOD}, {"queue": "b", "method": METHOD, "priority": 5}]})
    # Then both are created
    assert status == 201
    assert [(j["queue"], j["priority"], j["status"]) for j in body["jobs"]] == [("a", 0, "pending"), ("b", 5, "pending")]


async def test_given_a_batch_with_one_invalid_job_when_posted_then_400_and_nothing_is_enqueued(server: Server) -> None:
    # When the second job of a batch is invalid
    status, body = await server.call("POST", "/api/v1/jobs", json={"jobs": [
        {"queue": "q", "method": METHOD}, {"queue": "q", "method": METHOD, "priority": "high"}]})
    # Then the whole batch is refused, naming the item, and no job exists
    assert status == 400
    assert body["error"]["code"] == "invalid_request" and "jobs[1]" in body["error"]["message"]
    assert await server.store.list_jobs() == []


async def test_given_an_idempotency_key_when_posted_twice_then_the_same_job_is_answered_with_200(server: Server) -> None:
    # Given a job posted with a key
    first = await enqueue(server, key="invoice-42", args=[1])
    # When the same key is posted again (even with other arguments)
    status, again = await server.call("POST", "/api/v1/jobs", json={"queue": "q", "method": METHOD, "key": "invoice-42",
                                                                    "args": [2]})
    # Then the first job is answered, unchanged, with 200, and only one job exists
    assert status == 200
    assert again["id"] == first["id"] and again["args"] == [1]
    assert len(await server.store.list_jobs()) == 1


async def test_given_one_key_twice_in_one_batch_then_both_items_are_the_same_job(server: Server) -> None:
    # When a batch names one key twice
    status, body = await server.call("POST", "/api/v1/jobs", json=[
        {"queue": "q", "method": METHOD, "key": "k"}, {"queue": "q", "method": METHOD, "key": "k"}])
    # Then one job is created and answered for both items
    assert status == 201
    assert body["jobs"][0]["id"] == body["jobs"][1]["id"]
    assert len(await server.store.list_jobs()) == 1


async def test_given_documents_false_when_a_batch_is_posted_then_each_item_is_its_id_status_and_created(
        server: Server) -> None:
    # Given a job with a key already there
    first = await enqueue(server, key="k1")
    # When a batch naming that key and two new jobs is posted asking for no documents
    status, body = await server.call("POST", "/api/v1/jobs", json={"documents": False, "jobs": [
        {"queue": "q", "method": METHOD, "args": [1]}, {"queue": "q", "method": METHOD, "key": "k1"},
        {"queue": "q", "method": METHOD, "args": [3], "run_at": time.time() + 3600}]})
    # Then each item is only the id, status and whether it was created, in order
    assert status == 201
    assert [set(item) for item in body["jobs"]] == [{"id", "status", "created"}] * 3
    assert [(i["status"], i["created"]) for i in body["jobs"]] == [("pending", True), ("pending", False), ("pending", True)]
    assert body["jobs"][1]["id"] == first["id"]
    # And the ids are those of the stored jobs
    assert (await server.store.get(body["jobs"][0]["id"]))["args"] == [1]
    assert (await server.store.get(body["jobs"][2]["id"]))["args"] == [3]


async def test_given_documents_that_is_not_a_boolean_when_a_batch_is_posted_then_400_and_nothing_is_enqueued(
        server: Server) -> None:
    status, body = await server.call("POST", "/api/v1/jobs", json={"documents": "no", "jobs": [{"queue": "q", "method": METHOD}]})
    assert status == 400
    assert body["error"]["field"] == "documents"
    assert await server.store.list_jobs() == []


async def test_given_a_client_when_enqueue_many_without_documents_then_it_returns_the_ids_in_order(
        server: Server) -> None:
    async with tqueues.Client(server.url) as client:
        items = await client.enqueue_many([{"queue": "q", "method": METHOD, "args": [n]} for n in range(5)],
                                          chunk=2, documents=False)
    assert [set(i) for i in items] == [{"id", "status", "created"}] * 5
    assert [(await server.store.get(i["id"]))["args"] for i in items] == [[n] for n in range(5)]


# ---------------------------------------------------------------------------- read


async def test_given_a_job_when_got_by_id_then_its_document_is_answered(server: Server) -> None:
    job = await enqueue(server, args=["x"])
    status, got = await server.call("GET", f"/api/v1/jobs/{job['id']}")
    assert status == 200
    assert got == job


async def test_given_an_unknown_id_when_got_then_404_with_an_error_object(server: Server) -> None:
    status, body = await server.call("GET", "/api/v1/jobs/" + "0" * 32)
    assert status == 404
    assert set(body) == {"error"}
    assert body["error"]["code"] == "job_not_found"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def test_given_jobs_of_several_queues_methods_and_statuses_when_listed_then_filters_apply(server: Server) -> None:
    # Given jobs in two queues with two methods, one of them started
    a1 = await enqueue(server, queue="a")
    a2 = await enqueue(server, queue="a", method="support.jobs:add_plain")
    b1 = await enqueue(server, queue="b")
    (started,) = await claim(server, "b")
    assert started["id"] == b1["id"]

    async def ids(**params: Any) -> list[str]:
        status, body = await server.call("GET", "/api/v1/jobs", params=params)
        assert status == 200, body
        return [j["id"] for j in body["jobs"]]

    # Then each filter selects its jobs, newest first
    assert await ids() == [b1["id"], a2["id"], a1["id"]]
    assert await ids(queue="a") == [a2["id"], a1["id"]]
    assert await ids(status="started") == [b1["id"]]
    assert await ids(status="pending", queue="a") == [a2["id"], a1["id"]]
    assert await ids(method="support.jobs:add_plain") == [a2["id"]]
    assert await ids(queue="nothing-here") == []


async def test_given_more_jobs_than_the_limit_when_listed_then_next_pages_through_them(server: Server) -> None:
    made = [await enqueue(server, args=[i]) for i in range(3)]
    # When listing one at a time, following "next"
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 1}
    while True:
        status, page = await server.call("GET", "/api/v1/jobs", params=params)
        assert status == 200 and len(page["jobs"]) <= 1
        if not page["jobs"]:
            assert page["next"] is None
            break
        seen.append(page["jobs"][0]["id"])
        params = {"limit": 1, "before": page["next"]}
    # Then every job is seen once, newest first
    assert seen == [j["id"] for j in reversed(made)]


# ---------------------------------------------------------------------------- data, abort, executions


async def test_given_a_job_with_data_when_patched_then_data_is_merged_and_an_event_is_written(server: Server) -> None:
    job = await enqueue(server, data={"keep": 1, "replace": "old"})
    # When new data is patched in
    status, patched = await server.call("PATCH", f"/api/v1/jobs/{job['id']}", json={"data": {"replace": "new", "add": [1]}})
    # Then top-level keys are replaced or added and the others kept
    assert status == 200
    assert patched["data"] == {"keep": 1, "replace": "new", "add": [1]}
    assert (await server.store.get(job["id"]))["data"] == patched["data"]
    events = await server.store.events_since(0, job_id=job["id"])
    assert [e["kind"] for e in events] == ["job.created", "job.updated"]


async def test_given_a_started_job_when_patched_with_its_lease_then_ok_and_with_another_lease_409(server: Server) -> None:
    job = await enqueue(server)
    (leased,) = await claim(server)
    status, ok = await server.call("PATCH", f"/api/v1/jobs/{job['id']}", json={"data": {"step": 1}, "lease": leased["lease"]})
    assert status == 200 and ok["data"] == {"step": 1}
    status, body = await server.call("PATCH", f"/api/v1/jobs/{job['id']}", json={"data": {"step": 2}, "lease": "not-it"})
    assert status == 409 and body["error"]["code"] == "stale_lease"
    assert (await server.store.get(job["id"]))["data"] == {"step": 1}


async def test_given_a_pending_job_when_aborted_then_it_ends_aborted_and_cannot_be_claimed(server: Server) -> None:
    job = await enqueue(server)
    # When aborted
    status, aborted = await server.call("POST", f"/api/v1/jobs/{job['id']}/abort")
    # Then it is aborted, never handed out, and aborting again is a conflict
    assert status == 200 and aborted["status"] == "aborted"
    assert await claim(server) == []
    status, body = await server.call("POST", f"/api/v1/jobs/{job['id']}/abort")
    assert status == 409 and body["error"]["code"] == "conflict"


async def test_given_a_started_job_when_aborted_then_its_lease_is_stale(server: Server) -> None:
    job = await enqueue(server)
    (leased,) = await claim(server)
    status, _ = await server.call("POST", f"/api/v1/jobs/{job['id']}/abort")
    assert status == 200
    # When its worker reports completion afterwards
    status, body = await server.call("POST", f"/api/v1/jobs/{job['id']}/complete", json={"lease": leased["lease"], "result": 1})
    # Then it is refused and the job stays aborted
    assert status == 409 and body["error"]["code"] == "stale_lease"
    after = await server.store.get(job["id"])
    assert (after["status"], after["result"]) == ("aborted", None)
    (execution,) = (await server.call("GET", f"/api/v1/jobs/{job['id']}/executions"))[1]
    assert execution["status"] == "aborted"


async def test_given_a_job_failed_once_then_finished_when_executions_are_read_then_both_attempts_show(server: Server) -> None:
    job = await enqueue(server, backoff=0)
    (first,) = await claim(server)
    status, failed = await server.call("POST", f"/api/v1/jobs/{job['id']}/fail", json={
        "lease": first["lease"], "error": {"type": "ValueError", "message": "bad input", "traceback": "Traceback..."}})
    assert status == 200 and failed["status"] == "pending"
    (second,) = await claim(server, worker="w2")
    status, _ = await server.call("POST", f"/api/v1/jobs/{job['id']}/complete", json={"lease": second["lease"], "result": "ok"})
    assert status == 200
    # When its executions are read
    status, body = await server.call("GET", f"/api/v1/jobs/{job['id']}/executions")
    # Then each attempt is listed in order with its worker and outcome
    assert status == 200
    runs = body
    assert [(r["attempt"], r["worker"], r["status"]) for r in runs] == [(1, "w1", "failed"), (2, "w2", "finished")]
    assert runs[0]["error"]["type"] == "ValueError" and runs[1]["error"] is None


async def test_given_an_unknown_job_when_executions_are_read_then_404(server: Server) -> None:
    status, body = await server.call("GET", "/api/v1/jobs/nope/executions")
    assert status == 404 and body["error"]["code"] == "job_not_found"


# ---------------------------------------------------------------------------- waiting for a job


async def test_given_a_waiting_get_when_the_job_finishes_then_it_answers_at_once(server: Server) -> None:
    job = await enqueue(server)
    (leased,) = await claim(server)
    waiting = asyncio.ensure_future(server.call("GET", f"/api/v1/jobs/{job['id']}", params={"wait": "5"}))
    await until(lambda: job["id"] in server.app[HUB].job_waiters)
    assert not waiting.done()
    # When the job finishes
    ended = time.monotonic()
    status, _ = await server.call("POST", f"/api/v1/jobs/{job['id']}/complete", json={"lease": leased["lease"], "result": 7})
    assert status == 200
    status, done = await asyncio.wait_for(waiting, 5)
    # Then the waiting GET answers the finished job long before its wait ran out
    assert time.monotonic() - ended < 0.5
    assert status == 200 and (done["status"], done["result"]) == ("finished", 7)


async def test_given_a_job_that_does_not_end_when_got_with_wait_then_it_answers_after_the_wait(server: Server) -> None:
    job = await enqueue(server)
    started = time.monotonic()
    status, got = await server.call("GET", f"/api/v1/jobs/{job['id']}", params={"wait": "0.2"})
    elapsed = time.monotonic() - started
    assert status == 200 and got["status"] == "pending"
    assert 0.18 <= elapsed < 2.0


async def test_given_an_ended_job_when_got_with_wait_then_it_answers_at_once(server: Server) -> None:
    job = await enqueue(server)
    await server.call("POST", f"/api/v1/jobs/{job['id']}/abort")
    started = time.monotonic()
    status, got = await server.call("GET", f"/api/v1/jobs/{job['id']}", params={"wait": "5"})
    assert status == 200 and got["status"] == "aborted"
    assert time.monotonic() - started < 1.0
