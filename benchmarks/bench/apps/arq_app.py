"""arq: coroutine job and worker settings (16 jobs at once per process, 50 ms poll)."""

from __future__ import annotations

import os
from typing import Any

from arq.connections import RedisSettings

from bench.record import record_async


async def job(ctx: dict[str, Any], n: int) -> int:
    return await record_async(n)


class WorkerSettings:
    functions = [job]
    redis_settings = RedisSettings.from_dsn(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/3"))
    max_jobs = 16
    # arq finds new jobs by polling a sorted set; its default 0.5 s would cap pickup at 2 polls/s.
    poll_delay = 0.05
