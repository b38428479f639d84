"""PostgreSQL keeps each queue's count of jobs per status as rows of changes that add up to it,
appended by every write in its own transaction and folded by the lease reaper: the sums must
always say what counting the jobs says."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from support.counts import every_write, job

from tqueues import models
from tqueues.store import open_store
from tqueues.store.base import Outcome


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


async def sums_and_counts(url: str) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], int]:
    """(what the counts' rows add up to, what counting the jobs gives, how many rows)."""
    conn = await asyncpg.connect(url)
    try:
        kept = {(r["queue"], r["status"]): r["n"] for r in await conn.fetch(
            "SELECT queue, status, SUM(n)::bigint AS n FROM tqueues_queue_counts GROUP BY queue, status HAVING SUM(n) <> 0")}
        counted = {(r["queue"], r["status"]): r["n"] for r in await conn.fetch(
            "SELECT queue, status, COUNT(*) AS n FROM tqueues_jobs GROUP BY queue, status")}
        rows = await conn.fetchval("SELECT COUNT(*) FROM tqueues_queue_counts")
        return kept, counted, rows
    finally:
        await conn.close()


async def test_every_kind_of_write_keeps_the_queue_counts_equal_to_the_jobs(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()

    async def check(step: str) -> None:
        kept, counted, _ = await sums_and_counts(db_url)
        assert kept == counted, step
        answered = {(q["name"], status): n for q in await store.queues() for status, n in q["counts"].items() if n}
        assert answered == counted, step
        assert all(type(n) is int for q in await store.queues() for n in q["counts"].values()), step

    try:
        assert await every_write(store, check) == 16
        _, counted, rows = await sums_and_counts(db_url)
        assert counted, "jobs must remain for the last check to mean something"
        # The reaper's round folds the rows of changes into one per count, keeping the sums
        await store.requeue_expired()
        kept, counted, folded = await sums_and_counts(db_url)
        assert kept == counted and folded == len(counted) < rows
        # And a round with nothing to fold rewrites nothing
        conn = await asyncpg.connect(db_url)
        try:
            before = await conn.fetch("SELECT id, queue, status, n FROM tqueues_queue_counts ORDER BY id")
            await store.requeue_expired()
            assert await conn.fetch("SELECT id, queue, status, n FROM tqueues_queue_counts ORDER BY id") == before
        finally:
            await conn.close()
    finally:
        await store.close()


async def test_two_dispatchers_writing_and_folding_at_once_keep_the_counts(db_url: str) -> None:
    stores = [open_store(db_url), open_store(db_url)]
    for store in stores:
        await store.open()
    try:
        async def churn(store: object, queue: str) -> None:
            for _ in range(15):
                await store.enqueue([job(queue) for _ in range(5)])  # type: ignore[attr-defined]
                claimed = await store.claim([queue, "shared"], "w", limit=4)  # type: ignore[attr-defined]
                await store.complete([Outcome(id=j["id"], lease=j["lease"]) for j in claimed])  # type: ignore[attr-defined]
                await store.enqueue([job("shared")])  # type: ignore[attr-defined]
                await store.requeue_expired()  # type: ignore[attr-defined]

        await asyncio.gather(churn(stores[0], "a"), churn(stores[1], "b"), churn(stores[0], "c"), churn(stores[1], "a"))
        kept, counted, _ = await sums_and_counts(db_url)
        assert kept == counted
        assert counted[("shared", models.PENDING)] + counted.get(("shared", models.FINISHED), 0) == 60
    finally:
        for store in stores:
            await store.close()


async def test_given_a_version_10_database_when_opened_then_its_jobs_are_counted(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()
    await store.enqueue([job("a") for _ in range(3)] + [job("b")])
    (started,) = await store.claim(["a"], "w")
    await store.complete([Outcome(id=started["id"], lease=started["lease"])])
    await store.close()
    _, expected, _ = await sums_and_counts(db_url)
    # Given a database as tqueues with schema version 10 left it: no counts table
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DROP TABLE tqueues_queue_counts")
        await conn.execute("UPDATE tqueues_meta SET value = '10' WHERE key = 'schema_version'")
    finally:
        await conn.close()
    # When this tqueues opens it, then every job is counted and writes keep counting
    store = open_store(db_url)
    await store.open()
    try:
        kept, counted, _ = await sums_and_counts(db_url)
        assert kept == counted == expected == {("a", models.PENDING): 2, ("a", models.FINISHED): 1, ("b", models.PENDING): 1}
        await store.enqueue([job("b")])
        kept, counted, _ = await sums_and_counts(db_url)
        assert kept == counted and counted[("b", models.PENDING)] == 2
    finally:
        await store.close()
