"""The PostgreSQL store sends the columns of batch writes (new jobs, events, completions) packed
in one text each, split by the server; a column that could be misread once packed goes as a
real array. Either way what is stored is exactly what was written."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest

from tqueues import models
from tqueues.store.base import Outcome
from tqueues.store.postgres import _SPLIT, _arrays, _packed

TRICKY_TEXTS = [
    ["a", "b", "c"],
    ["", "x", ""],
    ["only"],
    [],
    ["with\x1funit separator", "b"],
    ["\x1e", "b"],                      # a value that is the NULL marker itself
    ["a\x1eb", None, "c"],              # the marker inside a value is only text
    [None, None],
    [""],                               # one empty string: the server would split it into nothing
    ['{"args": [1, "\\u001f"]}', "é ✓ 😀"],
]


@pytest.fixture
def db_url(pg_url: str) -> str:
    """This module's tests are about the PostgreSQL store: ``store`` opens this database."""
    return pg_url


def test_packing_refuses_what_it_could_not_tell_apart() -> None:
    assert _packed(["a", "b"]) == "a\x1fb"
    assert _packed([1, None, 2.5]) == "1\x1f\x1e\x1f2.5"
    for column in (["x\x1fy"], ["\x1e"], [""], [True], [float("inf")], [float("nan"), 1.0], [b"bytes"]):
        assert _packed(column) is None, column
    sql, args = _arrays(("text", "int"), (["a", "b"], [1, 2]), 3)
    assert sql == f'{_SPLIT.format(n=3, kind="text")}, {_SPLIT.format(n=4, kind="int")}' and args == ["a\x1fb", "1\x1f2"]
    sql, args = _arrays(("text", "int"), (["a\x1f", "b"], [1, 2]), 3)   # one column cannot: all go as arrays
    assert sql == "$3::text[], $4::int[]" and args == [["a\x1f", "b"], [1, 2]]


async def test_every_column_reaches_the_server_unchanged(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        for column in TRICKY_TEXTS:
            sql, (arg,) = _arrays(("text",), (column,), 1)
            assert await conn.fetchval(f"SELECT {sql}", arg) == column, column
        floats = [0.1, 1796581850.251241, -2.5e-300, 1e308, None, 3.0]
        sql, (arg,) = _arrays(("float8",), (floats,), 1)
        assert "string_to_array" in sql
        assert await conn.fetchval(f"SELECT {sql}", arg) == floats   # exact: repr round-trips
        ints = [0, -7, 2**31 - 1, None]
        sql, (arg,) = _arrays(("int",), (ints,), 1)
        assert await conn.fetchval(f"SELECT {sql}", arg) == ints
    finally:
        await conn.close()


@pytest.mark.parametrize("odd_key", ["k\x1fey", "\x1e"])
async def test_a_batch_stores_every_field_exactly_packed_or_not(store, odd_key: str) -> None:
    specs = [models.NewJob(queue="pa", method="m:f", args=[1, "two", {"3": [4.5]}], kwargs={"k": "é\x1f"},
                           priority=5, run_at=1_900_000_000.123456, timeout=2.5, key="plain", backoff=0.25,
                           data={"d": None}, secrets=["s"]),
             models.NewJob(queue="pa", method="m:g", args=[], timeout=None, key=None, max_attempts=3),
             models.NewJob(queue="pa", method="m:h", key=odd_key)]
    for packed_too in (False, True):   # with the odd key (arrays), then without it (packed)
        batch = specs if not packed_too else specs[:2]
        if packed_too:
            batch = [dataclasses.replace(spec, key=f"{spec.key}-2" if spec.key else None) for spec in batch]
        results = await store.enqueue(batch)
        assert all(created for _, created in results)
        for spec, (doc, _) in zip(batch, results):
            stored = await store.get(doc["id"])
            for field in ("queue", "method", "args", "kwargs", "priority", "max_attempts", "timeout", "key",
                          "backoff", "data"):
                assert stored[field] == getattr(spec, field), (field, stored[field])
            if spec.run_at is not None:
                assert stored["run_at"] == spec.run_at
    events = await store.events_since(0, queue="pa")
    assert [e["kind"] for e in events] == [models.EV_CREATED] * 5
    assert events[0]["new_val"]["kwargs"] == {"k": "é\x1f"}


async def test_heartbeats_extend_the_leases_they_name(store) -> None:
    await store.enqueue([models.NewJob(queue="ph", method="m:f", args=[n]) for n in range(3)])
    jobs = await store.claim(["ph"], "w", 3)
    beats = await store.heartbeat([(job["id"], job["lease"]) for job in jobs] + [(jobs[0]["id"], "stale")], 120.0)
    assert [beat["ok"] for beat in beats] == [True, True, True, False]
    for job in jobs:
        assert (await store.get(job["id"]))["lease_expires"] > job["lease_expires"] + 60


async def test_completions_store_their_results_exactly(store) -> None:
    await store.enqueue([models.NewJob(queue="pc", method="m:f", args=[n]) for n in range(3)])
    jobs = await store.claim(["pc"], "w", 3)
    results = ["text with \x1f and \x1e", {"nested": [1, None]}, None]
    done = await store.complete([Outcome(job["id"], job["lease"], models.FINISHED, result=result)
                                 for job, result in zip(jobs, results)]
                                + [Outcome("no\x1fsuch", "lease", models.FINISHED)])   # its ids go as an array
    assert [answer["ok"] for answer in done] == [True, True, True, False]
    beats = await store.heartbeat([(job["id"], job["lease"]) for job in jobs], 30.0)
    assert [beat["ok"] for beat in beats] == [False] * 3   # finished: their leases are gone
    for job, result in zip(jobs, results):
        stored = await store.get(job["id"])
        assert (stored["status"], stored["result"]) == (models.FINISHED, result)
        assert [e["status"] for e in await store.executions(job["id"])] == [models.FINISHED]
