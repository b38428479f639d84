"""Store contract: claim, heartbeat, release and next_run_at."""

from __future__ import annotations

import asyncio

import pytest

from tqueues import models
from tqueues.errors import InvalidRequest
from tqueues.store import Store

from store_contract.contract_helpers import SHORT_LEASE, fail, finish, is_stale, kinds, put, receive_until, spec, take

# --------------------------------------------------------------------------- order


async def test_given_jobs_of_several_priorities_when_claimed_then_high_priority_comes_first(store: Store) -> None:
    # Given jobs enqueued low, high, mid, high, negative
    low = await put(store, priority=0)
    high = await put(store, priority=10)
    mid = await put(store, priority=5)
    high2 = await put(store, priority=10)
    neg = await put(store, priority=-3)

    # When they are claimed one at a time
    order = [(await take(store))["id"] for _ in range(5)]

    # Then the highest priority comes first, equal priorities in enqueue order
    assert order == [high["id"], high2["id"], mid["id"], low["id"], neg["id"]]


async def test_given_equal_priorities_when_claimed_then_the_earliest_run_at_comes_first(store: Store) -> None:
    # Given jobs of one priority enqueued in the opposite order of their (past) run_at
    now = models.now()
    late = await put(store, run_at=now - 1)
    early = await put(store, run_at=now - 10)
    middle = await put(store, run_at=now - 5)

    # When they are claimed in one batch
    claimed = await store.claim(["default"], "w", limit=3)

    # Then they come by run_at, earliest first
    assert [j["id"] for j in claimed] == [early["id"], middle["id"], late["id"]]


async def test_given_equal_priority_and_run_at_when_claimed_then_enqueue_order_wins(store: Store) -> None:
    # Given jobs with the same priority and run_at, some enqueued one by one, then a batch
    run_at = models.now() - 1
    singles = [await put(store, run_at=run_at, args=[i]) for i in range(3)]
    batch = [job for job, _ in await store.enqueue([spec(run_at=run_at, args=[i]) for i in range(3, 8)])]

    # When they are claimed, some one by one and the rest in a batch
    first = [(await take(store))["id"] for _ in range(2)]
    rest = [j["id"] for j in await store.claim(["default"], "w", limit=10)]

    # Then every claim follows enqueue order (FIFO)
    assert first + rest == [j["id"] for j in singles + batch]


async def test_given_a_batch_claim_when_it_returns_then_jobs_come_in_claim_order(store: Store) -> None:
    # Given a mix of priorities and run_at values, enqueued in one batch
    now = models.now()
    jobs = [job for job, _ in await store.enqueue([
        spec(priority=1, run_at=now - 1, args=["p1-late"]),
        spec(priority=5, run_at=now - 1, args=["p5-a"]),
        spec(priority=1, run_at=now - 9, args=["p1-early"]),
        spec(priority=5, run_at=now - 1, args=["p5-b"]),
    ])]

    # When all are claimed at once
    claimed = await store.claim(["default"], "w", limit=10)

    # Then the list is ordered by priority, then run_at, then enqueue order
    assert [j["args"][0] for j in claimed] == ["p5-a", "p5-b", "p1-early", "p1-late"]
    assert {j["id"] for j in claimed} == {j["id"] for j in jobs}


# --------------------------------------------------------------------------- readiness


async def test_given_jobs_of_varied_fields_when_claimed_together_then_each_document_and_started_event_is_the_stored_row(
        store: Store) -> None:
    # Given ready jobs of varied fields, one of them retried after a failure (an error and an attempt behind it)
    retried = await put(store, args=["r"], max_attempts=3)
    first = await take(store)
    await fail(store, first)
    await store.enqueue([spec(args=[n, "x" * n], kwargs={"k": n}, data={"d": n}, priority=n % 2, timeout=float(n) or None,
                              secrets=["k"] if n == 3 else []) for n in range(5)])
    since = await store.last_seq()

    # When one claim takes them all
    jobs = await store.claim(["default"], "w-9", 10, 60.0)

    # Then each claimed document is the job as stored, and so is its started event
    assert len(jobs) == 6
    events = {e["job_id"]: e["new_val"] for e in await store.events_since(since) if e["kind"] == models.EV_STARTED}
    for job in jobs:
        stored = await store.get(job["id"])
        assert job == stored and events[job["id"]] == stored
        assert (job["status"], job["worker"]) == (models.STARTED, "w-9")
    again = next(j for j in jobs if j["id"] == retried["id"])
    assert again["attempts"] == 2 and again["error"] is not None


async def test_given_a_delayed_job_when_claimed_early_then_nothing_until_it_is_due(store: Store) -> None:
    # Given a job due shortly
    run_at = models.now() + 0.2
    job = await put(store, run_at=run_at)

    # When claimed before it is due, Then nothing comes back and it stays pending
    assert await store.claim(["default"], "w", 10) == []
    assert (await store.get(job["id"]))["status"] == models.PENDING
    assert await store.next_run_at(["default"]) == run_at

    # When claimed once it is due, Then it is leased
    await asyncio.sleep(max(0.0, run_at - models.now()) + 0.02)
    [claimed] = await store.claim(["default"], "w", 10)
    assert claimed["id"] == job["id"]
    assert claimed["started_at"] >= run_at


async def test_given_a_future_high_priority_job_when_claiming_then_a_ready_low_priority_job_comes(store: Store) -> None:
    # Given a high-priority job due in an hour and a ready low-priority one
    await put(store, priority=100, run_at=models.now() + 3600)
    ready = await put(store, priority=-100)

    # When claiming everything available
    claimed = await store.claim(["default"], "w", 10)

    # Then only the ready job is leased
    assert [j["id"] for j in claimed] == [ready["id"]]


async def test_given_more_jobs_than_the_limit_when_claimed_then_at_most_limit_come_each_time(store: Store) -> None:
    # Given five ready jobs
    await store.enqueue([spec(args=[i]) for i in range(5)])

    # When claimed with limit 3, three times
    sizes = [len(await store.claim(["default"], "w", limit=3)) for _ in range(3)]

    # Then 3, then the 2 left, then none
    assert sizes == [3, 2, 0]
    assert len(await store.list_jobs(status=models.STARTED)) == 5


async def test_given_jobs_in_several_queues_when_claiming_some_queues_then_only_those_are_leased(store: Store) -> None:
    # Given jobs in queues a, b and c (c holding the most urgent one)
    a = await put(store, "a", priority=1)
    b = await put(store, "b", priority=2)
    c = await put(store, "c", priority=9)

    # When claiming from a and b (b named twice)
    claimed = await store.claim(["a", "b", "b"], "w", limit=10)

    # Then only their jobs are leased, by priority across the queues; c stays pending
    assert [j["id"] for j in claimed] == [b["id"], a["id"]]
    assert (await store.get(c["id"]))["status"] == models.PENDING
    assert await store.claim(["nothing-here"], "w", 10) == []


async def test_given_a_paused_queue_when_claiming_then_nothing_comes_until_it_is_resumed(store: Store) -> None:
    # Given a paused queue with a job, and an unpaused queue with a job
    job = await put(store, "paused")
    other = await put(store, "open")
    await store.set_queue("paused", paused=True)
    # ... and a job enqueued while paused (enqueue must not unpause it)
    late = await put(store, "paused")

    # When claiming from the paused queue (alone and with the other), Then only the other job comes
    assert await store.claim(["paused"], "w", 10) == []
    assert [j["id"] for j in await store.claim(["paused", "open"], "w", 10)] == [other["id"]]
    assert (await store.get(job["id"]))["status"] == models.PENDING

    # When the queue is resumed, Then its jobs are claimable again
    await store.set_queue("paused", paused=False)
    assert [j["id"] for j in await store.claim(["paused"], "w", 10)] == [job["id"], late["id"]]


# --------------------------------------------------------------------------- leasing


async def test_given_a_ready_job_when_claimed_then_it_is_started_with_a_fresh_lease(store: Store) -> None:
    # Given a ready job
    job = await put(store, timeout=3.0)
    before = models.now()

    # When a worker claims it for 30 seconds
    claimed = await take(store, worker="w-7", lease_seconds=30.0)
    after = models.now()

    # Then it is started, leased to that worker until about now + 30, one attempt counted
    assert claimed["id"] == job["id"]
    assert (claimed["status"], claimed["worker"], claimed["attempts"]) == (models.STARTED, "w-7", 1)
    assert isinstance(claimed["lease"], str) and claimed["lease"]
    assert before + 30.0 <= claimed["lease_expires"] <= after + 30.0
    assert before <= claimed["started_at"] <= after
    assert (claimed["args"], claimed["timeout"], claimed["created_at"]) == (job["args"], 3.0, job["created_at"])
    assert await store.get(job["id"]) == claimed
    # ... an execution opened, and job.started was emitted
    [execution] = await store.executions(job["id"])
    assert (execution["job_id"], execution["attempt"], execution["worker"], execution["status"]) == (
        job["id"], 1, "w-7", models.EXEC_STARTED)
    assert execution["finished_at"] is None and execution["error"] is None
    assert await kinds(store, job["id"]) == [models.EV_CREATED, models.EV_STARTED]


async def test_given_many_jobs_when_twenty_workers_claim_concurrently_then_no_job_is_leased_twice(store: Store) -> None:
    # Given 200 ready jobs
    await store.enqueue([spec(args=[i]) for i in range(200)])

    # When 20 workers claim up to 15 jobs each, all at once
    results = await asyncio.gather(*(store.claim(["default"], f"w{n}", limit=15) for n in range(20)))

    # Then every job was leased exactly once, each to the worker whose claim returned it
    ids = [job["id"] for jobs in results for job in jobs]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert all(len(jobs) <= 15 for jobs in results)
    for n, jobs in enumerate(results):
        for job in jobs:
            assert job["worker"] == f"w{n}" and job["attempts"] == 1
    leases = {(job["id"], job["lease"]) for jobs in results for job in jobs}
    stored = await store.list_jobs(limit=1000)
    assert {(j["id"], j["lease"]) for j in stored} == leases
    assert all(j["status"] == models.STARTED for j in stored)
    assert await store.claim(["default"], "late", 10) == []


async def test_given_a_retried_job_when_claimed_again_then_attempts_and_executions_grow(store: Store) -> None:
    # Given a job claimed by w1 that failed once (backoff 0: due again at once)
    job = await put(store, max_attempts=3)
    first = await take(store, worker="w1")
    await fail(store, first, error=models.error_doc("KeyError", "k", "tb-1"))

    # When w2 claims it again
    second = await take(store, worker="w2")

    # Then attempts is 2, with a new lease and one execution row per attempt
    assert second["id"] == job["id"] and second["attempts"] == 2
    assert second["lease"] != first["lease"]
    executions = await store.executions(job["id"])
    assert [(e["attempt"], e["worker"], e["status"]) for e in executions] == [
        (1, "w1", models.EXEC_FAILED), (2, "w2", models.EXEC_STARTED)]
    assert executions[0]["error"]["traceback"] == "tb-1" and executions[1]["error"] is None


@pytest.mark.parametrize("args, field", [
    (dict(queues=[]), "queue"),
    (dict(limit=0), "limit"),
    (dict(limit=1001), "limit"),
    (dict(lease_seconds=0), "lease"),
    (dict(lease_seconds=-1), "lease"),
    (dict(lease_seconds=24 * 3600 + 1), "lease"),
])
async def test_given_invalid_claim_arguments_when_claiming_then_invalid_request_and_nothing_leased(
        store: Store, args: dict, field: str) -> None:
    # Given a ready job
    job = await put(store)
    call = {"queues": ["default"], "worker": "w", "limit": 1, "lease_seconds": 30.0, **args}

    # When claiming with an invalid argument, Then InvalidRequest names it and nothing is leased
    with pytest.raises(InvalidRequest) as caught:
        await store.claim(call["queues"], call["worker"], call["limit"], call["lease_seconds"])
    assert caught.value.details.get("field") == field
    assert (await store.get(job["id"]))["status"] == models.PENDING


# --------------------------------------------------------------------------- heartbeat


async def test_given_a_lease_when_heartbeat_then_lease_expires_moves_forward(store: Store) -> None:
    # Given a job claimed with a short lease
    await put(store)
    job = await take(store, lease_seconds=SHORT_LEASE)

    # When its worker heartbeats for 60 seconds
    before = models.now()
    [item] = await store.heartbeat([(job["id"], job["lease"])], 60.0)
    after = models.now()

    # Then the lease is extended to about now + 60, same token, and survives requeue_expired
    assert item["id"] == job["id"] and item["ok"] is True
    assert before + 60.0 <= item["lease_expires"] <= after + 60.0
    stored = await store.get(job["id"])
    assert stored["lease_expires"] == item["lease_expires"]
    assert (stored["status"], stored["lease"]) == (models.STARTED, job["lease"])
    await asyncio.sleep(SHORT_LEASE + 0.05)
    assert await store.requeue_expired() == 0
    assert (await store.get(job["id"]))["lease"] == job["lease"]


async def test_given_stale_and_unknown_leases_when_heartbeat_then_each_gets_a_conflict_and_nothing_changes(
        store: Store) -> None:
    # Given two started jobs
    await store.enqueue([spec(), spec()])
    good, other = await store.claim(["default"], "w", 2, 30.0)
    other_before = await store.get(other["id"])

    # When one heartbeat carries a good lease, a wrong token and an unknown job
    items = await store.heartbeat([(good["id"], good["lease"]), (other["id"], "stale-token"),
                                   ("no-such-job", good["lease"])], 90.0)

    # Then there is one item per lease, in order: ok, stale_lease, stale_lease
    assert [i["id"] for i in items] == [good["id"], other["id"], "no-such-job"]
    assert items[0]["ok"] is True
    assert is_stale(items[1], other["id"]) and is_stale(items[2], "no-such-job")
    # ... and the job with the stale token kept its lease and expiry
    assert await store.get(other["id"]) == other_before


async def test_given_a_registered_worker_when_it_heartbeats_then_it_is_marked_seen(store: Store) -> None:
    # Given a registered worker holding a job
    first = await store.register_worker({"id": "w1"})
    await put(store)
    job = await take(store, worker="w1")
    await asyncio.sleep(0.01)

    # When it heartbeats naming itself
    await store.heartbeat([(job["id"], job["lease"])], 30.0, worker="w1")

    # Then its last_seen moved forward
    [worker] = await store.workers()
    assert worker["id"] == "w1" and worker["last_seen"] > first["last_seen"]


# --------------------------------------------------------------------------- release


async def test_given_a_leased_job_when_released_then_it_is_pending_without_counting_the_attempt(store: Store) -> None:
    # Given a claimed job
    job = await put(store, max_attempts=1)
    claimed = await take(store, worker="w1")

    # When its worker releases it unrun
    [item] = await store.release([(claimed["id"], claimed["lease"])])

    # Then it is pending again with no lease, the attempt not counted, no execution kept
    assert item["ok"] is True and item["status"] == models.PENDING
    released = await store.get(job["id"])
    assert item["job"] == released
    assert (released["status"], released["attempts"], released["lease"], released["lease_expires"], released["worker"]) == (
        models.PENDING, 0, None, None, None)
    assert await store.executions(job["id"]) == []
    assert await kinds(store, job["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_RELEASED]
    # ... and with max_attempts=1 it can still run: the next claim is attempt 1
    again = await take(store, worker="w2")
    assert again["id"] == job["id"] and again["attempts"] == 1
    assert [(e["attempt"], e["worker"]) for e in await store.executions(job["id"])] == [(1, "w2")]


async def test_given_a_stale_lease_when_released_then_conflict_and_nothing_changes(store: Store) -> None:
    # Given a claimed job
    await put(store)
    job = await take(store)
    seq = await store.last_seq()

    # When it is released with a wrong token (and an unknown job)
    items = await store.release([(job["id"], "wrong"), ("no-such-job", job["lease"])])

    # Then each gets a stale_lease conflict; the job is still leased and nothing was emitted
    assert is_stale(items[0], job["id"]) and is_stale(items[1], "no-such-job")
    assert await store.get(job["id"]) == job
    assert await store.last_seq() == seq


# --------------------------------------------------------------------------- next_run_at


async def test_given_pending_jobs_when_asking_next_run_at_then_the_earliest_pending_run_at_comes(store: Store) -> None:
    # Given no jobs, Then there is no next run
    assert await store.next_run_at(["a", "b"]) is None

    # Given pending jobs in a and b, an earlier one in c, and a started one in a
    now = models.now()
    await put(store, "a", run_at=now + 50)
    await put(store, "b", run_at=now + 20)
    await put(store, "c", run_at=now + 5)
    await put(store, "a", run_at=now - 100, priority=1)
    await take(store, "a")

    # When asking for a and b, Then the earliest pending run_at among them comes back
    assert await store.next_run_at(["a", "b"]) == now + 20
    assert await store.next_run_at(["a"]) == now + 50
    assert await store.next_run_at(["c", "a"]) == now + 5
    assert await store.next_run_at(["empty"]) is None

    # When b is paused, Then its pending job still counts (pausing changes claims, not the data)
    await store.set_queue("b", paused=True)
    assert await store.next_run_at(["a", "b"]) == now + 20


async def test_given_a_job_due_when_created_then_next_run_at_waits_only_for_delayed_ones(store: Store) -> None:
    # Given a job due at once and a delayed one in the same queue
    now = models.now()
    await put(store, "a", backoff=5)
    await put(store, "a", run_at=now + 30)
    # Then next_run_at names the delayed one: SQLite and PostgreSQL index only delayed jobs
    # (another store may name the due one, which is earlier)
    got = await store.next_run_at(["a"])
    if type(store).__name__ in ("SQLiteStore", "PostgresStore"):
        assert got == now + 30
    else:
        assert got is not None and got <= now + 30
    # And a job put back with a backoff counts as delayed
    retried = await fail(store, await take(store, "a"))
    assert retried["status"] == models.PENDING and retried["run_at"] > now + 1
    assert await store.next_run_at(["a"]) == retried["run_at"]


# --------------------------------------------------------------------------- push dispatch


async def test_given_an_idle_claim_when_a_job_comes_then_enqueue_and_claim_hands_it_over_leased(store: Store) -> None:
    # Given a queue with nothing ready (a worker's claim is waiting on it), and a subscriber
    await put(store, "q", args=["earlier"])
    await finish(store, await take(store, "q"))
    sub = store.subscribe()

    # When a job comes in for that claim
    before = models.now()
    doc, claimed = await store.enqueue_and_claim(spec("q", args=[7], kwargs={"x": 1}, data={"d": True}),
                                                 ["other", "q"], "w9", 30.0, "tok-")

    # Then the producer's answer is the job as enqueued, and the claim has it leased
    assert doc["status"] == models.PENDING and doc["attempts"] == 0 and doc["lease"] is None
    [job] = claimed
    assert job["id"] == doc["id"] and job["args"] == [7] and job["kwargs"] == {"x": 1} and job["data"] == {"d": True}
    assert job["status"] == models.STARTED and job["attempts"] == 1 and job["worker"] == "w9"
    assert job["lease"].startswith("tok-") and before + 29 < job["lease_expires"] <= models.now() + 30
    # ... as the store has it: the same document, one execution open, events created then started
    assert await store.get(doc["id"]) == job
    [execution] = await store.executions(doc["id"])
    assert (execution["attempt"], execution["worker"], execution["status"]) == (1, "w9", models.STARTED)
    events = await store.events_since(0, job_id=doc["id"])
    assert [e["kind"] for e in events] == [models.EV_CREATED, models.EV_STARTED]
    assert events[1]["seq"] == events[0]["seq"] + 1
    assert events[0]["new_val"]["status"] == models.PENDING and events[1]["new_val"] == job
    # ... and published live in that order, as stored
    got = await receive_until(sub, lambda e: e["kind"] == models.EV_STARTED)
    assert got == events
    sub.close()

    # ... and it completes like any claimed job, fenced by its lease
    assert (await finish(store, job, result=7))["result"] == 7
    assert await store.claim(["q"], "w", 10) == []


async def test_given_a_paused_queue_when_enqueue_and_claim_then_the_job_waits(store: Store) -> None:
    # Given a paused queue
    await store.set_queue("q", paused=True)

    # When a job comes in for a claim on it
    doc, claimed = await store.enqueue_and_claim(spec("q"), ["q"], "w", 30.0)

    # Then nothing is handed over: the job is pending until the queue is resumed
    assert claimed == []
    assert (await store.get(doc["id"]))["status"] == models.PENDING
    assert [e["kind"] for e in await store.events_since(0, job_id=doc["id"])] == [models.EV_CREATED]
    await store.set_queue("q", paused=False)
    assert [j["id"] for j in await store.claim(["q"], "w", 5)] == [doc["id"]]


async def test_given_a_ready_job_ranking_first_when_enqueue_and_claim_then_the_new_job_does_not_jump_it(
        store: Store) -> None:
    # Given a ready job of the claim's other queue with a higher priority, and one of equal priority
    high = await put(store, "a", priority=5)
    equal = await put(store, "b", priority=0)

    # When a job of priority 0 comes in for a claim on both queues
    doc, claimed = await store.enqueue_and_claim(spec("b", priority=0), ["a", "b"], "w", 30.0)

    # Then the claim gets its first pick, the high-priority job, or nothing (it then looks again);
    # the new job is not leased ahead of either
    assert [j["id"] for j in claimed] in ([high["id"]], [])
    assert (await store.get(doc["id"]))["status"] == models.PENDING
    rest = [j["id"] for j in await store.claim(["a", "b"], "w", 5)]
    assert rest == [j for j in (high["id"], equal["id"], doc["id"]) if j not in {c["id"] for c in claimed}]


async def test_given_a_lower_priority_ready_job_when_enqueue_and_claim_then_the_new_job_goes_first(
        store: Store) -> None:
    # Given a ready job of lower priority (it stays ready: say the claim was full when it came)
    low = await put(store, "q", priority=-1)

    # When a job of priority 3 comes in for a claim
    doc, claimed = await store.enqueue_and_claim(spec("q", priority=3), ["q"], "w", 30.0)

    # Then the new job is the claim's first pick, handed over; the other still waits
    assert [j["id"] for j in claimed] == [doc["id"]]
    assert (await store.get(low["id"]))["status"] == models.PENDING


async def test_given_a_keyed_or_foreign_job_when_enqueue_and_claim_then_it_is_refused(store: Store) -> None:
    # Given jobs enqueue_and_claim is not for: one with an idempotency key, one of another queue
    for job, queues in ((spec("q", key="k1"), ["q"]), (spec("x"), ["q"])):
        # When offered, then it refuses, and nothing is written
        with pytest.raises(ValueError):
            await store.enqueue_and_claim(job, queues, "w", 30.0)
    assert await store.events_since(0) == []


async def test_given_other_writes_at_once_when_enqueue_and_claim_then_every_event_keeps_its_order(
        store: Store) -> None:
    # Given a subscriber, and a job to claim on another queue
    other = await put(store, "o")
    sub = store.subscribe()
    first = (await store.events_since(0))[-1]["seq"]

    # When an enqueue, a hand-over and a claim are written at the same moment (one group, where
    # the store groups writes)
    (enqueued, handed, taken) = await asyncio.gather(
        store.enqueue([spec("o", args=[i]) for i in range(3)]),
        store.enqueue_and_claim(spec("q"), ["q"], "w", 30.0),
        store.claim(["o"], "w", 1))

    # Then each did its part
    doc, [job] = handed
    assert job["id"] == doc["id"] and [j["id"] for j in taken] == [other["id"]] and len(enqueued) == 3
    # ... and the stored events follow one another with no gap, and came live in that order
    stored = await store.events_since(first)
    assert [e["seq"] for e in stored] == list(range(first + 1, first + 1 + 3 + 2 + 1))
    got = await receive_until(sub, lambda e: e["seq"] == stored[-1]["seq"])
    assert got == stored
    sub.close()


async def test_given_a_new_queue_when_enqueue_and_claim_then_the_queue_is_created_and_the_job_handed_over(
        store: Store) -> None:
    # When the first job of a queue comes in for a claim on it, then a second
    handed = [await store.enqueue_and_claim(spec("fresh", args=[i]), ["fresh"], "w", 30.0) for i in range(2)]

    # Then both are handed over, and the queue exists like any other
    assert [[j["args"] for j in claimed] for _, claimed in handed] == [[[0]], [[1]]]
    [queue] = [q for q in await store.queues() if q["name"] == "fresh"]
    assert queue["paused"] is False
