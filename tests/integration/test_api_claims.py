"""/api/v1 claims over real HTTP: leases, long-polls, delayed jobs, heartbeats, outcomes, fencing."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import pytest
from support.server import Server

from tqueues import models
from tqueues.dispatcher import HUB

METHOD = "support.jobs:echo"


async def enqueue(server: Server, **spec: Any) -> dict[str, Any]:
    status, job = await server.call("POST", "/api/v1/jobs", json={"queue": "q", "method": METHOD, **spec})
    assert status == 201, job
    return job


async def claim(server: Server, queue: str | list[str] = "q", **body: Any) -> list[dict[str, Any]]:
    status, answer = await server.call("POST", "/api/v1/claim", json={"queue": queue, "worker": "w1", **body})
    assert status == 200, answer
    return answer["jobs"]


async def timed(aw: Awaitable[Any]) -> tuple[Any, float]:
    """The result of ``aw`` and the monotonic time it became available."""
    result = await aw
    return result, time.monotonic()


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition was not reached in time"
        await asyncio.sleep(0.002)


def waiting_on(server: Server, queue: str) -> Callable[[], bool]:
    return lambda: queue in server.app[HUB].queue_waiters


# ---------------------------------------------------------------------------- claim


async def test_given_ready_jobs_when_claimed_then_they_are_leased_in_priority_order(server: Server) -> None:
    low = await enqueue(server, args=["low"])
    high = await enqueue(server, args=["high"], priority=10)
    # When a worker claims up to three jobs
    status, answer = await server.call("POST", "/api/v1/claim", json={"queue": "q", "worker": "w1", "limit": 3, "lease": 20})
    # Then both are leased to it, highest priority first, each with its own token and expiry
    assert status == 200
    jobs = answer["jobs"]
    assert [j["id"] for j in jobs] == [high["id"], low["id"]]
    assert answer["lease_seconds"] == 20
    now = models.now()
    for job in jobs:
        assert (job["status"], job["worker"], job["attempts"]) == ("started", "w1", 1)
        assert isinstance(job["lease"], str) and len(job["lease"]) >= 16
        assert now + 15 < job["lease_expires"] <= now + 21
    # And nothing is left to claim
    assert await claim(server) == []


async def test_given_several_queues_when_claimed_together_then_jobs_of_any_of_them_are_leased(server: Server) -> None:
    a = await enqueue(server, queue="a")
    b = await enqueue(server, queue="b")
    await enqueue(server, queue="c")
    jobs = await claim(server, ["a", "b"], limit=10)
    assert {j["id"] for j in jobs} == {a["id"], b["id"]}


async def test_given_an_empty_queue_when_a_claim_waits_then_an_enqueue_answers_it_at_once(server: Server) -> None:
    # Given a claim long-polling an empty queue for up to 5 s
    waiting = asyncio.ensure_future(timed(claim(server, wait=5)))
    await until(waiting_on(server, "q"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # When a job is enqueued
    enqueued_at = time.monotonic()
    job = await enqueue(server)
    jobs, answered_at = await asyncio.wait_for(waiting, 5)
    # Then the waiting claim gets it well before its wait runs out
    assert [j["id"] for j in jobs] == [job["id"]]
    assert answered_at - enqueued_at < 0.5


async def test_given_an_empty_queue_when_a_claim_waits_and_nothing_comes_then_it_answers_empty_after_its_wait(
        server: Server) -> None:
    started = time.monotonic()
    jobs = await claim(server, wait=0.3)
    elapsed = time.monotonic() - started
    assert jobs == []
    assert 0.28 <= elapsed < 2.0


async def test_given_a_delayed_job_when_a_claim_waits_then_it_is_woken_at_run_at(server: Server) -> None:
    # Given a job delayed by 0.3 s: not claimable now
    job = await enqueue(server, delay=0.3)
    assert await claim(server) == []
    # When a claim waits for up to 5 s
    jobs = await claim(server, wait=5)
    answered = models.now()
    # Then it gets the job once run_at passes, well before its wait runs out
    assert [j["id"] for j in jobs] == [job["id"]]
    assert jobs[0]["started_at"] >= job["run_at"]
    assert answered - job["run_at"] < 0.5


async def test_given_two_claims_waiting_when_one_job_arrives_then_exactly_one_gets_it(server: Server) -> None:
    # Given two claims long-polling the same empty queue
    first = asyncio.ensure_future(claim(server, wait=0.3, worker="a"))
    second = asyncio.ensure_future(claim(server, wait=0.3, worker="b"))
    await until(lambda: len(server.app[HUB].queue_waiters.get("q", ())) == 2)
    # When one job arrives
    job = await enqueue(server)
    results = await asyncio.gather(first, second)
    # Then one claim leases it and the other answers empty after its wait
    assert sorted(len(r) for r in results) == [0, 1]
    assert [j["id"] for r in results for j in r] == [job["id"]]


# ---------------------------------------------------------------------------- heartbeat


async def test_given_a_leased_job_when_its_heartbeat_is_sent_then_the_lease_is_extended(server: Server) -> None:
    job = await enqueue(server)
    (leased,) = await claim(server, lease=5)
    # When the holder heartbeats, extending by 60 s
    status, beat = await server.call("POST", f"/api/v1/jobs/{job['id']}/heartbeat",
                                     json={"lease": leased["lease"], "extend": 60, "worker": "w1"})
    # Then the lease now ends about 60 s from now
    assert status == 200 and beat["ok"] is True
    stored = await server.store.get(job["id"])
    assert stored["lease_expires"] == pytest.approx(beat["lease_expires"])
    assert models.now() + 50 < stored["lease_expires"] <= models.now() + 61
    assert stored["lease"] == leased["lease"]


async def test_given_leased_jobs_when_a_batch_heartbeat_is_sent_then_each_lease_is_answered(server: Server) -> None:
    a = await enqueue(server)
    b = await enqueue(server)
    leases = {j["id"]: j["lease"] for j in await claim(server, limit=2, lease=5)}
    status, reg = await server.call("POST", "/api/v1/workers", json={"id": "w1"})
    assert status == 201
    # When one heartbeat carries both leases and one bogus one
    status, answer = await server.call("POST", "/api/v1/heartbeat", json={
        "worker": "w1", "extend": 60,
        "leases": [{"id": a["id"], "lease": leases[a["id"]]}, {"id": b["id"], "lease": leases[b["id"]]},
                   {"id": a["id"], "lease": "bogus"}]})
    # Then the real ones are extended and the bogus one is a stale_lease item
    assert status == 200 and answer["lease_seconds"] == 60
    results = answer["results"]
    assert [r["ok"] for r in results] == [True, True, False]
    assert results[2]["error"]["code"] == "stale_lease"
    for job in (a, b):
        assert (await server.store.get(job["id"]))["lease_expires"] > models.now() + 50
    # And the worker was marked seen
    (worker,) = (await server.call("GET", "/api/v1/workers"))[1]["workers"]
    assert worker["last_seen"] >= reg["last_seen"]


# ---------------------------------------------------------------------------- complete and fail


async def test_given_a_leased_job_when_completed_then_it_is_finished_with_its_result(server: Server) -> None:
    job = await enqueue(server)
    (leased,) = await claim(server)
    status, done = await server.call("POST", f"/api/v1/jobs/{job['id']}/complete",
                                     json={"lease": leased["lease"], "result": {"total": 3}})
    assert status == 200
    assert (done["status"], done["result"], done["lease"]) == ("finished", {"total": 3}, None)
    assert (await server.store.get(job["id"]))["status"] == "finished"
    # And completing again is refused: the lease ended with the attempt
    status, body = await server.call("POST", f"/api/v1/jobs/{job['id']}/complete", json={"lease": leased["lease"]})
    assert status == 409 and body["error"]["code"] == "stale_lease" and body["error"]["id"] == job["id"]


async def test_given_a_leased_job_when_failed_without_retry_then_it_ends_failed_with_its_error(server: Server) -> None:
    job = await enqueue(server, max_attempts=5)
    (leased,) = await claim(server)
    status, failed = await server.call("POST", f"/api/v1/jobs/{job['id']}/fail", json={
        "lease": leased["lease"], "retry": False, "error": {"type": "KeyError", "message": "k", "traceback": "tb"}})
    assert status == 200
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "KeyError", "message": "k", "traceback": "tb"}


async def test_given_a_leased_job_with_attempts_left_when_failed_then_it_is_retried_after_a_backoff(server: Server) -> None:
    job = await enqueue(server, max_attempts=2, backoff=10)
    (leased,) = await claim(server)
    status, failed = await server.call("POST", f"/api/v1/jobs/{job['id']}/fail", json={"lease": leased["lease"], "error": "boom"})
    assert status == 200
    assert (failed["status"], failed["attempts"], failed["error"]["message"]) == ("pending", 1, "boom")
    assert failed["run_at"] > models.now() + 4   # backoff 10 s scaled by 0.5-1.5
    assert await claim(server) == []


async def test_given_leased_jobs_when_outcomes_are_sent_in_one_batch_then_each_is_recorded(server: Server) -> None:
    ok = await enqueue(server)
    bad = await enqueue(server, max_attempts=1)
    leases = {j["id"]: j["lease"] for j in await claim(server, limit=2)}
    # When a batch reports one success, one failure, one unknown job and one stale lease
    status, answer = await server.call("POST", "/api/v1/complete", json={"outcomes": [
        {"id": ok["id"], "lease": leases[ok["id"]], "status": "finished", "result": [1, 2]},
        {"id": bad["id"], "lease": leases[bad["id"]], "status": "failed", "error": {"type": "E", "message": "m"}},
        {"id": "f" * 32, "lease": "x", "status": "finished"},
        {"id": ok["id"], "lease": "stale", "status": "failed"},
    ]})
    # Then each item is answered in order and only the valid ones changed anything
    assert status == 200
    results = answer["results"]
    assert [(r["id"], r["ok"]) for r in results] == [(ok["id"], True), (bad["id"], True), ("f" * 32, False), (ok["id"], False)]
    assert [r.get("error", {}).get("code") for r in results] == [None, None, "job_not_found", "stale_lease"]
    assert results[0]["job"]["result"] == [1, 2]
    assert (await server.store.get(ok["id"]))["status"] == "finished"
    assert (await server.store.get(bad["id"]))["status"] == "failed"


async def test_given_documents_false_when_outcomes_are_sent_then_results_carry_no_job_documents(server: Server) -> None:
    job = await enqueue(server)
    (leased,) = await claim(server)
    status, answer = await server.call("POST", "/api/v1/complete", json={
        "documents": False, "outcomes": [{"id": job["id"], "lease": leased["lease"], "status": "finished"}]})
    assert status == 200
    assert answer["results"] == [{"id": job["id"], "ok": True, "status": "finished"}]


# ---------------------------------------------------------------------------- release


async def test_given_leased_jobs_when_released_then_they_are_pending_again_without_counting_an_attempt(
        server: Server) -> None:
    a = await enqueue(server)
    b = await enqueue(server)
    leases = {j["id"]: j["lease"] for j in await claim(server, limit=2)}
    status, single = await server.call("POST", f"/api/v1/jobs/{a['id']}/release", json={"lease": leases[a["id"]]})
    assert status == 200 and (single["status"], single["attempts"]) == ("pending", 0)
    status, batch = await server.call("POST", "/api/v1/release", json={"leases": [
        {"id": b["id"], "lease": leases[b["id"]]}, {"id": a["id"], "lease": leases[a["id"]]}]})
    assert status == 200
    assert [(r["id"], r["ok"]) for r in batch["results"]] == [(b["id"], True), (a["id"], False)]
    assert {j["id"] for j in await claim(server, limit=5)} == {a["id"], b["id"]}


# ---------------------------------------------------------------------------- fencing


async def test_given_an_expired_lease_that_was_reissued_when_the_old_holder_reports_then_409_and_nothing_changes(
        start_server: Callable[..., Awaitable[Server]]) -> None:
    server = await start_server(lease=0.3, reap_interval=0.05)
    job = await enqueue(server, max_attempts=3)
    # Given a first worker whose 0.3 s lease expires without a heartbeat
    (old,) = await claim(server, worker="old")
    # And a second worker that gets the job once the reaper requeues it
    (new,) = await claim(server, worker="new", wait=3, lease=30)
    assert new["id"] == job["id"] and new["lease"] != old["lease"] and new["attempts"] == 2
    before = await server.store.get(job["id"])
    path = f"/api/v1/jobs/{job['id']}"
    # When the old holder reports, heartbeats, updates or hands the job back
    answers = [
        await server.call("POST", path + "/complete", json={"lease": old["lease"], "result": "late"}),
        await server.call("POST", path + "/fail", json={"lease": old["lease"], "error": "late"}),
        await server.call("POST", path + "/heartbeat", json={"lease": old["lease"], "extend": 600}),
        await server.call("POST", path + "/release", json={"lease": old["lease"]}),
        await server.call("PATCH", path, json={"lease": old["lease"], "data": {"late": True}}),
    ]
    # Then every call is a 409 stale_lease
    assert [status for status, _ in answers] == [409] * 5
    assert {body["error"]["code"] for _, body in answers} == {"stale_lease"}
    # And the batch forms say the same per item
    status, batch = await server.call("POST", "/api/v1/complete", json={"outcomes": [
        {"id": job["id"], "lease": old["lease"], "status": "finished", "result": "late"}]})
    assert status == 200 and batch["results"][0]["error"]["code"] == "stale_lease"
    status, beats = await server.call("POST", "/api/v1/heartbeat", json={"leases": [{"id": job["id"], "lease": old["lease"]}]})
    assert status == 200 and beats["results"][0]["ok"] is False
    # And nothing changed: the new holder still holds the job, no result, same expiry
    after = await server.store.get(job["id"])
    assert after == before
    assert (after["status"], after["worker"], after["lease"], after["result"]) == ("started", "new", new["lease"], None)
    # And the new holder can still finish it
    status, done = await server.call("POST", path + "/complete", json={"lease": new["lease"], "result": "on time"})
    assert status == 200 and done["result"] == "on time"
    status, runs = await server.call("GET", path + "/executions")
    assert [(r["worker"], r["status"]) for r in runs] == [("old", "lost"), ("new", "finished")]


# ---------------------------------------------------------------------------- paused queues


async def test_given_a_paused_queue_when_claimed_then_nothing_is_handed_out_until_resumed(server: Server) -> None:
    job = await enqueue(server)
    status, paused = await server.call("POST", "/api/v1/queues/q/pause")
    assert status == 200 and paused == {"name": "q", "paused": True, "strict": False}
    assert await claim(server) == []
    # Given a claim waiting on the paused queue
    waiting = asyncio.ensure_future(timed(claim(server, wait=5)))
    await until(waiting_on(server, "q"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    # When the queue is resumed
    resumed_at = time.monotonic()
    status, resumed = await server.call("POST", "/api/v1/queues/q/resume")
    assert status == 200 and resumed["paused"] is False
    # Then the waiting claim gets the job at once
    jobs, answered_at = await asyncio.wait_for(waiting, 5)
    assert [j["id"] for j in jobs] == [job["id"]]
    assert answered_at - resumed_at < 0.5


async def test_given_a_paused_queue_with_ready_jobs_when_a_claim_waits_then_the_dispatcher_does_not_spin(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a paused queue holding a ready job
    await enqueue(server)
    await server.call("POST", "/api/v1/queues/q/pause")
    calls = 0
    original = server.store.claim

    async def counting_claim(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(server.store, "claim", counting_claim)
    # When a claim waits 0.5 s on it
    assert await claim(server, wait=0.5) == []
    # Then the dispatcher tried a handful of times, not in a busy loop
    assert calls <= 5, f"{calls} store claims in 0.5 s"


async def test_given_a_paused_queue_and_a_delayed_job_elsewhere_when_both_are_claimed_then_run_at_still_wakes(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a paused queue holding a ready job, and another queue with a job delayed by 0.3 s
    await enqueue(server, queue="held")
    await server.call("POST", "/api/v1/queues/held/pause")
    delayed = await enqueue(server, queue="later", delay=0.3)
    calls = 0
    original = server.store.claim

    async def counting_claim(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        nonlocal calls
        calls += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(server.store, "claim", counting_claim)
    # When one claim waits on both queues
    jobs = await claim(server, ["held", "later"], wait=5)
    # Then the delayed job wakes it at its run_at, without spinning meanwhile
    assert [j["id"] for j in jobs] == [delayed["id"]]
    assert models.now() - delayed["run_at"] < 0.5
    assert calls <= 6, f"{calls} store claims"


async def test_given_a_waiting_claim_whose_client_gave_up_when_a_job_arrives_then_it_is_not_leased_to_nobody(
        server: Server) -> None:
    # Given a claim long-polling an empty queue, whose client then disconnects
    waiting = asyncio.ensure_future(claim(server, wait=5, worker="gone"))
    await until(waiting_on(server, "q"))
    waiting.cancel()
    await asyncio.sleep(0.1)
    # When a job is enqueued
    job = await enqueue(server, max_attempts=1)
    await asyncio.sleep(0.1)
    # Then it stays pending for a live worker instead of being leased to the departed one
    assert (await server.store.get(job["id"]))["status"] == "pending"
    (leased,) = await claim(server, worker="live")
    assert (leased["id"], leased["attempts"]) == (job["id"], 1)
