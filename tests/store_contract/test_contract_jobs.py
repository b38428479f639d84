"""Store contract: enqueue, get, list_jobs, update_data and abort."""

from __future__ import annotations

import asyncio

import pytest

from tqueues import models
from tqueues.errors import Conflict, InvalidRequest, JobNotFound, LeaseConflict
from tqueues.store import Outcome, Store
from tqueues.store.base import JOB_KEYS

from store_contract.contract_helpers import fail, finish, kinds, put, spec, take

# --------------------------------------------------------------------------- enqueue


async def test_given_a_full_spec_when_enqueued_then_every_field_is_stored_and_returned(store: Store) -> None:
    # Given a job spec using every field
    run_at = models.now() - 5.0
    new = spec("emails", "app.mail:send", args=[1, "two", {"three": [3]}], kwargs={"to": "a@b.c", "n": None},
               priority=7, run_at=run_at, max_attempts=5, timeout=12.5, key="mail-1", backoff=0.5,
               data={"progress": 0, "tags": ["x"]})
    before = models.now()

    # When it is enqueued
    [(job, created)] = await store.enqueue([new])
    after = models.now()

    # Then the returned document holds exactly the contract keys with the given values
    assert created is True
    assert set(job) == set(JOB_KEYS)
    assert isinstance(job["id"], str) and job["id"]
    assert (job["queue"], job["method"], job["args"], job["kwargs"]) == (
        "emails", "app.mail:send", [1, "two", {"three": [3]}], {"to": "a@b.c", "n": None})
    assert (job["status"], job["priority"], job["run_at"], job["attempts"], job["max_attempts"]) == (
        models.PENDING, 7, run_at, 0, 5)
    assert (job["timeout"], job["backoff"], job["key"], job["data"]) == (12.5, 0.5, "mail-1", {"progress": 0, "tags": ["x"]})
    assert (job["lease"], job["lease_expires"], job["worker"], job["result"], job["error"]) == (None,) * 5
    assert before <= job["created_at"] <= after
    assert job["created_at"] <= job["updated_at"] <= after
    assert job["started_at"] is None and job["finished_at"] is None
    # ... and get returns the same document, JSON fields decoded
    assert await store.get(job["id"]) == job


async def test_given_a_minimal_spec_when_enqueued_then_defaults_apply_and_run_at_is_now(store: Store) -> None:
    # Given a spec with only queue and method
    before = models.now()

    # When it is enqueued
    [(job, _)] = await store.enqueue([models.NewJob(queue="q", method="m:f")])
    after = models.now()

    # Then it is ready now, with the documented defaults
    assert before <= job["run_at"] <= after
    assert (job["args"], job["kwargs"], job["data"], job["priority"], job["key"], job["timeout"]) == ([], {}, {}, 0, None, None)
    assert (job["max_attempts"], job["backoff"]) == (models.DEFAULT_MAX_ATTEMPTS, models.DEFAULT_BACKOFF)
    assert await store.get(job["id"]) == job


async def test_given_a_batch_when_enqueued_then_each_job_is_returned_in_order_with_a_distinct_id(store: Store) -> None:
    # Given a batch of jobs over two queues
    batch = [spec("a", args=[i]) for i in range(5)] + [spec("b", args=[99])]

    # When it is enqueued
    out = await store.enqueue(batch)

    # Then one (job, created) per input comes back, in input order, each stored
    assert [job["args"] for job, _ in out] == [[0], [1], [2], [3], [4], [99]]
    assert all(created for _, created in out)
    assert len({job["id"] for job, _ in out}) == 6
    for job, _ in out:
        assert await store.get(job["id"]) == job
    assert {q["name"] for q in await store.queues()} == {"a", "b"}


async def test_given_a_batch_of_jobs_unlike_each_other_when_enqueued_then_each_is_stored_as_its_own(store: Store) -> None:
    # Given one batch in which every field differs from job to job, empty and null values included
    now = models.now()
    batch = [
        spec("a", "m.one:f"),
        spec("b", "m.two:g", args=[1, "two", {"three": [3.5, None]}], kwargs={"k": {"n": [1]}, "token": "s"},
             priority=-3, run_at=now + 3600, max_attempts=9, timeout=0.25, key="k-1", backoff=7.5,
             data={"progress": 0.5}, secrets=["token"]),
        spec("a", "m.three:h", args=[[]], kwargs={"e": {}}, priority=12, timeout=None, key="k-2", data={"d": []}),
    ]

    # When it is enqueued
    out = await store.enqueue(batch)

    # Then each stored job is exactly the document returned for it, with its own values
    assert all(created for _, created in out)
    for (job, _), given in zip(out, batch):
        assert await store.get(job["id"]) == job
        assert (job["queue"], job["method"], job["args"], job["kwargs"], job["priority"], job["max_attempts"],
                job["timeout"], job["key"], job["backoff"], job["data"], job["status"], job["attempts"]) == (
            given.queue, given.method, given.args, given.kwargs, given.priority, given.max_attempts,
            given.timeout, given.key, given.backoff, given.data, models.PENDING, 0)
    assert out[1][0]["run_at"] == pytest.approx(now + 3600) and out[1][0]["secrets"] == ["token"]
    assert out[0][0]["secrets"] is None and out[0][0]["lease"] is None and out[0][0]["finished_at"] is None


async def test_given_an_empty_batch_when_enqueued_then_nothing_happens(store: Store) -> None:
    # When an empty batch is enqueued
    out = await store.enqueue([])

    # Then nothing is returned, stored or emitted
    assert out == []
    assert await store.list_jobs() == []
    assert await store.last_seq() == 0


async def test_given_a_batch_with_one_unstorable_job_when_enqueued_then_none_is_stored(store: Store) -> None:
    # Given a batch whose third job cannot be stored (its args are not JSON)
    batch = [spec("q", key="first"), spec("q"), spec("other", args=[object()])]

    # When it is enqueued, Then it fails as a whole
    with pytest.raises(Exception):
        await store.enqueue(batch)

    # ... no job, queue or event was written, and the key is still free
    assert await store.list_jobs() == []
    assert await store.queues() == []
    assert await store.last_seq() == 0
    [(job, created)] = await store.enqueue([spec("q", key="first")])
    assert created is True


async def test_given_an_existing_key_when_enqueued_again_then_the_existing_job_is_returned(store: Store) -> None:
    # Given a job with an idempotency key
    first = await put(store, "q", key="order-42", args=[1])

    # When a job with the same key (and other arguments) is enqueued
    [(again, created)] = await store.enqueue([spec("q", key="order-42", args=[2])])

    # Then the existing job comes back, not created, and nothing new was stored or emitted
    assert created is False
    assert again == first
    assert [j["id"] for j in await store.list_jobs()] == [first["id"]]
    assert [e["kind"] for e in await store.events_since(0)] == [models.EV_CREATED]


async def test_given_a_batch_repeating_a_key_when_enqueued_then_the_repeat_returns_the_first(store: Store) -> None:
    # Given a batch where two jobs share a key, next to a keyless job
    batch = [spec("q", key="k", args=[1]), spec("q", args=[2]), spec("q", key="k", args=[3])]

    # When it is enqueued
    (first, c1), (other, c2), (repeat, c3) = await store.enqueue(batch)

    # Then the repeat is the first job, not created; only two jobs exist
    assert (c1, c2, c3) == (True, True, False)
    assert repeat["id"] == first["id"] and repeat["args"] == [1]
    assert other["id"] != first["id"]
    assert {j["id"] for j in await store.list_jobs()} == {first["id"], other["id"]}
    assert await store.get(first["id"]) == first


async def test_given_concurrent_enqueues_of_one_key_when_they_commit_then_one_job_is_created(store: Store) -> None:
    # Given ten producers enqueueing the same key at once
    results = await asyncio.gather(*(store.enqueue([spec("q", key="same", args=[n])]) for n in range(10)))

    # Then exactly one created the job and every producer got that job back
    flat = [pair for result in results for pair in result]
    assert sum(created for _, created in flat) == 1
    assert len({job["id"] for job, _ in flat}) == 1
    assert len(await store.list_jobs()) == 1
    assert [e["kind"] for e in await store.events_since(0)] == [models.EV_CREATED]


async def test_given_a_key_of_a_finished_job_when_enqueued_then_the_finished_job_is_returned(store: Store) -> None:
    # Given a keyed job that already finished
    await put(store, "q", key="once")
    done = await finish(store, await take(store, "q"), result="r")

    # When the same key is enqueued again
    [(job, created)] = await store.enqueue([spec("q", key="once")])

    # Then the finished job is returned and nothing is claimable
    assert created is False
    assert job["id"] == done["id"] and job["status"] == models.FINISHED
    assert await store.claim(["q"], "w") == []


# --------------------------------------------------------------------------- get


async def test_given_an_unknown_id_when_read_then_job_not_found_is_raised(store: Store) -> None:
    # Given a store holding one job
    await put(store)

    # When an unknown id is read, Then JobNotFound is raised by get and executions
    with pytest.raises(JobNotFound):
        await store.get("no-such-job")
    with pytest.raises(JobNotFound):
        await store.executions("no-such-job")


# --------------------------------------------------------------------------- list_jobs


async def test_given_jobs_enqueued_over_time_when_listed_then_newest_come_first(store: Store) -> None:
    # Given jobs enqueued one after the other, then a batch
    singles = [await put(store, "q", args=[i]) for i in range(3)]
    batch = [job for job, _ in await store.enqueue([spec("q", args=[i]) for i in range(3, 6)])]

    # When they are listed
    listed = await store.list_jobs()

    # Then the newest (last enqueued, last of a batch) comes first
    assert [j["id"] for j in listed] == [j["id"] for j in reversed(singles + batch)]
    assert listed[0] == await store.get(batch[-1]["id"])


async def test_given_varied_jobs_when_listed_with_filters_then_only_matching_jobs_come_back(store: Store) -> None:
    # Given jobs over two queues and two methods, one of them started
    a1 = await put(store, "a", method="m:one")
    a2 = await put(store, "a", method="m:two")
    b1 = await put(store, "b", method="m:one")
    started = await take(store, "a")          # a1: same priority, first enqueued
    assert started["id"] == a1["id"]

    # When listed with each filter and with combinations
    by_queue = await store.list_jobs(queue="a")
    by_status = await store.list_jobs(status=models.PENDING)
    by_method = await store.list_jobs(method="m:one")
    combined = await store.list_jobs(queue="a", status=models.PENDING, method="m:two")
    nothing = await store.list_jobs(queue="a", method="m:three")

    # Then every filter applies, results newest first
    assert [j["id"] for j in by_queue] == [a2["id"], a1["id"]]
    assert [j["id"] for j in by_status] == [b1["id"], a2["id"]]
    assert [j["id"] for j in by_method] == [b1["id"], a1["id"]]
    assert [j["id"] for j in combined] == [a2["id"]]
    assert nothing == []
    assert [j["id"] for j in await store.list_jobs(status=models.STARTED)] == [a1["id"]]


async def test_given_many_jobs_when_paged_with_limit_and_before_then_every_job_comes_once(store: Store) -> None:
    # Given seven jobs
    ids = [job["id"] for job, _ in await store.enqueue([spec("q", args=[i]) for i in range(7)])]

    # When they are read in pages of three, each page starting before the last job seen
    pages: list[list[str]] = []
    before = None
    while True:
        page = [j["id"] for j in await store.list_jobs(limit=3, before=before)]
        if not page:
            break
        pages.append(page)
        before = page[-1]

    # Then the pages hold every job once, newest first, none larger than the limit
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == list(reversed(ids))


@pytest.mark.parametrize("filters", [
    {"status": "done"},
    {"status": "PENDING"},
    {"limit": 0},
    {"limit": 1001},
    {"limit": -5},
])
async def test_given_an_invalid_filter_when_listing_then_invalid_request_is_raised(store: Store, filters: dict) -> None:
    # Given a store with a job
    await put(store)

    # When jobs are listed with an invalid filter, Then InvalidRequest names the field
    with pytest.raises(InvalidRequest) as caught:
        await store.list_jobs(**filters)
    assert caught.value.details.get("field") == next(iter(filters))


async def test_given_limit_bounds_when_listing_then_one_and_one_thousand_are_accepted(store: Store) -> None:
    # Given two jobs
    await store.enqueue([spec(), spec()])

    # When listed with the smallest and largest limits, Then both are valid
    assert len(await store.list_jobs(limit=1)) == 1
    assert len(await store.list_jobs(limit=1000)) == 2


# --------------------------------------------------------------------------- update_data


async def test_given_job_data_when_updated_then_top_level_keys_are_merged(store: Store) -> None:
    # Given a job with data
    job = await put(store, data={"a": 1, "b": {"x": 1}})

    # When data is merged in
    updated = await store.update_data(job["id"], {"b": {"y": 2}, "c": 3})

    # Then top-level keys are replaced or added, others kept; the change is stored and emitted
    assert updated["data"] == {"a": 1, "b": {"y": 2}, "c": 3}
    assert updated["updated_at"] >= job["updated_at"]
    assert await store.get(job["id"]) == updated
    event = (await store.events_since(0, job_id=job["id"]))[-1]
    assert event["kind"] == models.EV_UPDATED and event["new_val"] == updated


async def test_given_a_started_job_when_data_is_updated_with_its_lease_then_it_is_merged(store: Store) -> None:
    # Given a started job
    await put(store, data={"progress": 0})
    job = await take(store)

    # When its worker updates the data with the current lease
    updated = await store.update_data(job["id"], {"progress": 50}, job["lease"])

    # Then the data changed and the job is still leased to it
    assert updated["data"] == {"progress": 50}
    assert (updated["status"], updated["lease"]) == (models.STARTED, job["lease"])


async def test_given_a_wrong_lease_when_data_is_updated_then_lease_conflict_and_nothing_changes(store: Store) -> None:
    # Given a started job and a pending one
    await put(store, data={"progress": 0})
    job = await take(store)
    pending = await put(store, data={"progress": 0})
    seq = await store.last_seq()

    # When data is updated with a wrong lease, or with a lease on a job nobody holds
    with pytest.raises(LeaseConflict):
        await store.update_data(job["id"], {"progress": 99}, "not-the-lease")
    with pytest.raises(LeaseConflict):
        await store.update_data(pending["id"], {"progress": 99}, job["lease"])

    # Then neither job changed and no event was written
    assert (await store.get(job["id"]))["data"] == {"progress": 0}
    assert (await store.get(pending["id"]))["data"] == {"progress": 0}
    assert await store.last_seq() == seq


async def test_given_an_unknown_job_when_data_is_updated_then_job_not_found_is_raised(store: Store) -> None:
    # When data of an unknown job is updated, Then JobNotFound is raised
    with pytest.raises(JobNotFound):
        await store.update_data("no-such-job", {"a": 1})


# --------------------------------------------------------------------------- abort


async def test_given_a_pending_job_when_aborted_then_it_ends_and_is_never_claimed(store: Store) -> None:
    # Given a pending job
    job = await put(store)

    # When it is aborted
    aborted = await store.abort(job["id"])

    # Then it ended aborted, emitted job.aborted, and no claim ever gets it
    assert aborted["status"] == models.ABORTED
    assert aborted["finished_at"] is not None and aborted["lease"] is None
    assert await store.get(job["id"]) == aborted
    assert await kinds(store, job["id"]) == [models.EV_CREATED, models.EV_ABORTED]
    assert await store.claim(["default"], "w", 10) == []
    assert await store.next_run_at(["default"]) is None


async def test_given_a_started_job_when_aborted_then_its_lease_is_stale(store: Store) -> None:
    # Given a started job
    await put(store)
    job = await take(store)

    # When it is aborted
    aborted = await store.abort(job["id"])

    # Then the job is aborted with no lease, its execution ended aborted ...
    assert (aborted["status"], aborted["lease"], aborted["lease_expires"]) == (models.ABORTED, None, None)
    [execution] = await store.executions(job["id"])
    assert execution["status"] == models.EXEC_ABORTED and execution["finished_at"] is not None
    # ... and the worker's lease is refused everywhere, changing nothing
    [beat] = await store.heartbeat([(job["id"], job["lease"])], 30.0)
    [done] = await store.complete([Outcome(job["id"], job["lease"], models.FINISHED, result="late")])
    [released] = await store.release([(job["id"], job["lease"])])
    for item in (beat, done, released):
        assert item["ok"] is False and item["error"]["code"] == "stale_lease"
    with pytest.raises(LeaseConflict):
        await store.update_data(job["id"], {"x": 1}, job["lease"])
    assert await store.get(job["id"]) == aborted


@pytest.mark.parametrize("end", ["finish", "fail", "abort"])
async def test_given_an_ended_job_when_aborted_then_conflict_and_nothing_changes(store: Store, end: str) -> None:
    # Given a job that already ended
    job = await put(store, max_attempts=1)
    if end == "finish":
        await finish(store, await take(store))
    elif end == "fail":
        await fail(store, await take(store))
    else:
        await store.abort(job["id"])
    ended = await store.get(job["id"])
    seq = await store.last_seq()

    # When it is aborted, Then Conflict is raised and neither job nor events changed
    with pytest.raises(Conflict):
        await store.abort(job["id"])
    assert await store.get(job["id"]) == ended
    assert await store.last_seq() == seq


async def test_given_an_unknown_job_when_aborted_then_job_not_found_is_raised(store: Store) -> None:
    # When an unknown job is aborted, Then JobNotFound is raised
    with pytest.raises(JobNotFound):
        await store.abort("no-such-job")
