"""Celery on Redis: prefork pool, no result backend (results are not read by the harness)."""

from __future__ import annotations

import os

from celery import Celery

from bench.record import record_sync

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_default_queue="bench",
    task_ignore_result=True,
    # Celery's guide on prefetch limits: many short tasks want a large multiplier.
    worker_prefetch_multiplier=64,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.job")
def job(n: int) -> int:
    return record_sync(n)
