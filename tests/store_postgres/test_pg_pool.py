"""The PostgreSQL store's read pool gives connections back without asyncpg's reset query (a
round trip per read): what it leaves behind must not disturb the next read."""

from __future__ import annotations

import asyncio
import time

import pytest

from tqueues import models
from tqueues.store.postgres import _keep_session


@pytest.fixture
def db_url(pg_url: str) -> str:
    """This module's tests are about the PostgreSQL store: ``store`` opens this database."""
    return pg_url


async def test_reads_after_a_cancelled_read_and_a_failed_one_see_a_clean_connection(store) -> None:
    (doc, _), = await store.enqueue([models.NewJob(queue="pool", method="m:f", args=[1])])
    assert store._pool._reset is _keep_session
    # Given a read cancelled in the middle of a slow query, and a read that failed in a transaction
    slow = asyncio.ensure_future(store._read(lambda conn: conn.fetchval("SELECT pg_sleep(5)")))
    await asyncio.sleep(0.2)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow

    async def failing(conn):
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 1")   # transaction-local: ends with it
            await conn.fetchval("SELECT 1/0")

    with pytest.raises(Exception):
        await store._read(failing)
    # Then every connection of the pool answers the next reads at once, with the usual settings
    started = time.monotonic()
    results = await asyncio.gather(*(store.get(doc["id"]) for _ in range(store.pool_size * 2)))
    assert all(r["id"] == doc["id"] for r in results)
    assert time.monotonic() - started < 3
    timeouts = await asyncio.gather(*(store._read(lambda conn: conn.fetchval("SHOW statement_timeout"))
                                      for _ in range(store.pool_size)))
    assert set(timeouts) == {"0"}
