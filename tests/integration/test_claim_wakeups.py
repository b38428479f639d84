"""Long-polling claims over real HTTP: a new job wakes one waiting claim, not every worker,
and a wake-up that cannot be used is passed on, so no job waits for the backstop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from support.server import Server

from tqueues.errors import StoreUnavailable

METHOD = "support.jobs:echo"


async def enqueue(server: Server, count: int = 1) -> list[dict[str, Any]]:
    body = [{"queue": "wq", "method": METHOD, "args": [i]} for i in range(count)]
    status, answer = await server.call("POST", "/api/v1/jobs", json=body if count > 1 else body[0])
    assert status == 201, answer
    return answer["jobs"] if count > 1 else [answer]


async def claim(server: Server, worker: str, limit: int = 1, wait: float = 30.0) -> list[dict[str, Any]]:
    status, answer = await server.call("POST", "/api/v1/claim",
                                       json={"queue": "wq", "worker": worker, "limit": limit, "wait": wait})
    assert status == 200, answer
    return answer["jobs"]


def count_claims(server: Server, monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> list[float]:
    """Record the time of every store claim, the claims made with an enqueue (push dispatch)
    included (the first ``fail_first`` raise StoreUnavailable).

    The tests count claims exactly, so a parked claim must wake only when a job wakes it: the
    backstop (a look every few seconds, should an event be missed) is put out of reach, or a
    slow moment of a busy machine (a stalled fsync) would add claims that no job caused."""
    from tqueues.dispatcher import views

    monkeypatch.setattr(views, "BACKSTOP", 120.0)
    calls: list[float] = []

    def counting(original: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(time.monotonic())
            if len(calls) <= fail_first:
                raise StoreUnavailable("the database went away for a moment")
            return await original(*args, **kwargs)
        return counted

    monkeypatch.setattr(server.store, "claim", counting(server.store.claim))
    monkeypatch.setattr(server.store, "enqueue_and_claim", counting(server.store.enqueue_and_claim))
    return calls


async def settle(calls: list[float], count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while len(calls) < count:
        assert time.monotonic() < deadline, f"only {len(calls)} of {count} claims were made"
        await asyncio.sleep(0.005)


async def test_given_ten_waiting_claims_when_one_job_arrives_then_one_claim_runs_and_takes_it(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_claims(server, monkeypatch)
    waiting = [asyncio.ensure_future(claim(server, f"w{i}", limit=10)) for i in range(10)]
    await settle(calls, 10)   # each long poll claimed once, found nothing, and waits
    await asyncio.sleep(0.1)
    # When one job is enqueued
    [job] = await enqueue(server)
    done, _ = await asyncio.wait(waiting, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    # Then the claim that had waited longest got it, after a single new store claim (it was
    # not full, so it woke nobody else)
    assert [[j["id"] for j in t.result()] for t in done] == [[job["id"]]]
    assert waiting[0] in done
    await asyncio.sleep(0.2)
    assert len(calls) == 11
    assert sum(t.done() for t in waiting) == 1
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_given_waiting_claims_when_a_batch_arrives_then_as_many_claims_wake_as_jobs(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_claims(server, monkeypatch)
    waiting = [asyncio.ensure_future(claim(server, f"w{i}", limit=1)) for i in range(8)]
    await settle(calls, 8)
    await asyncio.sleep(0.1)
    # When three jobs arrive in one batch
    jobs = await enqueue(server, 3)
    deadline = time.monotonic() + 5
    while sum(t.done() for t in waiting) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # Then exactly three claims returned, one job each, and five still wait
    got = sorted(t.result()[0]["id"] for t in waiting if t.done())
    assert got == sorted(j["id"] for j in jobs)
    assert sum(t.done() for t in waiting) == 3
    # (each full claim passes a wake-up on, so at most one extra empty claim per job)
    assert 8 + 3 <= len(calls) <= 8 + 6
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_given_the_woken_claim_fails_then_the_wake_up_passes_on_and_the_job_is_claimed_at_once(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    waiting = [asyncio.ensure_future(claim(server, f"w{i}")) for i in range(3)]
    await asyncio.sleep(0.3)
    # Given the next store claim fails (the woken long poll answers 503)
    calls = count_claims(server, monkeypatch, fail_first=1)
    started = time.monotonic()
    jobs = await enqueue(server, 2)   # two jobs: two of the three claims are woken
    # Then the third waiting claim is woken in place of the one that failed, and every job is
    # taken well before the 5 s backstop
    taken: set[str] = set()
    while len(taken) < 2 and time.monotonic() - started < 4:
        await asyncio.sleep(0.01)
        taken = {j["id"] for task in waiting if task.done() and task.exception() is None for j in task.result()}
    assert taken == {job["id"] for job in jobs}
    assert time.monotonic() - started < 2
    assert len(calls) >= 3
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_given_a_client_that_leaves_while_its_claim_commits_then_the_jobs_are_handed_back_unrun(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    [job] = await enqueue(server)
    # Given a store whose claims take a moment (a busy database)
    original = server.store.claim
    committed = asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.5)
        try:
            return await original(*args, **kwargs)
        finally:
            committed.set()

    monkeypatch.setattr(server.store, "claim", slow)
    # When the worker gives up on its claim (it was stopped) before the claim commits
    with pytest.raises(asyncio.TimeoutError):
        await server.session.post(server.url + "api/v1/claim", json={"queue": "wq", "worker": "gone", "limit": 5},
                                  timeout=aiohttp.ClientTimeout(total=0.1))
    # Then, once the claim has committed, the job it leased is handed back at once, unrun
    # and its attempt not counted
    await asyncio.wait_for(committed.wait(), 5)
    deadline = time.monotonic() + 5
    while True:
        status, doc = await server.call("GET", f"/api/v1/jobs/{job['id']}")
        if doc["status"] == "pending" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (doc["status"], doc["attempts"], doc["lease"]) == ("pending", 0, None)
    assert doc["worker"] in (None, "gone")
    # And another worker can claim it now, not a lease later
    monkeypatch.setattr(server.store, "claim", original)
    assert [j["id"] for j in await claim(server, "next", wait=0)] == [job["id"]]


# ---------------------------------------------------------------------------- push dispatch

def groups_writes(server: Server) -> bool:
    """SQLite and PostgreSQL commit operations submitted together in one transaction."""
    return type(server.store).__name__ in ("SQLiteStore", "PostgresStore")


@pytest.mark.parametrize("limit", [5, 144])   # 144: a worker's concurrency 16 plus prefetch 128
async def test_given_a_parked_claim_when_a_job_arrives_then_the_enqueue_hands_it_over_in_the_same_write(
        server: Server, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    calls = count_claims(server, monkeypatch)
    parked = asyncio.ensure_future(claim(server, "idle", limit=limit))
    await settle(calls, 1)
    await asyncio.sleep(0.1)
    since = await server.store.last_seq()
    # When one job is enqueued
    [job] = await enqueue(server)
    # Then the parked claim answers with it, after one more store claim (the enqueue's own)
    assert [j["id"] for j in await asyncio.wait_for(parked, 5)] == [job["id"]]
    assert len(calls) == 2
    events = [e for e in await server.store.events_since(since, 100) if e["job_id"] == job["id"]]
    assert [e["kind"] for e in events] == ["job.created", "job.started"]
    assert events[1]["new_val"]["worker"] == "idle"
    if groups_writes(server):
        # one transaction: consecutive events stamped with the same commit time
        assert events[1]["seq"] == events[0]["seq"] + 1
        assert events[0]["ts"] == events[1]["ts"]


async def test_given_a_parked_claim_on_a_paused_queue_when_a_job_arrives_then_it_waits_until_resume(
        server: Server) -> None:
    status, _ = await server.call("POST", "/api/v1/queues/wq/pause")
    assert status == 200
    parked = asyncio.ensure_future(claim(server, "idle", limit=5, wait=10))
    await asyncio.sleep(0.2)
    # When a job arrives while the queue is paused
    [job] = await enqueue(server)
    await asyncio.sleep(0.3)
    # Then the claim is not answered (its handed-over claim found nothing) and the job waits
    assert not parked.done()
    status, doc = await server.call("GET", f"/api/v1/jobs/{job['id']}")
    assert doc["status"] == "pending"
    # And once the queue resumes, the same long poll takes it
    status, _ = await server.call("POST", "/api/v1/queues/wq/resume")
    assert status == 200
    assert [j["id"] for j in await asyncio.wait_for(parked, 5)] == [job["id"]]


async def test_given_parked_claims_when_a_batch_arrives_then_each_takes_its_share_at_once(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_claims(server, monkeypatch)
    waiting = [asyncio.ensure_future(claim(server, f"w{i}", limit=2)) for i in range(4)]
    await settle(calls, 4)
    await asyncio.sleep(0.1)
    # When five jobs arrive in one batch
    jobs = await enqueue(server, 5)
    deadline = time.monotonic() + 5
    while sum(t.done() for t in waiting) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    # Then three claims served them (2 + 2 + 1), each job once, the fourth still waits, and
    # only the three handed-over store claims were made
    served = [t.result() for t in waiting if t.done()]
    assert sorted(j["id"] for got in served for j in got) == sorted(j["id"] for j in jobs)
    assert sorted(len(got) for got in served) == [1, 2, 2]
    assert len(calls) == 4 + 3
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_given_a_parked_claim_when_a_job_arrives_then_the_worker_is_answered_before_the_producer(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tqueues.dispatcher import views

    answered: list[str] = []
    original = views.json_response

    def recorded(body: Any, *args: Any, **kwargs: Any) -> Any:
        answered.append("claim" if isinstance(body, dict) and "lease_seconds" in body else "enqueue")
        return original(body, *args, **kwargs)

    calls = count_claims(server, monkeypatch)
    parked = asyncio.ensure_future(claim(server, "idle", limit=5))
    await settle(calls, 1)
    await asyncio.sleep(0.1)
    monkeypatch.setattr(views, "json_response", recorded)
    # When one job is enqueued while the claim is parked
    [job] = await enqueue(server)
    assert [j["id"] for j in await asyncio.wait_for(parked, 5)] == [job["id"]]
    # Then the claim that was handed the job answers its worker first: the job starts sooner
    if groups_writes(server):
        assert answered == ["claim", "enqueue"]
    else:
        assert sorted(answered) == ["claim", "enqueue"]
