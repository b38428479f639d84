"""Dramatiq on Redis: the actor (no retries; workers run with --processes 2 --threads 8)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.record import record_sync

broker = RedisBroker(url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/5"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def job(n: int) -> int:
    return record_sync(n)
