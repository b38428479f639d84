"""SQLite keeps each queue's count of jobs per status in queue_counts, written by every change
in its own transaction: the table must always say what counting the jobs says."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from support.counts import every_write, job

from tqueues import models
from tqueues.store import open_store
from tqueues.store.base import Outcome


def kept(path: Path) -> dict[tuple[str, str], int]:
    with closing(sqlite3.connect(path)) as conn:
        return {(q, s): n for q, s, n in conn.execute("SELECT queue, status, n FROM queue_counts") if n}


def counted(path: Path) -> dict[tuple[str, str], int]:
    with closing(sqlite3.connect(path)) as conn:
        return {(q, s): n for q, s, n in conn.execute("SELECT queue, status, COUNT(*) FROM jobs GROUP BY queue, status")}


async def test_every_kind_of_write_keeps_the_queue_counts_equal_to_the_jobs(tmp_path: Path) -> None:
    path = tmp_path / "counts.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()

    async def check(step: str) -> None:
        jobs = counted(path)
        assert kept(path) == jobs, step
        answered = {(q["name"], status): n for q in await store.queues() for status, n in q["counts"].items() if n}
        assert answered == jobs, step

    try:
        assert await every_write(store, check) == 16
        assert counted(path), "jobs must remain for the last check to mean something"
    finally:
        await store.close()


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
