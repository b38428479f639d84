"""procrastinate on PostgreSQL (psycopg 3): coroutine job on the queue ``bench``."""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from bench.record import record_async

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_BROKER_URL", "postgresql://postgres@127.0.0.1/bench")))


@app.task(name="bench.job", queue="bench")
async def job(n: int) -> int:
    return await record_async(n)
