"""The PostgreSQL store finishes the jobs it claimed from their claimed documents, by a
statement that returns their ids alone, as long as nothing wrote to them since: not this
dispatcher, not another one sharing the database. What it remembers is bounded, and a job it
forgot (or claimed by another dispatcher) finishes as well."""

from __future__ import annotations

import asyncpg
import pytest

from tqueues import models
from tqueues.store import Outcome, open_store


@pytest.fixture
def db_url(pg_url: str) -> str:
    """This module's tests are about the PostgreSQL store: ``store`` opens this database."""
    return pg_url


def specs(count: int) -> list[models.NewJob]:
    return [models.NewJob(queue="f", method="m:f", args=[n], data={"n": n}) for n in range(count)]


async def test_given_claimed_jobs_then_they_are_remembered_until_they_finish(store) -> None:
    # Given jobs claimed by this store, one of them as it was enqueued (adopted by a parked claim)
    await store.enqueue(specs(5))
    jobs = await store.claim(["f"], "w", 5)
    _, adopted = await store.enqueue_and_claim(models.NewJob(queue="g", method="m:f", args=["new"]), ["g"], "w")
    jobs += adopted

    # Then their claimed documents are remembered
    assert set(store._claimed.docs) == {j["id"] for j in jobs}

    # When they finish, they are forgotten, and each finished document is the stored row
    items = await store.complete([Outcome(j["id"], j["lease"], result={"r": j["args"][0]}) for j in jobs])
    assert store._claimed.docs == {}
    for job, item in zip(jobs, items):
        assert item["ok"] and item["job"] == await store.get(job["id"]), item
        [execution] = await store.executions(job["id"])
        assert (execution["status"], execution["worker"], execution["started_at"]) == (
            models.EXEC_FINISHED, "w", job["started_at"])


async def test_given_another_dispatcher_wrote_to_a_started_job_when_it_finishes_then_its_document_has_that_write(
        store, pg_url: str) -> None:
    # Given a started job whose data another dispatcher of the same database then updates
    await store.enqueue(specs(1))
    [job] = await store.claim(["f"], "w", 1)
    other = open_store(pg_url)
    await other.open()
    try:
        await other.update_data(job["id"], {"from": "elsewhere"}, lease=job["lease"])
    finally:
        await other.close()
    assert job["id"] in store._claimed.docs   # this dispatcher did not see that write

    # When its worker reports it finished, here
    [item] = await store.complete([Outcome(job["id"], job["lease"], result="done")])

    # Then the finished document is the row as it is now, with the other dispatcher's write
    assert item["ok"] and item["job"]["data"] == {"n": 0, "from": "elsewhere"} and item["job"]["result"] == "done"
    assert item["job"] == await store.get(job["id"])


async def test_given_a_job_changed_behind_the_stores_back_then_the_finish_reads_it_back(store, pg_url: str) -> None:
    # Given a started job whose row is changed directly in the database (priority, updated_at)
    await store.enqueue(specs(1))
    [job] = await store.claim(["f"], "w", 1)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("UPDATE tqueues_jobs SET priority = 9, updated_at = updated_at + 1 WHERE id = $1", job["id"])
    finally:
        await conn.close()

    # When it finishes
    [item] = await store.complete([Outcome(job["id"], job["lease"], result=1)])

    # Then its document has the change
    assert item["ok"] and item["job"]["priority"] == 9 and item["job"] == await store.get(job["id"])


async def test_given_jobs_claimed_through_two_dispatchers_when_one_reports_them_all_then_each_finishes(
        store, pg_url: str) -> None:
    # Given 3 jobs claimed through another dispatcher (which this one knows nothing of) and 3 through this one
    await store.enqueue(specs(6))
    other = open_store(pg_url)
    await other.open()
    try:
        elsewhere = await other.claim(["f"], "w-other", 3)
    finally:
        await other.close()
    here = await store.claim(["f"], "w-here", 3)
    assert set(store._claimed.docs) == {j["id"] for j in here}

    # When this dispatcher gets every outcome in one report (a worker behind a load balancer)
    jobs = elsewhere + here
    items = await store.complete([Outcome(j["id"], j["lease"], result=j["args"]) for j in jobs])

    # Then all six finish, each answered with its stored row, and nothing stays remembered
    for job, item in zip(jobs, items):
        assert item["ok"] and item["job"]["result"] == job["args"], item
        assert item["job"] == await store.get(job["id"])
    assert store._claimed.docs == {}
