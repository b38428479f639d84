"""Store contract: queues, set_queue, workers and prune."""

from __future__ import annotations

import asyncio

import pytest

from tqueues import models
from tqueues.errors import InvalidRequest, JobNotFound
from tqueues.store import Store

from store_contract.contract_helpers import fail, finish, put, spec, take

# --------------------------------------------------------------------------- queues


def counts(**given: int) -> dict[str, int]:
    return {status: given.get(status, 0) for status in models.STATUSES}


async def test_given_jobs_in_every_status_when_listing_queues_then_counts_are_per_status(store: Store) -> None:
    # Given queue a with a job in each status, and queue b with two pending jobs
    await store.enqueue([spec("a", max_attempts=1) for _ in range(5)] + [spec("b"), spec("b")])
    await finish(store, await take(store, "a"))
    await fail(store, await take(store, "a"))
    await take(store, "a")
    [aborted] = await store.list_jobs(queue="a", status=models.PENDING, limit=1)
    await store.abort(aborted["id"])

    # When queues are listed
    queues = {q["name"]: q for q in await store.queues()}

    # Then each queue reports its counts for every status and is not paused
    assert set(queues) == {"a", "b"}
    assert queues["a"]["counts"] == counts(pending=1, started=1, finished=1, failed=1, aborted=1)
    assert queues["b"]["counts"] == counts(pending=2)
    assert queues["a"]["paused"] is False and queues["b"]["paused"] is False


async def test_given_a_queue_when_paused_and_resumed_then_queues_shows_it_and_events_are_emitted(store: Store) -> None:
    # Given a queue holding a job
    await put(store, "q")
    seq = await store.last_seq()

    # When it is paused, then resumed
    paused = await store.set_queue("q", paused=True)
    listed_paused = {q["name"]: q["paused"] for q in await store.queues()}
    resumed = await store.set_queue("q", paused=False)
    listed_resumed = {q["name"]: q["paused"] for q in await store.queues()}

    # Then each answer and listing shows the state, and each change emitted queue.updated
    assert (paused["name"], paused["paused"]) == ("q", True)
    assert (resumed["name"], resumed["paused"]) == ("q", False)
    assert listed_paused == {"q": True} and listed_resumed == {"q": False}
    events = await store.events_since(seq)
    assert [(e["kind"], e["queue"], e["new_val"]["paused"]) for e in events] == [
        (models.EV_QUEUE, "q", True), (models.EV_QUEUE, "q", False)]


async def test_given_an_unknown_queue_when_set_then_it_is_created_empty(store: Store) -> None:
    # When an unknown queue is paused, and another is set without changes
    await store.set_queue("new", paused=True)
    untouched = await store.set_queue("plain")

    # Then both exist with zero counts, only the first paused
    queues = {q["name"]: q for q in await store.queues()}
    assert queues["new"]["paused"] is True and queues["new"]["counts"] == counts()
    assert untouched["paused"] is False and queues["plain"]["counts"] == counts()
    # ... and setting nothing on a paused queue keeps it paused
    assert (await store.set_queue("new"))["paused"] is True


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "x" * 129])
async def test_given_an_invalid_queue_name_when_set_then_invalid_request_and_nothing_created(
        store: Store, name: str) -> None:
    # When an invalid queue name is set, Then InvalidRequest is raised and nothing exists
    with pytest.raises(InvalidRequest):
        await store.set_queue(name, paused=True)
    assert await store.queues() == []
    assert await store.last_seq() == 0


# --------------------------------------------------------------------------- workers


async def test_given_workers_when_registered_then_they_are_listed_newest_first(store: Store) -> None:
    # Given no worker
    assert await store.workers() == []

    # When two workers register, then the first registers again with new info
    before = models.now()
    w1 = await store.register_worker({"id": "w1", "host": "alpha", "queues": ["a"]})
    await asyncio.sleep(0.01)
    await store.register_worker({"id": "w2", "host": "beta"})
    await asyncio.sleep(0.01)
    w1_again = await store.register_worker({"id": "w1", "host": "gamma", "queues": ["a", "b"]})

    # Then each answer carries the info and last_seen, and the list is newest first with the latest info
    assert (w1["id"], w1["host"], w1["queues"]) == ("w1", "alpha", ["a"]) and w1["last_seen"] >= before
    assert w1_again["last_seen"] > w1["last_seen"]
    listed = await store.workers()
    assert [w["id"] for w in listed] == ["w1", "w2"]
    assert (listed[0]["host"], listed[0]["queues"], listed[0]["last_seen"]) == ("gamma", ["a", "b"], w1_again["last_seen"])
    assert listed[1]["host"] == "beta"


async def test_given_a_registered_worker_when_it_registers_again_then_its_answer_matches_the_listing(
        store: Store) -> None:
    # Given a worker that registered once
    first = await store.register_worker({"id": "w1", "host": "alpha"})
    await asyncio.sleep(0.01)

    # When it registers again (a restart)
    again = await store.register_worker({"id": "w1", "host": "beta"})

    # Then the answer is what the store now lists for it
    [listed] = await store.workers()
    assert again == listed
    assert listed["host"] == "beta" and listed["last_seen"] > first["last_seen"]


async def test_given_a_worker_when_it_registers_then_worker_updated_is_emitted(store: Store) -> None:
    # When a worker registers
    doc = await store.register_worker({"id": "w1", "host": "alpha"})

    # Then a worker.updated event carries its document, about no job
    [event] = await store.events_since(0)
    assert (event["kind"], event["job_id"]) == (models.EV_WORKER, None)
    assert event["new_val"]["id"] == "w1" and event["new_val"] == doc


# --------------------------------------------------------------------------- prune


async def test_given_ended_and_live_jobs_when_pruned_then_only_old_ended_jobs_go(store: Store) -> None:
    # Given finished, failed and aborted jobs, and a pending and a started one
    await store.enqueue([spec(max_attempts=1, args=[i]) for i in range(4)])
    finished = await finish(store, await take(store))
    failed = await fail(store, await take(store))
    started = await take(store)
    [pending] = await store.list_jobs(status=models.PENDING)
    aborted = await store.abort((await put(store, "other"))["id"])
    await asyncio.sleep(0.01)

    # When jobs ended more than an hour ago are pruned, Then nothing goes
    assert await store.prune(3600.0) == 0
    assert len(await store.list_jobs()) == 5

    # When every ended job is pruned
    assert await store.prune(0.0) == 3

    # Then the ended jobs and their executions are gone, the live ones are untouched
    for gone in (finished, failed, aborted):
        with pytest.raises(JobNotFound):
            await store.get(gone["id"])
        with pytest.raises(JobNotFound):
            await store.executions(gone["id"])
    assert await store.get(started["id"]) == started
    assert await store.get(pending["id"]) == pending
    assert {j["id"] for j in await store.list_jobs()} == {started["id"], pending["id"]}
    queues = {q["name"]: q["counts"] for q in await store.queues()}
    assert queues["default"] == counts(pending=1, started=1)
    # ... and the live jobs still work: the started one finishes
    assert (await finish(store, started))["status"] == models.FINISHED


async def test_given_old_events_when_pruned_then_seq_keeps_increasing(store: Store) -> None:
    # Given a finished job and its events
    await put(store)
    await finish(store, await take(store))
    seq = await store.last_seq()
    await asyncio.sleep(0.01)

    # When everything old is pruned
    await store.prune(0.0)

    # Then old events are gone, last_seq does not go back, and new events continue the sequence
    assert len(await store.events_since(0)) < 3
    assert await store.last_seq() >= seq
    job = await put(store)
    [event] = await store.events_since(seq)
    assert (event["kind"], event["job_id"]) == (models.EV_CREATED, job["id"])
    assert event["seq"] > seq
    assert await store.last_seq() == event["seq"]


async def test_given_a_pruned_keyed_job_when_its_key_is_enqueued_again_then_a_new_job_is_created(
        store: Store) -> None:
    # Given a keyed job that finished and was pruned
    old = await put(store, key="daily-report")
    await finish(store, await take(store))
    await asyncio.sleep(0.01)
    assert await store.prune(0.0) == 1

    # When the key is enqueued again
    [(job, created)] = await store.enqueue([spec(key="daily-report")])

    # Then a new job is created
    assert created is True and job["id"] != old["id"]


async def test_given_a_negative_age_when_pruning_then_invalid_request(store: Store) -> None:
    # Given an ended job
    job = await put(store)
    await store.abort(job["id"])

    # When pruning with a negative age, Then InvalidRequest is raised and the job stays
    with pytest.raises(InvalidRequest):
        await store.prune(-1.0)
    assert (await store.get(job["id"]))["status"] == models.ABORTED


# --------------------------------------------------------------------------- what the dashboard reads


async def test_given_pending_jobs_when_listing_queues_then_the_oldest_pending_creation_is_given(store: Store) -> None:
    # Given queue a with two pending jobs made a moment apart, of which the older is then claimed,
    # and queue b whose only job has finished
    first = await put(store, "a")
    await asyncio.sleep(0.02)
    second = await put(store, "a")
    await asyncio.sleep(0.02)
    await put(store, "a")
    await put(store, "b")
    await finish(store, await take(store, "b"))
    claimed = await take(store, "a")

    # When queues are listed
    queues = {q["name"]: q for q in await store.queues()}

    # Then a's oldest pending job is the second one (the first is started), and b has none
    assert claimed["id"] == first["id"]
    assert queues["a"]["oldest_pending"] == pytest.approx(second["created_at"])
    assert queues["b"]["oldest_pending"] is None


async def test_given_the_oldest_job_back_to_pending_when_listing_queues_then_it_is_the_oldest_again(store: Store) -> None:
    # Given two jobs made a moment apart, the older claimed (so the newer is the oldest pending)
    first = await put(store, "a", max_attempts=2)
    await asyncio.sleep(0.02)
    second = await put(store, "a")
    claimed = await take(store, "a")
    assert claimed["id"] == first["id"]
    assert {q["name"]: q for q in await store.queues()}["a"]["oldest_pending"] == pytest.approx(second["created_at"])

    # When its attempt fails and it goes back to pending for a retry
    await fail(store, claimed, retry=True)

    # Then the oldest pending creation is the first job's again
    assert {q["name"]: q for q in await store.queues()}["a"]["oldest_pending"] == pytest.approx(first["created_at"])


async def test_given_jobs_when_searched_by_text_then_id_method_key_args_and_error_match_but_not_kwargs(
        store: Store) -> None:
    # Given jobs that differ in method, key, arguments, keyword arguments and error
    mailer = await put(store, "q", method="app.mail:send_Welcome")
    keyed = await put(store, "q", key="invoice-4711")
    argued = await put(store, "q", args=["needle-in-args", 3])
    await put(store, "q", kwargs={"password": "hunter2-needle"})
    failing = await put(store, "f", max_attempts=1)
    await fail(store, await take(store, "f"), retry=False,
               error=models.error_doc("KeyError", "missing column 50%_done", "Traceback ..."))

    async def search(text: str) -> set[str]:
        return {job["id"] for job in await store.list_jobs(text=text)}

    # When searched, case-insensitively, for part of each
    # Then exactly the matching jobs come back; keyword arguments are never searched
    assert await search("SEND_welcome") == {mailer["id"]}
    assert await search("voice-47") == {keyed["id"]}
    assert await search("needle") == {argued["id"]}
    assert await search("50%_done") == {failing["id"]}
    assert await search("0%_") == {failing["id"]}
    assert await search("5_%") == set()      # LIKE wildcards are taken literally
    assert await search(argued["id"][-8:]) == {argued["id"]}
    assert await search("hunter2") == set()
    assert [j["id"] for j in await store.list_jobs(text="needle", status=models.PENDING, queue="q")] == [argued["id"]]
    with pytest.raises(InvalidRequest):
        await store.list_jobs(text="")


async def test_given_jobs_ended_over_time_when_stats_has_a_step_then_the_series_counts_them_per_bucket(
        store: Store) -> None:
    # Given three jobs finished and one failed just now
    await store.enqueue([spec("s", max_attempts=1) for _ in range(4)])
    for _ in range(3):
        await finish(store, await take(store, "s"))
    await fail(store, await take(store, "s"), retry=False)

    # When stats are read over 60 s in 10 s steps
    stats = await store.stats(60.0, 10.0)

    # Then there are six buckets, oldest first, and the last holds every recent end
    series = stats["series"]
    assert len(series) == 6
    assert [b["start"] for b in series] == sorted(b["start"] for b in series)
    assert series[-1]["start"] <= models.now() <= series[-1]["start"] + 10.0 + 1.0
    assert sum(b["finished"] for b in series) == 3 and sum(b["failed"] for b in series) == 1
    assert series[-1]["finished"] == 3 and series[-1]["failed"] == 1
    assert "series" not in await store.stats(60.0)
    with pytest.raises(InvalidRequest):
        await store.stats(60.0, 0.001)


async def test_given_a_stopped_worker_when_a_late_heartbeat_registers_it_then_it_stays_stopped(store: Store) -> None:
    # Given a worker that registered running, then stopped
    await store.register_worker({"id": "w-late", "status": "running", "current": ["a"]})
    await store.register_worker({"id": "w-late", "status": "stopped", "current": []})

    # When a heartbeat it sent earlier arrives late
    late = await store.register_worker({"id": "w-late", "status": "running", "current": ["a"]})

    # Then it is still stopped (its other fields are updated)
    assert late["status"] == "stopped"
    assert (await store.worker("w-late"))["status"] == "stopped"
