"""The SQLite store's writer: small operations run at once when the store is idle, a file
locked by another process makes them wait without blocking the event loop, concurrent
operations are committed in groups, and the WAL is checkpointed off the commit path."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tqueues import models
from tqueues.errors import JobNotFound, StoreUnavailable
from tqueues.store import Outcome, open_store
from tqueues.store.base import grouped
from tqueues.store import sqlite as sqlite_store


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """This module's tests are about the SQLite store: ``store`` opens this file."""
    return f"sqlite:///{tmp_path / 'q.db'}"


def spec(n: int, pad: str = "") -> models.NewJob:
    return models.NewJob(queue="w", method="m:f", args=[n, pad])


async def put(store, n: int = 1) -> dict:
    [(job, created)] = await store.enqueue([spec(n)])
    assert created
    return job


def watch_groups(monkeypatch: pytest.MonkeyPatch, signed: bool) -> list[int]:
    """The size of every group of writes run from now on, in order; with ``signed``, negative
    for a group run inline (begun by the caller on the loop) rather than on the writer thread."""
    sizes: list[int] = []
    original = sqlite_store._Writer._run_group

    def watched(self, batch, begun=False, **kwargs):
        sizes.append(-len(batch) if begun and signed else len(batch))
        return original(self, batch, begun, **kwargs)

    monkeypatch.setattr(sqlite_store._Writer, "_run_group", watched)
    return sizes


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every group of writes run, in order: its size, negative when it ran inline."""
    return watch_groups(monkeypatch, signed=True)


async def test_given_an_idle_store_then_a_single_enqueue_runs_without_the_writer_thread(store, runs) -> None:
    # When one job is enqueued on an idle store
    job = await put(store)
    # Then it ran inline (begun by the caller) as a group of one, and it is stored and evented
    assert runs == [-1]
    assert (await store.get(job["id"]))["status"] == "pending"
    assert [e["kind"] for e in await store.events_since(0, 10)][-1] == models.EV_CREATED


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group of writes run, in order."""
    return watch_groups(monkeypatch, signed=False)


async def test_given_an_idle_store_then_a_full_claim_and_its_report_run_on_the_loop(store, runs) -> None:
    # Given a thousand pending jobs
    await store.enqueue([spec(n) for n in range(models.MAX_CLAIM)])
    del runs[:]
    # When a worker claims as many as a claim may, and reports them all finished
    jobs = await store.claim(["w"], "worker-1", models.MAX_CLAIM, 30.0)
    items = await store.complete([Outcome(j["id"], j["lease"], models.FINISHED, result=j["args"][0]) for j in jobs])
    # Then both ran inline (begun by the caller), each a group of one, and every job finished
    assert runs == [-1, -1]
    assert len(jobs) == models.MAX_CLAIM and all(i["ok"] for i in items)
    assert (await store.get(jobs[-1]["id"]))["status"] == models.FINISHED


async def test_given_writes_of_one_turn_touching_more_than_inline_items_then_they_run_on_the_loop_in_groups(
        store, runs, monkeypatch) -> None:
    # Given twenty pending jobs and a limit of 8 jobs a group run on the loop may touch
    monkeypatch.setattr(sqlite_store, "INLINE_ITEMS", 8)
    await store.enqueue([spec(n) for n in range(20)])
    del runs[:]
    # When, in one turn, a claim of 5 runs at once and two more claims of 5 follow it
    claims = await asyncio.gather(*(store.claim(["w"], f"worker-{k}", 5, 30.0) for k in range(3)))
    # Then the first ran inline alone, and the other two (10 jobs together) each as a group of
    # its own on the loop, one turn apart, not on the thread
    assert runs == [-1, -1, -1]
    assert sorted(len(c) for c in claims) == [5, 5, 5]
    # And small writes of one turn share a group within the limit: four claims of 2 jobs
    await store.enqueue([spec(n) for n in range(20, 28)])
    del runs[:]
    claims = await asyncio.gather(*(store.claim(["w"], f"worker-2-{k}", 2, 30.0) for k in range(5)))
    assert runs == [-1, -4]
    assert sorted(len(c) for c in claims) == [2, 2, 2, 2, 2]
    # And a single claim over the limit goes to the thread
    assert len(await store.claim(["w"], "worker-9", 9, 30.0)) == 3
    assert runs == [-1, -4, 1]


async def test_given_an_enqueue_and_the_claims_it_adopted_then_they_share_a_group_however_large(
        store, runs, monkeypatch) -> None:
    # Given a limit of 4 jobs a group on the loop may touch
    monkeypatch.setattr(sqlite_store, "INLINE_ITEMS", 4)
    await put(store, 0)
    del runs[:]
    # When, in one turn, a claim of 1 runs at once, then two grouped blocks each enqueue 3
    # jobs with a claim of 1 beside them (4 jobs a block: together past the limit)
    await asyncio.sleep(0)
    first = asyncio.ensure_future(store.claim(["w"], "worker-0", 1, 30.0))
    blocks = []
    for k in range(2):
        with grouped():
            blocks.append((asyncio.ensure_future(store.enqueue([spec(n) for n in (10 * k + 1, 10 * k + 2, 10 * k + 3)])),
                           asyncio.ensure_future(store.claim(["w"], f"worker-{k + 1}", 1, 30.0))))
    await first
    for enqueued, claim in blocks:
        await enqueued
        assert len(await claim) == 1
    # Then each block was one transaction (the enqueue and its claim), on the loop
    assert runs == [-1, -2, -2]


async def test_given_concurrent_enqueues_then_they_share_commits(store, groups) -> None:
    # When 200 enqueues are made at once
    jobs = await asyncio.gather(*(put(store, i) for i in range(200)))
    # Then all are stored, and far fewer transactions than operations were committed
    assert len({j["id"] for j in jobs}) == 200
    assert sum(groups) == 200
    assert len(groups) < 50, groups


async def test_given_the_file_locked_by_another_process_then_writes_wait_and_the_loop_stays_free(
        store, tmp_path: Path) -> None:
    # Given another connection holding the write lock of the file
    other = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        pending = asyncio.ensure_future(put(store))
        # When the loop keeps ticking while the write waits
        ticks = 0
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            await asyncio.sleep(0.01)
            ticks += 1
        # Then the loop was never blocked and the write has not failed
        assert ticks >= 25
        assert not pending.done()
    finally:
        other.execute("COMMIT")
        other.close()
    # And once the lock is released, it lands
    job = await asyncio.wait_for(pending, 10)
    assert (await store.get(job["id"]))["status"] == "pending"


async def test_given_a_claim_and_its_outcome_inline_then_the_job_finishes_once(store) -> None:
    job = await put(store)
    [claimed] = await store.claim(["w"], "worker-1", 10, 30.0)
    [result] = await store.complete([Outcome(job["id"], claimed["lease"], models.FINISHED, result=7)])
    assert result["ok"], result
    done = await store.get(job["id"])
    assert (done["status"], done["result"], done["attempts"]) == ("finished", 7, 1)
    assert await store.claim(["w"], "worker-1", 10, 30.0) == []


async def test_given_a_growing_wal_then_the_checkpointer_copies_it_back(store, tmp_path: Path, monkeypatch) -> None:
    # Given a checkpoint threshold the test can reach quickly
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_BYTES", 256 * 1024)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 0.05)
    db, wal = tmp_path / "q.db", str(tmp_path / "q.db") + "-wal"
    before = os.path.getsize(db)
    # When a few thousand jobs are written
    for start in range(0, 4000, 500):
        await store.enqueue([spec(i, "x" * 200) for i in range(start, start + 500)])
    # Then the database file itself grows (pages were checkpointed into it) without any commit
    # doing it (the writer's connection has autocheckpoint off)
    deadline = time.monotonic() + 10
    while os.path.getsize(db) <= before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert os.path.getsize(db) > before + 256 * 1024
    assert os.path.exists(wal)
    writer_conn = store._writer.conn
    assert writer_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0


async def test_given_writes_that_never_pause_then_the_wal_starts_over_instead_of_growing(
        db_url: str, tmp_path: Path, monkeypatch) -> None:
    # Given small thresholds, set before the store opens (the WAL's size once it starts over is
    # a setting of the writer's connection)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_BYTES", 256 * 1024)
    monkeypatch.setattr(sqlite_store, "WAL_LIMIT_BYTES", 1024 * 1024)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 0.02)
    wal = str(tmp_path / "q.db") + "-wal"
    store = open_store(db_url)
    await store.open()
    try:
        # When jobs are enqueued, claimed and finished with no pause between the writes, for
        # about 40 MB of WAL pages (each job writes some 4 kB)
        largest, finished = 0, 0
        for start in range(0, 10_000, 100):
            await store.enqueue([spec(i) for i in range(start, start + 100)])
            jobs = await store.claim(["w"], "worker-1", 100, 30.0)
            results = await store.complete([Outcome(j["id"], j["lease"], "finished", 1) for j in jobs])
            finished += sum(1 for r in results if r["ok"])
            largest = max(largest, os.path.getsize(wal))
        # Then the WAL stayed within a few times its limit: restarting checkpoints made the
        # writer use it again from its start (a passive checkpoint alone never does while
        # writes follow one another, and the file grew by every page written)
        assert largest < 12 * 1024 * 1024, f"the WAL grew to {largest:,} bytes"
        # And every job was written in full
        assert finished == 10_000
        [queue] = [q for q in await store.queues() if q["name"] == "w"]
        assert queue["counts"]["finished"] == 10_000 and queue["counts"]["pending"] == 0
    finally:
        await store.close()


async def test_given_a_failing_operation_in_a_group_then_only_it_fails_and_the_group_reruns_with_savepoints(
        store, monkeypatch) -> None:
    attempts: list[tuple[int, bool]] = []
    original = sqlite_store._Writer._attempt_group

    def watched(self, batch, begun, savepoints):
        attempts.append((len(batch), savepoints))
        return original(self, batch, begun, savepoints)

    monkeypatch.setattr(sqlite_store._Writer, "_attempt_group", watched)
    before = await store.last_seq()
    # When five enqueues and an operation that writes, then fails, are submitted together as
    # one group (first tried on the loop without savepoints)
    def half_done(tx) -> None:
        tx.conn.execute("INSERT INTO queues (name, paused, created_at, updated_at) VALUES ('half', 0, 0, 0)")
        raise JobNotFound("no job has id 'x'", id="x")

    with grouped():
        outcomes = await asyncio.gather(*(store.enqueue([models.NewJob(queue="g", method="m:f", args=[i])])
                                          for i in range(5)),
                                        store._write(half_done, items=1), return_exceptions=True)
    # Then the group ran once without savepoints, was rolled back, and ran again with them
    assert attempts == [(6, False), (6, True)]
    # And that operation alone failed, leaving nothing behind
    assert isinstance(outcomes[-1], JobNotFound)
    assert "half" not in {q["name"] for q in await store.queues()}
    jobs = [result[0][0] for result in outcomes[:5]]
    for job in jobs:
        assert (await store.get(job["id"]))["status"] == "pending"
    # And each enqueue has exactly one event, numbered without a gap
    events = await store.events_since(before)
    assert [e["job_id"] for e in events] == [j["id"] for j in jobs]
    assert [e["seq"] for e in events] == list(range(before + 1, before + 6))
    # And the next group runs without savepoints again
    attempts.clear()
    with grouped():
        await asyncio.gather(*(store.enqueue([models.NewJob(queue="g", method="m:f")]) for _ in range(3)))
    assert attempts == [(3, False)]


async def test_given_a_single_failing_operation_then_it_fails_alone_and_nothing_of_it_is_kept(store) -> None:
    before = await store.last_seq()
    with pytest.raises(JobNotFound):
        await store.abort("no-such-job")
    assert await store.last_seq() == before
    job = await put(store)
    assert (await store.get(job["id"]))["status"] == "pending"


async def test_given_an_idle_store_and_a_known_queue_then_an_enqueue_is_one_lean_transaction(store) -> None:
    await put(store)   # the queue is now known
    statements: list[str] = []
    store._writer.conn.set_trace_callback(statements.append)
    try:
        await put(store)
    finally:
        store._writer.conn.set_trace_callback(None)
    # No savepoints, no busy-timeout changes, no queue insert: only the writes themselves (the
    # job, its queue's count, its event)
    verbs = [" ".join(s.split()[:3]).upper() for s in statements]
    assert verbs == ["BEGIN IMMEDIATE", "INSERT INTO JOBS", "INSERT INTO QUEUE_COUNTS",
                     "INSERT INTO EVENTS", "COMMIT"], statements
    assert "queues" not in " ".join(statements)


async def test_given_inline_and_threaded_groups_alternating_then_no_connection_setting_changes(
        store, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_store, "INLINE_ITEMS", 8)
    await put(store)   # the queue is now known
    statements: list[str] = []
    store._writer.conn.set_trace_callback(statements.append)
    try:
        # When an inline enqueue, a claim too large to run inline, and an inline enqueue follow
        await put(store, 2)
        claimed = await store.claim(["w"], "worker-1", 9, 30.0)
        await put(store, 3)
    finally:
        store._writer.conn.set_trace_callback(None)
    assert len(claimed) == 2
    # Then each group is only its own writes: no PRAGMA switches the busy timeout back and forth
    assert [s for s in statements if s.upper().startswith("PRAGMA")] == []
    assert sum(s.upper().startswith("BEGIN IMMEDIATE") for s in statements) == 3


async def test_given_the_file_locked_by_another_process_then_a_threaded_group_waits_for_it(
        store, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(sqlite_store, "INLINE_ITEMS", 8)
    other = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        # When a claim too large to run inline is made while another process holds the lock
        pending = asyncio.ensure_future(store.claim(["w"], "worker-1", 9, 30.0))
        await asyncio.sleep(0.3)
        # Then it waits instead of failing
        assert not pending.done()
    finally:
        other.execute("COMMIT")
        other.close()
    assert await asyncio.wait_for(pending, 10) == []


async def test_given_a_batch_not_a_multiple_of_the_insert_chunk_then_every_row_is_stored_as_given(store) -> None:
    count = 2 * sqlite_store.INSERT_CHUNK + 5
    since = await store.last_seq()
    statements: list[str] = []
    store._writer.conn.set_trace_callback(statements.append)
    try:
        # When a batch of 69 jobs, each with its own arguments, is enqueued
        results = await store.enqueue([models.NewJob(queue="w", method="m:f", args=[n, f"pad-{n}"], data={"n": n})
                                       for n in range(count)])
    finally:
        store._writer.conn.set_trace_callback(None)
    # Then two statements of 32 rows and 5 of one row stored the jobs, and two plus five the events
    job_inserts = [s for s in statements if s.startswith("INSERT INTO jobs")]
    event_inserts = [s for s in statements if s.startswith("INSERT INTO events")]
    assert len(job_inserts) == len(event_inserts) == 2 + 5
    # And each job reads back exactly as it was sent, in order, with its created event in order
    for n, (job, created) in enumerate(results):
        assert created
        stored = await store.get(job["id"])
        assert (stored["args"], stored["data"], stored["status"]) == ([n, f"pad-{n}"], {"n": n}, "pending")
        assert stored == job
    events = await store.events_since(since, 1000)
    assert [e["job_id"] for e in events] == [job["id"] for job, _ in results]
    assert [e["seq"] for e in events] == list(range(since + 1, since + count + 1))
    assert all(e["new_val"] == job for e, (job, _) in zip(events, results))


@pytest.mark.parametrize("value", [None, {}, [], "null", "{}", 0, "", {"a": None}, [None, {}], {"k": "{}"}])
def test_given_any_json_value_in_a_json_column_then_it_reads_back_as_written(value) -> None:
    doc = {key: None for key in sqlite_store.JOB_KEYS}
    for name in sqlite_store.JSON_COLS:
        doc[name] = value
    assert sqlite_store.row_to_job(sqlite_store.job_row(doc)) == doc


@pytest.mark.parametrize("count", [1, 2, 33])
async def test_given_events_another_process_wrote_then_the_next_events_follow_them_in_order(
        store, tmp_path: Path, count: int) -> None:
    await put(store)
    # Given an event row another process wrote, with a seq far beyond the store's
    other = sqlite3.connect(tmp_path / "q.db")
    other.execute("INSERT INTO events (seq, ts, kind, queue, job_id, doc) VALUES (5000, 0, 'queue', 'w', NULL, '{}')")
    other.commit()
    other.close()
    # When the store writes events (one statement or several), they continue after it, in order
    sub = store.subscribe()
    results = await store.enqueue([spec(n) for n in range(count)])
    published = await sub.get()
    sub.close()
    assert [e["seq"] for e in published] == list(range(5001, 5001 + count))
    stored = await store.events_since(5000, 1000)
    assert [(e["seq"], e["job_id"]) for e in stored] == [(e["seq"], e["job_id"]) for e in published]
    assert [e["job_id"] for e in stored] == [job["id"] for job, _ in results]
    assert await store.last_seq() == 5000 + count


async def test_given_an_idle_store_then_a_small_write_commits_within_the_call(store) -> None:
    # Given an idle store (nothing written in this turn of the loop, nothing on its way)
    await asyncio.sleep(0.01)
    before = await store.last_seq()
    # When an enqueue is driven by hand, without the event loop
    call = store.enqueue([spec(1)])
    with pytest.raises(StopIteration) as stopped:
        call.send(None)   # it never suspends: it committed on its first step
    [(job, created)] = stopped.value.value
    assert created
    # Then it is stored and its event published like any other write's
    assert (await store.get(job["id"]))["status"] == "pending"
    assert [e["job_id"] for e in await store.events_since(before)] == [job["id"]]


async def test_given_writes_in_one_turn_then_only_the_first_runs_at_once_and_the_others_share_a_group(
        store, groups) -> None:
    await asyncio.sleep(0.01)
    # When six enqueues start in the same turn of the loop
    jobs = await asyncio.gather(*(put(store, i) for i in range(6)))
    # Then the first committed alone at once and the five others together
    assert groups == [1, 5]
    assert len({j["id"] for j in jobs}) == 6


async def test_given_the_inline_runner_itself_fails_then_each_write_of_the_turn_gets_store_unavailable(
        store, monkeypatch) -> None:
    def broken(self, ops):
        raise RuntimeError("disk vanished")

    monkeypatch.setattr(sqlite_store._Writer, "try_inline", broken)
    await asyncio.sleep(0.01)
    # When three small writes start in one turn (the first runs at once, the others as a group)
    outcomes = await asyncio.gather(*(put(store, i) for i in range(3)), return_exceptions=True)
    # Then every one of them fails as the database being unavailable, none waits forever
    assert [type(o) for o in outcomes] == [StoreUnavailable] * 3
    assert all("disk vanished" in str(o) for o in outcomes)


def hold_the_thread(store) -> tuple[asyncio.Future, threading.Event]:
    """A write of no given size (the writer thread's), which keeps the thread busy until the
    returned event is set."""
    release = threading.Event()

    def held(tx):
        assert release.wait(30)

    return asyncio.ensure_future(store._write(held)), release


async def claims_behind_the_thread(store, runs, monkeypatch, sizes: tuple[int, ...]):
    """Twenty pending jobs, a limit of 8 jobs a group on the loop may touch, and the writer
    thread held; then a claim of each of ``sizes`` jobs, each in a turn of the loop of its own.
    The claims (not yet answered) and the thread's holder with its release."""
    monkeypatch.setattr(sqlite_store, "INLINE_ITEMS", 8)
    await store.enqueue([spec(n) for n in range(20)])
    del runs[:]
    holder, release = hold_the_thread(store)
    await asyncio.sleep(0.05)
    claims = []
    for size in sizes:
        claims.append(asyncio.ensure_future(store.claim(["w"], f"worker-{len(claims)}", size, 30.0)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    return claims, holder, release


async def test_given_the_writer_thread_busy_then_the_turns_that_follow_wait_and_run_on_the_loop_joined(
        store, runs, monkeypatch) -> None:
    # Given twenty pending jobs, a limit of 8 jobs a group on the loop may touch, and the thread
    # held; when claims of 2, 2, 2 and 5 jobs come in four turns of the loop while it is busy
    claims, holder, release = await claims_behind_the_thread(store, runs, monkeypatch, (2, 2, 2, 5))
    # Then none has run, and the loop was free to run this test meanwhile
    await asyncio.sleep(0.05)
    assert not any(c.done() for c in claims)
    assert runs == [1]
    # And once the thread is done, the first three (6 jobs) run on the loop as one group, and
    # the fourth, which would take the group past 8 jobs, as a group of its own after it
    release.set()
    got = await asyncio.wait_for(asyncio.gather(*claims), 10)
    await holder
    assert runs == [1, -3, -1]
    assert [len(c) for c in got] == [2, 2, 2, 5]
    assert len({j["id"] for c in got for j in c}) == 11


async def test_given_turns_waiting_for_the_thread_then_one_too_large_for_the_loop_keeps_its_place(
        store, runs, monkeypatch) -> None:
    # Given pending jobs, a limit of 8 jobs inline, and the thread held; when a claim of 3, then
    # one of 9 (too large to run inline), then one of 1 come in turn
    claims, holder, release = await claims_behind_the_thread(store, runs, monkeypatch, (3, 9, 1))
    release.set()
    got = await asyncio.wait_for(asyncio.gather(*claims), 10)
    await holder
    # Then they ran in the order they came: 3 on the loop, 9 on the thread, then 1 on the loop,
    # each claim taking the oldest jobs left
    assert runs == [1, -1, 1, -1]
    assert [[j["args"][0] for j in c] for c in got] == [[0, 1, 2], list(range(3, 12)), [12]]


async def test_given_turns_waiting_for_the_thread_when_the_store_closes_then_they_are_answered(store) -> None:
    # Given a job and the thread held
    job = await put(store)
    holder, release = hold_the_thread(store)
    await asyncio.sleep(0.05)
    # When a claim waits for the thread and the store closes meanwhile
    claim = asyncio.ensure_future(store.claim(["w"], "worker-1", 1, 30.0))
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(closing, 10)
    await holder
    # Then the claim was not left waiting: it ran before the store closed
    [claimed] = await asyncio.wait_for(claim, 10)
    assert claimed["id"] == job["id"]
