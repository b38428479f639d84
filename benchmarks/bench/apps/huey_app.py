"""Huey on Redis (blocking pop, so an idle consumer does not poll)."""

from __future__ import annotations

import os

from huey import RedisHuey

from bench.record import record_sync

huey = RedisHuey("bench", url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/6"), blocking=True)


@huey.task()
def job(n: int) -> int:
    return record_sync(n)
