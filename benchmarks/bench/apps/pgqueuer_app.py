"""PgQueuer on PostgreSQL (asyncpg): the factory ``pgq run`` calls in each worker process."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

import asyncpg
from pgqueuer import AsyncpgDriver, Job, PgQueuer

from bench.record import record_async


@asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    connection = await asyncpg.connect(os.environ.get("BENCH_BROKER_URL", "postgresql://postgres@127.0.0.1/bench"))
    pgq = PgQueuer(AsyncpgDriver(connection))

    @pgq.entrypoint("bench_job")
    async def job(item: Job) -> None:
        await record_async(int(item.payload or b"0"))

    try:
        yield pgq
    finally:
        await connection.close()


if __name__ == "__main__":
    # What `pgq run bench.apps.pgqueuer_app:create` does (its defaults: batch size 10, 30 s
    # dequeue timeout), through pgqueuer.run: the installed CLI fails while setting up logging.
    import asyncio

    from pgqueuer import run

    asyncio.run(run(create))
