"""taskiq with taskiq-redis' list broker: coroutine job."""

from __future__ import annotations

import os

from taskiq_redis import ListQueueBroker

from bench.record import record_async

broker = ListQueueBroker(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"), queue_name="bench")


@broker.task(task_name="bench.job")
async def job(n: int) -> int:
    return await record_async(n)
