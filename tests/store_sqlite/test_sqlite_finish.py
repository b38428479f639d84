"""The SQLite store finishes the jobs it claimed from their claimed documents, without reading
their rows back, as long as nothing wrote to them since: not this store, not another process
writing the same file. What it remembers is bounded, and a job it forgot finishes as well."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from tqueues import models
from tqueues.store import Outcome


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """This module's tests are about the SQLite store: ``store`` opens this file."""
    return f"sqlite:///{tmp_path / 'q.db'}"


def specs(count: int) -> list[models.NewJob]:
    return [models.NewJob(queue="f", method="m:f", args=[n], data={"n": n}) for n in range(count)]


async def test_given_claimed_jobs_then_they_are_remembered_until_they_finish(store) -> None:
    # Given jobs claimed by this store
    await store.enqueue(specs(5))
    jobs = await store.claim(["f"], "w", 5)

    # Then their claimed documents are remembered (the finish reads none of their rows back)
    assert set(store._claimed.docs) == {j["id"] for j in jobs}

    # When they finish, they are forgotten, and each finished document is the stored row
    items = await store.complete([Outcome(j["id"], j["lease"], result=j["args"][0] * 10) for j in jobs])
    assert store._claimed.docs == {}
    for job, item in zip(jobs, items):
        assert item["ok"] and item["job"] == await store.get(job["id"])
        assert item["job"]["result"] == job["args"][0] * 10


async def test_given_another_process_wrote_to_a_started_job_when_it_finishes_then_its_document_has_that_write(
        store, tmp_path: Path) -> None:
    # Given a started job, whose row another process then changes (a second writer of the file)
    await store.enqueue(specs(1))
    [job] = await store.claim(["f"], "w", 1)
    other = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    try:
        other.execute("UPDATE jobs SET data = ?, priority = 9, updated_at = ? WHERE id = ?",
                      ('{"from": "elsewhere"}', models.now() + 1, job["id"]))
    finally:
        other.close()

    # When its worker reports it finished
    [item] = await store.complete([Outcome(job["id"], job["lease"], result="done")])

    # Then the finished document is the row as it is now, with the other process' write
    assert item["ok"]
    assert (item["job"]["data"], item["job"]["priority"], item["job"]["result"]) == ({"from": "elsewhere"}, 9, "done")
    assert item["job"] == await store.get(job["id"])


async def test_given_more_started_jobs_than_it_remembers_then_the_oldest_are_forgotten_and_all_finish(
        store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a store that remembers at most 4 claimed jobs, and 10 started in two claims
    monkeypatch.setattr(store._claimed, "limit", 4)
    await store.enqueue(specs(10))
    first = await store.claim(["f"], "w", 6)
    second = await store.claim(["f"], "w", 4)

    # Then it remembers the 4 claimed last
    assert set(store._claimed.docs) == {j["id"] for j in second}

    # And when all 10 finish in one report, each finishes, its document the stored row
    jobs = first + second
    items = await store.complete([Outcome(j["id"], j["lease"], result=[j["args"][0]]) for j in jobs])
    for job, item in zip(jobs, items):
        assert item["ok"] and item["job"] == await store.get(job["id"]), item
    assert store._claimed.docs == {}


async def test_given_a_lease_lost_and_the_job_claimed_again_then_the_old_lease_is_refused_and_the_new_one_finishes(
        store) -> None:
    # Given a job claimed, its lease expired and requeued, and claimed again by another worker
    await store.enqueue(specs(1))
    [old] = await store.claim(["f"], "w1", 1, lease_seconds=0.01)
    await asyncio.sleep(0.05)
    assert await store.requeue_expired() == 1
    [new] = await store.claim(["f"], "w2", 1)
    assert new["lease"] != old["lease"] and store._claimed.docs[new["id"]]["lease"] == new["lease"]

    # When the first worker reports it finished, then the second
    [stale] = await store.complete([Outcome(old["id"], old["lease"], result=1)])
    [fresh] = await store.complete([Outcome(new["id"], new["lease"], result=2)])

    # Then the stale report changes nothing, and the job finishes with the second's result
    assert not stale["ok"]
    assert fresh["ok"] and fresh["job"]["result"] == 2 and fresh["job"]["attempts"] == 2
    assert fresh["job"] == await store.get(new["id"])
