"""The PostgreSQL store's group commit: operations waiting together share one transaction
without savepoints; when one of them fails, the group runs again with a savepoint per
operation, so only that one fails and every other lands, with its events in order."""

from __future__ import annotations

import asyncio

import pytest

from tqueues import models
from tqueues.errors import JobNotFound
from tqueues.store import open_store


@pytest.fixture
async def pg_store(pg_url: str):
    store = open_store(pg_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def spec(n: int) -> models.NewJob:
    return models.NewJob(queue="g", method="m:f", args=[n])


async def test_given_a_failing_operation_in_a_group_then_only_it_fails_and_the_others_land(pg_store) -> None:
    before = await pg_store.last_seq()
    # When five enqueues and an abort of a job that does not exist are submitted together
    outcomes = await asyncio.gather(*(pg_store.enqueue([spec(i)]) for i in range(5)),
                                    pg_store.abort("no-such-job"), return_exceptions=True)
    # Then the abort alone failed, and it made the group run again with savepoints
    assert isinstance(outcomes[-1], JobNotFound)
    assert pg_store._failed_recently is True
    jobs = [result[0][0] for result in outcomes[:5]]
    assert [job["args"] for job in jobs] == [[i] for i in range(5)]
    for job in jobs:
        assert (await pg_store.get(job["id"]))["status"] == "pending"
    # (the queue was created by the attempt that committed, and is known from then on)
    assert "g" in {q["name"] for q in await pg_store.queues()} and "g" in pg_store._queues_known
    # And each enqueue has exactly one event, numbered without a gap
    events = await pg_store.events_since(before)
    assert sorted(e["job_id"] for e in events) == sorted(j["id"] for j in jobs)
    assert [e["seq"] for e in events] == list(range(before + 1, before + 6))
    # And the next group (run with savepoints, as the last one failed) lands and clears that
    again = await asyncio.gather(pg_store.enqueue([spec(9)]), pg_store.enqueue([spec(10)]))
    assert [created for [(_, created)] in again] == [True, True]
    assert pg_store._failed_recently is False


async def test_given_a_failing_operation_alone_then_it_fails_and_changes_nothing(pg_store) -> None:
    before = await pg_store.last_seq()
    with pytest.raises(JobNotFound):
        await pg_store.abort("no-such-job")
    assert await pg_store.last_seq() == before
    [(job, created)] = await pg_store.enqueue([spec(1)])
    assert created and (await pg_store.events_since(before))[0]["job_id"] == job["id"]
