"""The PostgreSQL store's group commit: operations waiting together share one transaction
without savepoints; when one of them fails, the group runs again with a savepoint per
operation, so only that one fails and every other lands, with its events in order."""

from __future__ import annotations

import asyncio

import pytest

from tqueues import models
from tqueues.errors import JobNotFound


@pytest.fixture
def db_url(pg_url: str) -> str:
    """This module's tests are about the PostgreSQL store: ``store`` opens this database."""
    return pg_url


def spec(n: int) -> models.NewJob:
    return models.NewJob(queue="g", method="m:f", args=[n])


async def test_given_a_failing_operation_in_a_group_then_only_it_fails_and_the_others_land(store) -> None:
    before = await store.last_seq()
    # When five enqueues and an abort of a job that does not exist are submitted together
    outcomes = await asyncio.gather(*(store.enqueue([spec(i)]) for i in range(5)),
                                    store.abort("no-such-job"), return_exceptions=True)
    # Then the abort alone failed, and it made the group run again with savepoints
    assert isinstance(outcomes[-1], JobNotFound)
    assert store._failed_recently is True
    jobs = [result[0][0] for result in outcomes[:5]]
    assert [job["args"] for job in jobs] == [[i] for i in range(5)]
    for job in jobs:
        assert (await store.get(job["id"]))["status"] == "pending"
    # (the queue was created by the attempt that committed, and is known from then on)
    assert "g" in {q["name"] for q in await store.queues()} and "g" in store._queues_known
    # And each enqueue has exactly one event, numbered without a gap
    events = await store.events_since(before)
    assert sorted(e["job_id"] for e in events) == sorted(j["id"] for j in jobs)
    assert [e["seq"] for e in events] == list(range(before + 1, before + 6))
    # And the next group (run with savepoints, as the last one failed) lands and clears that
    again = await asyncio.gather(store.enqueue([spec(9)]), store.enqueue([spec(10)]))
    assert [created for [(_, created)] in again] == [True, True]
    assert store._failed_recently is False


async def test_given_a_failing_operation_alone_then_it_fails_and_changes_nothing(store) -> None:
    before = await store.last_seq()
    with pytest.raises(JobNotFound):
        await store.abort("no-such-job")
    assert await store.last_seq() == before
    [(job, created)] = await store.enqueue([spec(1)])
    assert created and (await store.events_since(before))[0]["job_id"] == job["id"]


async def test_given_an_operation_chosen_as_a_deadlocks_victim_then_it_runs_again_and_lands(store, db_url: str) -> None:
    import asyncpg

    # Given two jobs leased to one worker
    await store.enqueue([spec(1), spec(2)])
    leased = sorted(await store.claim(["g"], "w", 2), key=lambda job: job["id"])
    first, second = leased
    other = await asyncpg.connect(db_url)
    try:
        # And another transaction (slow to detect deadlocks) holding the second job's row
        tx = other.transaction()
        await tx.start()
        await other.execute("SET LOCAL deadlock_timeout = '10s'")
        await other.execute("SELECT 1 FROM tqueues_jobs WHERE id = $1 FOR UPDATE", second["id"])
        # When the worker releases both (the first row locked, then waiting for the second) and
        # the other transaction asks for the first row: a deadlock, the release its victim
        release = asyncio.ensure_future(store.release([(j["id"], j["lease"]) for j in (second, first)]))
        await asyncio.sleep(0.3)
        await other.execute("SELECT 1 FROM tqueues_jobs WHERE id = $1 FOR UPDATE", first["id"])
        await tx.commit()
        results = await asyncio.wait_for(release, 10)
    finally:
        await other.close()
    # Then the release ran again once the other transaction ended, and both jobs are back
    assert [r["ok"] for r in results] == [True, True]
    assert [r["job"]["id"] for r in results] == [second["id"], first["id"]]
    for job in leased:
        assert (await store.get(job["id"]))["status"] == "pending"
