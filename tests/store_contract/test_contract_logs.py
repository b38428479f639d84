"""Contract: captured output lines of jobs."""

from __future__ import annotations

import pytest
from store_contract.contract_helpers import finish, put, take

from tqueues import models
from tqueues.errors import InvalidRequest, JobNotFound
from tqueues.store import Store


def line(job_id: str, text: str, attempt: int = 1, stream: str = "stdout") -> dict:
    return {"job_id": job_id, "attempt": attempt, "stream": stream, "line": text, "ts": models.now()}


async def test_given_lines_of_two_jobs_when_stored_then_each_job_reads_its_own_in_order(store: Store) -> None:
    a, b = await put(store), await put(store)
    stored = await store.append_logs([line(a["id"], "a1"), line(b["id"], "b1"), line(a["id"], "a2", stream="stderr"),
                                      line(b["id"], "b2", stream="log")])
    assert stored == 4
    got_a = await store.logs(a["id"])
    assert [(l["line"], l["stream"], l["attempt"]) for l in got_a] == [("a1", "stdout", 1), ("a2", "stderr", 1)]
    assert [l["line"] for l in await store.logs(b["id"])] == ["b1", "b2"]
    assert got_a[0]["id"] < got_a[1]["id"]


async def test_given_stored_lines_when_read_since_an_id_then_only_newer_lines_come(store: Store) -> None:
    job = await put(store)
    await store.append_logs([line(job["id"], f"l{i}") for i in range(5)])
    first = await store.logs(job["id"], limit=2)
    assert [l["line"] for l in first] == ["l0", "l1"]
    rest = await store.logs(job["id"], since=first[-1]["id"])
    assert [l["line"] for l in rest] == ["l2", "l3", "l4"]
    await store.append_logs([line(job["id"], "l5", attempt=2)])
    newer = await store.logs(job["id"], since=rest[-1]["id"])
    assert [(l["line"], l["attempt"]) for l in newer] == [("l5", 2)]


async def test_given_lines_when_stored_then_one_log_event_per_job_carries_them(store: Store) -> None:
    job = await put(store, queue="logs")
    before = await store.last_seq()
    await store.append_logs([line(job["id"], "x"), line(job["id"], "y")])
    events = await store.events_since(before)
    assert [e["kind"] for e in events] == ["job.log"]
    assert events[0]["queue"] == "logs" and events[0]["job_id"] == job["id"]
    assert [l["line"] for l in events[0]["new_val"]["lines"]] == ["x", "y"]


async def test_given_lines_of_an_unknown_job_then_they_are_skipped(store: Store) -> None:
    job = await put(store)
    assert await store.append_logs([line("no-such-job", "lost"), line(job["id"], "kept")]) == 1
    with pytest.raises(JobNotFound):
        await store.logs("no-such-job")


async def test_given_a_bad_stream_then_nothing_is_stored(store: Store) -> None:
    job = await put(store)
    with pytest.raises(InvalidRequest):
        await store.append_logs([line(job["id"], "ok"), line(job["id"], "bad", stream="stdin")])
    assert await store.logs(job["id"]) == []


async def test_given_a_pruned_job_then_its_lines_go_with_it(store: Store) -> None:
    job = await put(store)
    await store.append_logs([line(job["id"], "bye")])
    await finish(store, await take(store))
    assert await store.prune(older_than=0) == 1
    with pytest.raises(JobNotFound):
        await store.logs(job["id"])


async def test_given_a_failed_job_when_retried_then_it_is_pending_with_one_more_attempt(store: Store) -> None:
    from store_contract.contract_helpers import fail

    job = await put(store, max_attempts=1)
    failed = await fail(store, await take(store))
    assert failed["status"] == "failed"
    retried = await store.retry(job["id"])
    assert (retried["status"], retried["attempts"], retried["max_attempts"]) == ("pending", 1, 2)
    again = await take(store)
    assert again["id"] == job["id"] and again["attempts"] == 2
    assert [e["kind"] for e in await store.events_since(0, job_id=job["id"])][-2:] == ["job.retrying", "job.started"]


async def test_given_a_pending_or_finished_job_then_retry_is_a_conflict(store: Store) -> None:
    from tqueues.errors import Conflict

    pending = await put(store)
    with pytest.raises(Conflict):
        await store.retry(pending["id"])
    await finish(store, await take(store))
    with pytest.raises(Conflict):
        await store.retry(pending["id"])
    with pytest.raises(JobNotFound):
        await store.retry("nope")


async def test_stats_count_statuses_and_recent_outcomes(store: Store) -> None:
    from store_contract.contract_helpers import fail

    await put(store, queue="a")
    await put(store, queue="b")
    await put(store, queue="b", max_attempts=1)
    await finish(store, await take(store, queue="a"))
    await fail(store, await take(store, queue="b"), retry=False)
    stats = await store.stats(window=60)
    assert stats["counts"] == {"pending": 1, "started": 0, "finished": 1, "failed": 1, "aborted": 0}
    assert (stats["finished"], stats["failed"], stats["window"]) == (1, 1, 60)
    with pytest.raises(InvalidRequest):
        await store.stats(window=0)
