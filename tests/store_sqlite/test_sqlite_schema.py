"""The SQLite file's schema: a file made by an older tqueues is brought up to date on open."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from support.events import check_event_forms

from tqueues import models
from tqueues.store import open_store
from tqueues.store.base import Outcome


def indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


async def test_given_a_file_with_the_old_index_of_every_pending_job_when_opened_then_only_delayed_jobs_are_indexed(
        tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.enqueue([models.NewJob(queue="q", method="m:f"),
                         models.NewJob(queue="q", method="m:f", run_at=models.now() + 60)])
    await store.close()
    # Given the index an older tqueues kept on every pending job
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX jobs_delayed")
    conn.execute("CREATE INDEX jobs_next ON jobs (queue, run_at) WHERE status = 'pending'")
    conn.commit()
    conn.close()
    # When this tqueues opens the file
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        # Then the old index is gone, the delayed-jobs index is there and answers next_run_at
        assert "jobs_next" not in indexes(path) and "jobs_delayed" in indexes(path)
        conn = sqlite3.connect(path)
        (delayed,) = conn.execute("SELECT COUNT(*) FROM jobs INDEXED BY jobs_delayed"
                                  " WHERE status = 'pending' AND run_at > created_at AND queue = 'q'").fetchone()
        conn.close()
        assert delayed == 1
        assert await store.next_run_at(["q"]) is not None
    finally:
        await store.close()


async def test_job_events_are_stored_as_value_arrays_and_events_written_as_objects_still_read(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()

    async def write_old_event(job: dict[str, Any], old: dict[str, Any]) -> None:
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("INSERT INTO events (seq, ts, kind, queue, job_id, doc) VALUES (1000, ?, 'job.started', 'q', ?, ?)",
                         (models.now(), job["id"], models.dumps_str(old)))

    async def created_is_array() -> bool:
        with closing(sqlite3.connect(path)) as conn:
            (kind, stored) = conn.execute("SELECT typeof(doc), doc FROM events WHERE kind = 'job.created'").fetchone()
        return kind == "text" and stored.startswith("[1,") and '"method"' not in stored

    try:
        await check_event_forms(store, write_old_event, created_is_array)
    finally:
        await store.close()


async def test_execution_rows_are_written_when_attempts_end_and_rows_an_older_version_wrote_are_replaced(
        tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    try:
        await store.enqueue([models.NewJob(queue="q", method="m:f") for _ in range(4)])
        old, finish, fail, give_back = await store.claim(["q"], "w1", 4)
        # Given a file where an older tqueues wrote the running attempt's row at the claim
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("INSERT INTO executions (job_id, attempt, worker, lease, status, started_at)"
                         " VALUES (?, 1, 'w1', ?, 'started', ?)", (old["id"], old["lease"], old["started_at"]))
            conn.commit()

            def stored() -> list[tuple[Any, ...]]:
                return conn.execute("SELECT job_id, attempt, status FROM executions ORDER BY job_id").fetchall()

            # Then the claim of this version wrote no row: the running attempts are read from the jobs
            assert stored() == [(old["id"], 1, "started")]
            running = [await store.executions(j["id"]) for j in (old, finish)]
            assert [[(e["attempt"], e["worker"], e["status"], e["finished_at"]) for e in r] for r in running] == [
                [(1, "w1", "started", None)]] * 2
            # When the attempts end (one finished as a batch, one failed, one lost, one handed back)
            await store.complete([Outcome(id=j["id"], lease=j["lease"], status=models.FINISHED) for j in (old, finish)])
            await store.complete([Outcome(id=fail["id"], lease=fail["lease"], status=models.FAILED, retry=False,
                                          error=models.error_doc("E", "no"))])
            await store.release([(give_back["id"], give_back["lease"])])
            # Then each ended attempt has its one row, with its worker and start, and the handed back none
            assert sorted(stored()) == sorted([(old["id"], 1, "finished"), (finish["id"], 1, "finished"),
                                               (fail["id"], 1, "failed")])
            [done] = await store.executions(finish["id"])
            assert (done["worker"], done["started_at"]) == ("w1", finish["started_at"]) and done["finished_at"]
            assert conn.execute("SELECT lease FROM executions WHERE job_id = ?", (finish["id"],)).fetchone() == (
                finish["lease"],)
            assert await store.executions(give_back["id"]) == []
    finally:
        await store.close()


async def test_new_jobs_are_stored_exactly_as_their_documents_rows_whatever_the_batch_size(tmp_path: Path) -> None:
    # A batch enqueue binds only what varies between new jobs (the rest are constants of its
    # statement): the stored rows must be those job_row writes for the same documents.
    from tqueues.store.sqlite import COLS, job_row

    path = tmp_path / "rows.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    now = models.now()
    specs = [models.NewJob(queue="q", method="m:f", args=[i, "x"], kwargs={"k": i} if i % 2 else {},
                           priority=i % 3, run_at=now + 60 if i % 5 == 0 else None, max_attempts=1 + i % 4,
                           timeout=2.5 if i % 3 else None, key=f"key-{i}" if i % 7 == 0 else None,
                           backoff=0.5, data={"d": [i]} if i % 4 else {}, secrets=["s"] if i == 3 else [])
             for i in range(37)]   # one statement of 32 rows and five of one
    batch = await store.enqueue(specs)
    (single, _), = await store.enqueue([models.NewJob(queue="q", method="m:g")])
    # and one enqueued for a parked claim that takes a ready job of higher priority instead
    waiting, claimed = await store.enqueue_and_claim(models.NewJob(queue="q", method="m:h"), ["q"], "w1")
    assert waiting["status"] == models.PENDING and [j["id"] for j in claimed] != [waiting["id"]]
    await store.close()
    taken = {j["id"] for j in claimed}
    docs = [doc for doc, created in batch if created and doc["id"] not in taken] + [single, waiting]
    assert len(docs) == 38
    with closing(sqlite3.connect(path)) as conn:
        rows = {row[0]: list(row) for row in conn.execute(f"SELECT {COLS} FROM jobs")}
    assert len(rows) == 39
    for doc in docs:
        assert rows[doc["id"]] == job_row(doc), doc["id"]
    assert rows[batch[3][0]["id"]][-1] == '["s"]' and rows[batch[0][0]["id"]][-1] == "null"
