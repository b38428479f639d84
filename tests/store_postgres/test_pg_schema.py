"""The PostgreSQL schema: a database made by an older tqueues is migrated on open."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from support.events import check_event_forms

from tqueues import models
from tqueues.store import open_store
from tqueues.store.base import Outcome, Store
from tqueues.store.postgres import SCHEMA_VERSION


@pytest.fixture
def db_url(pg_url: str) -> str:
    return pg_url


async def index_names(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'tqueues_jobs'")}
    finally:
        await conn.close()


async def as_version(url: str, version: int, *statements: str) -> None:
    """Turn a current database back into what tqueues left at ``version``: run ``statements``
    and record that version."""
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
        await conn.execute("UPDATE tqueues_meta SET value = $1 WHERE key = 'schema_version'", str(version))
    finally:
        await conn.close()


@asynccontextmanager
async def opened_after(url: str, version: int, *statements: str,
                       before: Callable[[Store], Awaitable[Any]] | None = None) -> AsyncIterator[Store]:
    """A store opened by this tqueues on a database turned back into what tqueues left at
    ``version`` (see as_version); ``before`` runs on the store that made it, first."""
    store = open_store(url)
    await store.open()
    try:
        if before is not None:
            await before(store)
    finally:
        await store.close()
    await as_version(url, version, *statements)
    store = open_store(url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_given_a_version_3_database_when_opened_then_it_is_migrated_to_the_delayed_jobs_index(db_url: str) -> None:
    # Given the schema as tqueues left it at version 3, holding a delayed job; when this tqueues opens it
    async with opened_after(db_url, 3, "DROP INDEX tqueues_jobs_delayed",
                            "CREATE INDEX tqueues_jobs_next ON tqueues_jobs (queue, run_at) WHERE status = 'pending'",
                            before=lambda store: store.enqueue([models.NewJob(queue="q", method="m:f",
                                                                              run_at=models.now() + 60)])) as store:
        # Then it is at the current version, with the new index in place of the old one
        names = await index_names(db_url)
        assert "tqueues_jobs_next" not in names and "tqueues_jobs_delayed" in names
        conn = await asyncpg.connect(db_url)
        assert await conn.fetchval("SELECT value FROM tqueues_meta WHERE key = 'schema_version'") == str(SCHEMA_VERSION)
        await conn.close()
        assert await store.next_run_at(["q"]) is not None


async def test_given_a_version_4_database_when_opened_then_keys_are_unique_through_a_partial_index(db_url: str) -> None:
    # Given the schema as tqueues left it at version 4: a UNIQUE constraint on the key column
    async with opened_after(db_url, 4, "DROP INDEX tqueues_jobs_key",
                            "ALTER TABLE tqueues_jobs ADD CONSTRAINT tqueues_jobs_key_key UNIQUE (key)") as store:
        # Then only jobs with a key have an entry in the key index, and a key is still taken once
        names = await index_names(db_url)
        assert "tqueues_jobs_key_key" not in names and "tqueues_jobs_key" in names
        conn = await asyncpg.connect(db_url)
        definition = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'tqueues_jobs_key'")
        assert "UNIQUE" in definition and "WHERE (key IS NOT NULL)" in definition
        await conn.close()
        [(first, created)] = await store.enqueue([models.NewJob(queue="q", method="m:f", key="once")])
        [(again, created_again)] = await store.enqueue([models.NewJob(queue="q", method="m:f", key="once")])
        assert created and not created_again and again["id"] == first["id"]
        await store.enqueue([models.NewJob(queue="q", method="m:f"), models.NewJob(queue="q", method="m:f")])


async def test_given_a_version_5_database_when_opened_then_the_queue_status_index_ends_with_seq(db_url: str) -> None:
    # Given the schema as tqueues left it at version 5: an index of (queue, status)
    async with opened_after(db_url, 5, "DROP INDEX tqueues_jobs_queue_status_seq",
                            "CREATE INDEX tqueues_jobs_queue_status ON tqueues_jobs (queue, status)") as store:
        # Then the index of (queue, status, seq) has replaced it
        names = await index_names(db_url)
        assert "tqueues_jobs_queue_status" not in names and "tqueues_jobs_queue_status_seq" in names
        # ... and a queue's oldest pending job is the first one enqueued of those still pending
        [(first, _)] = await store.enqueue([models.NewJob(queue="q", method="m:f")])
        [(second, _)] = await store.enqueue([models.NewJob(queue="q", method="m:f")])
        await store.claim(["q"], "w", 1)
        conn = await asyncpg.connect(db_url)
        definition = await conn.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'tqueues_jobs_queue_status_seq'")
        await conn.close()
        assert definition.endswith("(queue, status, seq)")
        [queue] = [q for q in await store.queues() if q["name"] == "q"]
        assert queue["oldest_pending"] == pytest.approx(second["created_at"]) and queue["counts"]["started"] == 1


async def test_given_a_version_6_database_when_opened_then_events_ts_is_a_brin_index(
        db_url: str) -> None:
    # Given the schema as tqueues left it at version 6: a B-tree of events.ts, executions packed full
    async with opened_after(db_url, 6, "DROP INDEX tqueues_events_ts_brin",
                            "CREATE INDEX tqueues_events_ts ON tqueues_events (ts)",
                            "ALTER TABLE tqueues_executions RESET (fillfactor)") as store:
        conn = await asyncpg.connect(db_url)
        try:
            indexes = {r["indexname"]: r["indexdef"] for r in await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'tqueues_events'")}
            options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'tqueues_executions'")
        finally:
            await conn.close()
        # Then events.ts is indexed by BRIN only, and executions pages are filled (version 10:
        # rows are written once, when their attempt ends)
        assert "tqueues_events_ts" not in indexes and "USING brin (ts)" in indexes["tqueues_events_ts_brin"]
        assert "fillfactor=100" in options
        # ... and pruning still removes old events, keeping the newest
        [(job, _)] = await store.enqueue([models.NewJob(queue="q", method="m:f")])
        [claimed] = await store.claim(["q"], "w", 1)
        await store.complete([Outcome(id=job["id"], lease=claimed["lease"], status=models.FINISHED)])
        assert len(await store.events_since(0, job_id=job["id"])) == 3
        assert await store.prune(0) == 1
        remaining = await store.events_since(0)
        assert len(remaining) == 1 and remaining[0]["kind"] == models.EV_FINISHED


async def test_given_a_version_7_database_when_opened_then_event_seqs_continue_from_a_counter_without_a_gap(
        db_url: str) -> None:
    # Given the schema as tqueues left it at version 7 (seqs from MAX(seq) under an advisory
    # lock), holding the events of two jobs
    async with opened_after(db_url, 7, "DROP TABLE tqueues_event_seq",
                            before=lambda store: store.enqueue([models.NewJob(queue="q", method="m:f"),
                                                                models.NewJob(queue="q", method="m:f")])) as store:
        # When this tqueues opens it and writes more events
        conn = await asyncpg.connect(db_url)
        try:
            counter = await conn.fetchval("SELECT last FROM tqueues_event_seq")
        finally:
            await conn.close()
        await store.enqueue([models.NewJob(queue="q", method="m:f")])
        await store.claim(["q"], "w", 1)
        # Then the counter started at the last seq written, and seqs go on from it with no gap
        seqs = [e["seq"] for e in await store.events_since(0)]
        assert counter == 2 and seqs == [1, 2, 3, 4]


async def test_given_a_version_8_database_when_opened_then_event_documents_are_json_and_older_ones_read_the_same(
        db_url: str) -> None:
    # Given the schema as tqueues left it at version 8 (event documents as jsonb), holding the
    # events of a job enqueued and claimed
    async def fill(store: Store) -> None:
        await store.enqueue([models.NewJob(queue="q", method="m:f", args=[1, "two"], data={"k": [None, 2.5]})])
        await store.claim(["q"], "w", 1)

    old_events: list[dict[str, Any]] = []

    async def fill_and_read(store: Store) -> None:
        await fill(store)
        old_events.extend(await store.events_since(0))

    async with opened_after(db_url, 8, "ALTER TABLE tqueues_events ALTER COLUMN doc TYPE jsonb USING doc::jsonb",
                            before=fill_and_read) as store:
        # When this tqueues opens it and writes more events
        conn = await asyncpg.connect(db_url)
        try:
            kind = await conn.fetchval("SELECT data_type FROM information_schema.columns"
                                       " WHERE table_name = 'tqueues_events' AND column_name = 'doc'")
        finally:
            await conn.close()
        (job,) = await store.claim(["q"], "w", 1) or [None]
        await fill(store)
        events = await store.events_since(0)
    # Then the column is json, the events written before read back as they were, and new ones
    # carry their documents
    assert kind == "json" and job is None
    assert [(e["seq"], e["kind"], e["new_val"]) for e in events[:len(old_events)]] == \
        [(e["seq"], e["kind"], e["new_val"]) for e in old_events]
    assert [e["kind"] for e in events[len(old_events):]] == ["job.created", "job.started"]
    assert events[-1]["new_val"]["status"] == "started"


async def test_job_events_are_stored_as_value_arrays_and_events_written_as_objects_still_read(db_url: str) -> None:
    store = open_store(db_url)
    await store.open()

    async def write_old_event(job: dict[str, Any], old: dict[str, Any]) -> None:
        conn = await asyncpg.connect(db_url)
        try:
            last = await conn.fetchval("SELECT MAX(seq) FROM tqueues_events")
            await conn.execute("INSERT INTO tqueues_events (seq, ts, kind, queue, job_id, doc)"
                               " VALUES ($1, $2, 'job.started', 'q', $3, $4::jsonb)",
                               last + 1, models.now(), job["id"], models.dumps_str(old))
        finally:
            await conn.close()

    async def created_is_array() -> bool:
        conn = await asyncpg.connect(db_url)
        try:
            return await conn.fetchval("SELECT json_typeof(doc) FROM tqueues_events WHERE kind = 'job.created'") == "array"
        finally:
            await conn.close()

    try:
        await check_event_forms(store, write_old_event, created_is_array)
    finally:
        await store.close()


async def test_given_a_version_9_database_with_attempts_running_when_they_end_then_each_has_one_execution_row(
        db_url: str) -> None:
    # Given the schema as tqueues left it at version 9, where a claim wrote its execution row at
    # once (and pages kept room to update it): three jobs started there, their rows 'started'
    async def start_three(store: Store) -> None:
        await store.enqueue([models.NewJob(queue="q", method="m:f") for _ in range(3)])
        claimed = await store.claim(["q"], "old-worker", 3)
        conn = await asyncpg.connect(db_url)
        try:
            await conn.executemany(
                "INSERT INTO tqueues_executions (job_id, attempt, worker, lease, status, started_at)"
                " VALUES ($1, $2, $3, $4, 'started', $5)",
                [(j["id"], j["attempts"], j["worker"], j["lease"], j["started_at"]) for j in claimed])
        finally:
            await conn.close()
        started.extend(claimed)

    started: list[dict[str, Any]] = []
    async with opened_after(db_url, 9, "ALTER TABLE tqueues_executions SET (fillfactor = 50)",
                            before=start_three) as store:
        finish, fail, give_back = started
        # When this version finishes one, fails one and gets the third handed back
        await store.complete([Outcome(id=finish["id"], lease=finish["lease"], status=models.FINISHED)])
        await store.complete([Outcome(id=fail["id"], lease=fail["lease"], status=models.FAILED, retry=False,
                                      error=models.error_doc("E", "no"))])
        await store.release([(give_back["id"], give_back["lease"])])
        # Then each ended attempt has exactly its one row, with the old row's worker and start
        [done] = await store.executions(finish["id"])
        assert (done["attempt"], done["status"], done["worker"]) == (1, "finished", "old-worker")
        assert done["started_at"] == pytest.approx(finish["started_at"]) and done["finished_at"] is not None
        [failed] = await store.executions(fail["id"])
        assert (failed["status"], failed["error"]["type"]) == ("failed", "E")
        # ... the attempt handed back before it ran left none
        assert await store.executions(give_back["id"]) == []
        conn = await asyncpg.connect(db_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM tqueues_executions") == 2
            options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'tqueues_executions'")
        finally:
            await conn.close()
        assert "fillfactor=100" in options
