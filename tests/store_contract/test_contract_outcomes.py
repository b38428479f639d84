"""Store contract: complete (finished, failed, retried), fencing and requeue_expired."""

from __future__ import annotations

import asyncio

import pytest

from tqueues import models
from tqueues.errors import InvalidRequest
from tqueues.store import Outcome, Store

from store_contract.contract_helpers import SHORT_LEASE, fail, finish, is_stale, kinds, put, spec, take, wait_expired

# --------------------------------------------------------------------------- finished


async def test_given_a_started_job_when_completed_finished_then_result_is_stored_and_lease_cleared(store: Store) -> None:
    # Given a started job
    job = await put(store)
    claimed = await take(store, worker="w1")
    before = models.now()

    # When its worker reports it finished with a result
    [item] = await store.complete([Outcome(job["id"], claimed["lease"], models.FINISHED,
                                           result={"sum": 3, "items": [1, 2]})])
    after = models.now()

    # Then the answer is ok with the new job, which is finished with the result and no lease
    assert (item["id"], item["ok"], item["status"]) == (job["id"], True, models.FINISHED)
    done = await store.get(job["id"])
    assert item["job"] == done
    assert (done["status"], done["result"], done["error"]) == (models.FINISHED, {"sum": 3, "items": [1, 2]}, None)
    assert (done["lease"], done["lease_expires"]) == (None, None)
    assert before <= done["finished_at"] <= after and done["attempts"] == 1
    # ... its execution ended finished, and job.finished was emitted
    [execution] = await store.executions(job["id"])
    assert execution["status"] == models.EXEC_FINISHED and before <= execution["finished_at"] <= after
    assert await kinds(store, job["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_FINISHED]
    # ... and nothing is left to claim
    assert await store.claim(["default"], "w2", 10) == []


async def test_given_a_finished_job_when_completed_again_then_stale_lease_and_nothing_changes(store: Store) -> None:
    # Given a job finished with a result
    await put(store)
    job = await take(store)
    done = await finish(store, job, result="first")

    # When the same lease completes it again (finished or failed)
    items = await store.complete([Outcome(job["id"], job["lease"], models.FINISHED, result="second"),
                                  Outcome(job["id"], job["lease"], models.FAILED, error=models.error_doc("E", "m"))])

    # Then both get stale_lease and the first result stands
    assert all(is_stale(item, job["id"]) for item in items)
    assert await store.get(job["id"]) == done


async def test_given_a_batch_of_outcomes_when_one_is_stale_then_only_that_one_is_refused(store: Store) -> None:
    # Given two started jobs
    await store.enqueue([spec(args=[1]), spec(args=[2])])
    one, two = await store.claim(["default"], "w", 2)
    two_before = await store.get(two["id"])

    # When one call completes the first, the second with a wrong lease, and an unknown job
    items = await store.complete([
        Outcome(one["id"], one["lease"], models.FINISHED, result=1),
        Outcome(two["id"], "wrong-lease", models.FINISHED, result=2),
        Outcome("no-such-job", one["lease"], models.FINISHED),
    ])

    # Then one item per outcome, in order: ok, stale_lease, job_not_found
    assert [i["id"] for i in items] == [one["id"], two["id"], "no-such-job"]
    assert items[0]["ok"] is True and items[0]["job"]["result"] == 1
    assert is_stale(items[1], two["id"])
    assert items[2]["ok"] is False and items[2]["error"]["code"] == "job_not_found"
    # ... the first job finished, the second is untouched
    assert (await store.get(one["id"]))["status"] == models.FINISHED
    assert await store.get(two["id"]) == two_before


async def test_given_a_mixed_batch_when_completed_then_each_outcome_is_applied_in_its_order(store: Store) -> None:
    # Given four started jobs
    await store.enqueue([spec(args=[n], max_attempts=3) for n in range(4)])
    a, b, c, d = await store.claim(["default"], "w", 4)

    # When one call: finishes a; fails b (retry) then finishes b; finishes c twice; finishes d
    # with a wrong lease, then with its own
    items = await store.complete([
        Outcome(a["id"], a["lease"], models.FINISHED, result="a"),
        Outcome(b["id"], b["lease"], models.FAILED, error=models.error_doc("E", "b failed"), retry=True),
        Outcome(b["id"], b["lease"], models.FINISHED, result="b"),
        Outcome(c["id"], c["lease"], models.FINISHED, result="c1"),
        Outcome(c["id"], c["lease"], models.FINISHED, result="c2"),
        Outcome(d["id"], "wrong-lease", models.FINISHED, result="d1"),
        Outcome(d["id"], d["lease"], models.FINISHED, result="d2"),
    ])

    # Then every outcome is answered in order as if applied one after the other
    assert [i["id"] for i in items] == [a["id"], b["id"], b["id"], c["id"], c["id"], d["id"], d["id"]]
    assert items[0]["ok"] and items[0]["job"]["result"] == "a"
    assert items[1]["ok"] and items[1]["job"]["status"] == models.PENDING   # back for a retry
    assert is_stale(items[2], b["id"])                                       # its lease ended with the failure
    assert items[3]["ok"] and items[3]["job"]["result"] == "c1"
    assert is_stale(items[4], c["id"])
    assert is_stale(items[5], d["id"])
    assert items[6]["ok"] and items[6]["job"]["result"] == "d2"
    # ... the stored jobs agree with the answers, and each one's events tell the same story
    assert [(await store.get(j["id"]))["status"] for j in (a, b, c, d)] == [
        models.FINISHED, models.PENDING, models.FINISHED, models.FINISHED]
    assert (await store.get(c["id"]))["result"] == "c1"
    assert await kinds(store, b["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_RETRYING]
    assert await kinds(store, d["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_FINISHED]


async def test_given_hundreds_of_started_jobs_when_completed_in_one_call_then_all_finish_with_their_results(
        store: Store) -> None:
    # Given 600 started jobs (more than one statement's worth in any backend)
    await store.enqueue([spec(args=[n]) for n in range(600)])
    jobs = await store.claim(["default"], "w", 600)
    assert len(jobs) == 600

    # When one call reports every one finished with its own result
    items = await store.complete([Outcome(j["id"], j["lease"], models.FINISHED, result={"n": j["args"][0]})
                                  for j in jobs])

    # Then every answer is ok, in order, with the job's own result; so are the stored job and execution
    assert [i["id"] for i in items] == [j["id"] for j in jobs]
    assert all(i["ok"] and i["job"]["result"] == {"n": j["args"][0]} for i, j in zip(items, jobs))
    for job in (jobs[0], jobs[299], jobs[599]):
        stored = await store.get(job["id"])
        assert (stored["status"], stored["result"], stored["lease"]) == (models.FINISHED, {"n": job["args"][0]}, None)
        [execution] = await store.executions(job["id"])
        assert (execution["status"], execution["attempt"], execution["worker"]) == (models.EXEC_FINISHED, 1, "w")
        assert (execution["started_at"], execution["finished_at"]) == (job["started_at"], stored["finished_at"])
    assert await store.claim(["default"], "w", 10) == []


RESULTS = [[1, 2], [3, 4], 5, {"a": [6]}, None, "text", [], {}, [[7, 8], [9]], 1.5, True]


async def test_given_results_of_every_json_shape_when_completed_in_one_call_then_each_job_keeps_its_own(
        store: Store) -> None:
    # Given as many started jobs as results of different shapes (lists of equal length among them)
    await store.enqueue([spec(args=[n]) for n in range(len(RESULTS))])
    jobs = await store.claim(["default"], "w", len(RESULTS))

    # When one call reports them finished, each with its result
    items = await store.complete([Outcome(j["id"], j["lease"], models.FINISHED, result=RESULTS[j["args"][0]])
                                  for j in jobs])

    # Then every job stored exactly its own result
    assert all(i["ok"] for i in items)
    for job in jobs:
        assert (await store.get(job["id"]))["result"] == RESULTS[job["args"][0]]


async def test_given_finished_jobs_then_each_answer_and_finished_event_is_the_stored_document(store: Store) -> None:
    # Given started jobs of varied fields, one of them claimed as it was enqueued (adopted)
    await store.enqueue([spec(args=[n, "x" * n], kwargs={"k": n}, data={"d": [n]}, priority=n % 3, timeout=5.0)
                         for n in range(6)])
    jobs = await store.claim(["default"], "w", 6)
    _, adopted = await store.enqueue_and_claim(spec("other", args=["new"], secrets=["k"], kwargs={"k": "s"}), ["other"], "w2")
    [adopted] = adopted
    jobs.append(adopted)
    since = await store.last_seq()

    # When they are reported finished, with results of different shapes
    items = await store.complete([Outcome(j["id"], j["lease"], models.FINISHED, result=RESULTS[n])
                                  for n, j in enumerate(jobs)])

    # Then each answer's document is the job as stored, field for field, and so is its finished event
    events = {e["job_id"]: e["new_val"] for e in await store.events_since(since) if e["kind"] == models.EV_FINISHED}
    for n, (job, item) in enumerate(zip(jobs, items)):
        stored = await store.get(job["id"])
        assert item["ok"] and item["job"] == stored, (item, stored)
        assert events[job["id"]] == stored
        assert (stored["status"], stored["result"], stored["lease"], stored["lease_expires"]) == (
            models.FINISHED, RESULTS[n], None, None)
        assert (stored["attempts"], stored["worker"], stored["started_at"]) == (1, job["worker"], job["started_at"])


async def test_given_a_started_job_whose_data_changed_when_finished_then_its_document_has_the_new_data(
        store: Store) -> None:
    # Given a started job whose data its worker updated while it ran
    job = await put(store, data={"step": 0})
    claimed = await take(store)
    updated = await store.update_data(job["id"], {"step": 1}, lease=claimed["lease"])
    assert updated["data"] == {"step": 1}

    # When it is reported finished
    done = await finish(store, claimed, result=7)

    # Then the finished document, stored and answered, has the data as it was updated
    assert done["data"] == {"step": 1} and done["result"] == 7
    assert await store.get(job["id"]) == done


async def test_given_an_invalid_outcome_status_when_completing_then_invalid_request_and_nothing_changes(
        store: Store) -> None:
    # Given a started job
    await put(store)
    job = await take(store)

    # When an outcome has a status other than finished or failed
    with pytest.raises(InvalidRequest):
        await store.complete([Outcome(job["id"], job["lease"], models.FINISHED),
                              Outcome(job["id"], job["lease"], models.ABORTED)])

    # Then InvalidRequest was raised and not even the valid outcome was applied
    assert await store.get(job["id"]) == job


async def test_given_a_started_job_when_completed_without_a_lease_then_it_finishes_unfenced(store: Store) -> None:
    # Given a started job
    job = await put(store)
    claimed = await take(store)

    # When it is completed with lease=None (the unfenced TQueues DELETE /)
    [item] = await store.complete([Outcome(job["id"], None, models.FINISHED, result="forced")])

    # Then it finished, and the worker's lease is stale from now on
    assert item["ok"] is True
    done = await store.get(job["id"])
    assert (done["status"], done["result"], done["lease"]) == (models.FINISHED, "forced", None)
    [late] = await store.complete([Outcome(job["id"], claimed["lease"], models.FINISHED, result="late")])
    assert is_stale(late, job["id"])
    assert (await store.get(job["id"]))["result"] == "forced"


# --------------------------------------------------------------------------- failed


async def test_given_attempts_left_when_failed_with_retry_then_pending_again_after_backoff(store: Store) -> None:
    # Given a started job with a 10 s backoff and attempts left
    job = await put(store, max_attempts=3, backoff=10.0)
    claimed = await take(store, worker="w1")
    error = models.error_doc("ValueError", "bad value", "Traceback: line 1")
    before = models.now()

    # When its worker reports a failure that may be retried
    [item] = await store.complete([Outcome(job["id"], claimed["lease"], models.FAILED, error=error, retry=True)])
    after = models.now()

    # Then it is pending again, due after the backoff (10 s +/- 50% jitter), error recorded, no lease
    retried = await store.get(job["id"])
    assert item["ok"] is True and item["status"] == models.PENDING and item["job"] == retried
    assert (retried["status"], retried["attempts"], retried["error"]) == (models.PENDING, 1, error)
    assert (retried["lease"], retried["lease_expires"], retried["worker"], retried["finished_at"]) == (None,) * 4
    assert before + 5.0 <= retried["run_at"] <= after + 15.0
    # ... its execution failed with that error, job.retrying was emitted, and it is not claimable yet
    [execution] = await store.executions(job["id"])
    assert (execution["status"], execution["error"]) == (models.EXEC_FAILED, error)
    assert await kinds(store, job["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_RETRYING]
    assert await store.claim(["default"], "w2", 10) == []
    assert await store.next_run_at(["default"]) == retried["run_at"]


async def test_given_attempts_left_when_failed_without_retry_then_the_job_ends_failed(store: Store) -> None:
    # Given a started job with attempts left
    job = await put(store, max_attempts=5)
    claimed = await take(store)
    error = models.error_doc("PermissionError", "denied", "tb")

    # When its worker reports a failure that must not be retried
    ended = await fail(store, claimed, retry=False, error=error)

    # Then the job ended failed with the error; nothing is claimable
    assert (ended["status"], ended["error"], ended["attempts"], ended["lease"]) == (models.FAILED, error, 1, None)
    assert ended["finished_at"] is not None
    assert await store.get(job["id"]) == ended
    assert await kinds(store, job["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_FAILED]
    assert await store.claim(["default"], "w", 10) == []


async def test_given_a_failure_without_error_when_completed_then_an_error_is_still_recorded(store: Store) -> None:
    # Given a started job that may not be retried
    job = await put(store, max_attempts=1)
    claimed = await take(store)

    # When its worker reports failed without an error document
    [item] = await store.complete([Outcome(job["id"], claimed["lease"], models.FAILED)])

    # Then the job and its execution still carry an error
    assert item["ok"] is True and item["job"]["status"] == models.FAILED
    assert item["job"]["error"]
    [execution] = await store.executions(job["id"])
    assert execution["error"]


async def test_given_every_attempt_fails_when_max_attempts_is_reached_then_the_job_ends_failed(store: Store) -> None:
    # Given a job allowed three attempts, retried at once (backoff 0)
    job = await put(store, max_attempts=3, backoff=0.0)

    # When three attempts each fail with their own traceback
    states = []
    for attempt in (1, 2, 3):
        claimed = await take(store, worker=f"w{attempt}")
        assert claimed["attempts"] == attempt
        states.append(await fail(store, claimed, error=models.error_doc("RuntimeError", f"try {attempt}", f"tb-{attempt}")))

    # Then the first two went back to pending and the third ended failed with the last error
    assert [s["status"] for s in states] == [models.PENDING, models.PENDING, models.FAILED]
    ended = await store.get(job["id"])
    assert (ended["status"], ended["attempts"], ended["error"]["traceback"]) == (models.FAILED, 3, "tb-3")
    # ... every execution kept its own error, and the events tell the story
    executions = await store.executions(job["id"])
    assert [(e["attempt"], e["worker"], e["status"], e["error"]["traceback"]) for e in executions] == [
        (1, "w1", models.EXEC_FAILED, "tb-1"), (2, "w2", models.EXEC_FAILED, "tb-2"), (3, "w3", models.EXEC_FAILED, "tb-3")]
    assert await kinds(store, job["id"]) == [
        models.EV_CREATED, models.EV_STARTED, models.EV_RETRYING, models.EV_STARTED, models.EV_RETRYING,
        models.EV_STARTED, models.EV_FAILED]
    assert await store.claim(["default"], "w", 10) == []


# --------------------------------------------------------------------------- expired leases


async def test_given_an_expired_lease_when_requeued_then_pending_again_with_the_attempt_counted(store: Store) -> None:
    # Given one job leased briefly and one leased for long
    await store.enqueue([spec(args=["short"]), spec(args=["long"])])
    short = await take(store, worker="w-dead", lease_seconds=SHORT_LEASE)
    long = await take(store, worker="w-alive", lease_seconds=60.0)
    await wait_expired()

    # When expired leases are requeued
    count = await store.requeue_expired()

    # Then only the expired job changed: pending, attempt kept, no lease, due now, a WorkerLost error
    assert count == 1
    requeued = await store.get(short["id"])
    assert (requeued["status"], requeued["attempts"], requeued["lease"], requeued["worker"]) == (
        models.PENDING, 1, None, None)
    assert requeued["run_at"] <= models.now()
    assert requeued["error"]["type"] == "WorkerLost"
    [execution] = await store.executions(short["id"])
    assert execution["status"] == models.EXEC_LOST and execution["finished_at"] is not None
    assert await kinds(store, short["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_REQUEUED]
    # ... the unexpired lease is untouched
    assert await store.get(long["id"]) == long
    # ... and the requeued job is claimable again, as attempt 2
    again = await take(store, worker="w-new")
    assert (again["id"], again["attempts"]) == (short["id"], 2)
    assert await store.requeue_expired() == 0


async def test_given_an_expired_lease_on_the_last_attempt_when_requeued_then_the_job_ends_failed(store: Store) -> None:
    # Given a job with one attempt, leased briefly
    job = await put(store, max_attempts=1)
    await take(store, lease_seconds=SHORT_LEASE)
    await wait_expired()

    # When expired leases are requeued
    assert await store.requeue_expired() == 1

    # Then the job ended failed with a WorkerLost error and its execution is lost
    ended = await store.get(job["id"])
    assert (ended["status"], ended["attempts"], ended["lease"]) == (models.FAILED, 1, None)
    assert ended["error"]["type"] == "WorkerLost" and ended["finished_at"] is not None
    [execution] = await store.executions(job["id"])
    assert execution["status"] == models.EXEC_LOST and execution["error"]["type"] == "WorkerLost"
    assert await kinds(store, job["id"]) == [models.EV_CREATED, models.EV_STARTED, models.EV_FAILED]
    assert await store.claim(["default"], "w", 10) == []


async def test_given_a_job_re_leased_after_expiry_when_the_old_worker_reports_then_it_changes_nothing(
        store: Store) -> None:
    # Given a job whose lease expired, was requeued and is now leased to another worker
    job = await put(store)
    old = await take(store, worker="w-old", lease_seconds=SHORT_LEASE)
    await wait_expired()
    assert await store.requeue_expired() == 1
    new = await take(store, worker="w-new", lease_seconds=60.0)
    assert new["id"] == job["id"] and new["lease"] != old["lease"]
    seq = await store.last_seq()

    # When the old worker completes, fails, heartbeats and releases with its stale lease
    [finished] = await store.complete([Outcome(job["id"], old["lease"], models.FINISHED, result="late")])
    [failed] = await store.complete([Outcome(job["id"], old["lease"], models.FAILED, error=models.error_doc("E", "m"))])
    [beat] = await store.heartbeat([(job["id"], old["lease"])], 60.0)
    [released] = await store.release([(job["id"], old["lease"])])

    # Then each is a stale_lease conflict; the job stays with the new holder, unchanged, and nothing was emitted
    assert all(is_stale(item, job["id"]) for item in (finished, failed, beat, released))
    assert await store.get(job["id"]) == new
    assert await store.last_seq() == seq
    # ... and the new holder can still complete it
    done = await finish(store, new, result="ok")
    assert (done["status"], done["result"], done["worker"]) == (models.FINISHED, "ok", "w-new")


async def test_given_expired_leases_when_requeued_concurrently_then_each_job_is_requeued_once(store: Store) -> None:
    # Given six jobs leased briefly
    await store.enqueue([spec(args=[i]) for i in range(6)])
    jobs = await store.claim(["default"], "w", 6, SHORT_LEASE)
    await wait_expired()

    # When five reapers run at once
    counts = await asyncio.gather(*(store.requeue_expired() for _ in range(5)))

    # Then together they changed each job once: one job.requeued each, attempts still 1
    assert sum(counts) == 6
    for job in jobs:
        assert (await kinds(store, job["id"])).count(models.EV_REQUEUED) == 1
        assert (await store.get(job["id"]))["attempts"] == 1
