"""RQ: the job function; the queue is built by the producer, workers by ``rq worker-pool``."""

from __future__ import annotations

from bench.record import record_sync


def job(n: int) -> int:
    return record_sync(n)
