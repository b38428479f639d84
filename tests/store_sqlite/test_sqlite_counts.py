"""SQLite keeps each queue's count of jobs per status in queue_counts, written by every change
in its own transaction: the table must always say what counting the jobs says."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from tqueues import models
from tqueues.errors import JobNotFound
from tqueues.store import open_store
from tqueues.store.base import Outcome


def kept(path: Path) -> dict[tuple[str, str], int]:
    with closing(sqlite3.connect(path)) as conn:
        return {(q, s): n for q, s, n in conn.execute("SELECT queue, status, n FROM queue_counts") if n}


def counted(path: Path) -> dict[tuple[str, str], int]:
    with closing(sqlite3.connect(path)) as conn:
        return {(q, s): n for q, s, n in conn.execute("SELECT queue, status, COUNT(*) FROM jobs GROUP BY queue, status")}


def job(queue: str, **fields: object) -> models.NewJob:
    return models.NewJob(queue=queue, method="m:f", **fields)  # type: ignore[arg-type]


async def test_every_kind_of_write_keeps_the_queue_counts_equal_to_the_jobs(tmp_path: Path) -> None:
    path = tmp_path / "counts.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    steps: list[str] = []

    async def check(step: str) -> None:
        steps.append(step)
        jobs = counted(path)
        assert kept(path) == jobs, step
        answered = {(q["name"], status): n for q in await store.queues() for status, n in q["counts"].items() if n}
        assert answered == jobs, step

    try:
        await store.enqueue([job("a") for _ in range(6)] + [job("b", key="k1"), job("b", max_attempts=1)])
        await check("batch enqueue")
        again = await store.enqueue([job("b", key="k1"), job("b", key="k2")])
        assert [created for _, created in again] == [False, True]
        await check("enqueue with an existing key")

        claimed = await store.claim(["a"], "w1", limit=3)
        await check("claim")
        answers = await store.complete([
            Outcome(id=claimed[0]["id"], lease=claimed[0]["lease"], result=1),                          # finished
            Outcome(id=claimed[1]["id"], lease=claimed[1]["lease"], status=models.FAILED, retry=True),  # retried
            Outcome(id=claimed[2]["id"], lease=claimed[2]["lease"], status=models.FAILED, retry=False),  # failed
            Outcome(id=claimed[0]["id"], lease="stale"),                                                # conflict
            Outcome(id="no-such-job", lease="x"),                                                       # unknown
        ])
        assert [a["ok"] for a in answers] == [True, True, True, False, False]
        await check("complete: finished, retried, failed, conflicts")
        failed = claimed[2]["id"]
        assert (await store.get(failed))["status"] == models.FAILED
        await store.retry(failed)
        await check("retry a failed job")

        pending = (await store.list_jobs(queue="a", status=models.PENDING))[0]
        await store.abort(pending["id"])
        await check("abort a pending job")
        (running,) = await store.claim(["a"], "w1")
        await store.abort(running["id"])
        await check("abort a started job")
        await store.retry(running["id"])
        await check("retry an aborted job")

        (released,) = await store.claim(["a"], "w1")
        await store.release([(released["id"], released["lease"])])
        await check("release")

        await store.update_data(released["id"], {"x": 1})
        await check("update data")

        # A claim that takes the new job as it is enqueued, and one that takes an older job
        # of higher priority while the new one waits.
        _, taken = await store.enqueue_and_claim(job("c"), ["c"], "w2")
        assert len(taken) == 1
        await check("enqueue and claim: the new job leased")
        await store.enqueue([job("c", priority=5)])
        doc, taken = await store.enqueue_and_claim(job("c"), ["c"], "w2")
        assert taken[0]["id"] != doc["id"]
        await check("enqueue and claim: the new job waits")

        # Leases that expire: a job with attempts left goes back, one without fails.
        lost = await store.claim(["b"], "w3", limit=3, lease_seconds=0.001)
        assert {j["max_attempts"] for j in lost} == {1, models.DEFAULT_MAX_ATTEMPTS}
        await asyncio.sleep(0.01)
        assert await store.requeue_expired() == 3
        await check("requeue expired leases")

        # TQueues' DELETE: an unfenced completion of a job that is not running.
        (waiting,) = [d for d in await store.list_jobs(queue="b", status=models.PENDING)][:1]
        await store.complete([Outcome(id=waiting["id"], lease=None)])
        await check("unfenced completion of a pending job")

        # Operations of one turn of the loop share a group; one that fails rolls back alone.
        results = await asyncio.gather(store.enqueue([job("d"), job("d")]), store.abort("no-such-job"),
                                       store.claim(["a"], "w4", limit=2), return_exceptions=True)
        assert isinstance(results[1], JobNotFound)
        await check("a group with a failed operation")

        assert await store.prune(0) > 0
        await check("prune")
        assert counted(path), "jobs must remain for the check to mean something"
    finally:
        await store.close()
    assert len(steps) == 16


@pytest.mark.parametrize("status_first", [True, False])
async def test_given_a_file_of_schema_version_2_when_opened_then_its_jobs_are_counted(
        tmp_path: Path, status_first: bool) -> None:
    path = tmp_path / "v2.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.enqueue([job("a") for _ in range(4)] + [job("b")])
    if status_first:
        (started,) = await store.claim(["a"], "w")
        await store.complete([Outcome(id=started["id"], lease=started["lease"])])
    await store.close()
    expected = counted(path)
    # Given a file as tqueues with schema version 2 left it: no queue_counts
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE queue_counts")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.commit()
    # When this tqueues opens it
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        # Then every job is counted, the file is at this schema version, and writes keep counting
        assert kept(path) == expected
        with closing(sqlite3.connect(path)) as conn:
            (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == "3"
        await store.enqueue([job("b")])
        assert kept(path) == counted(path) == {**expected, ("b", models.PENDING): 2}
    finally:
        await store.close()
