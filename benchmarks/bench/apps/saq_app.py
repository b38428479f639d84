"""SAQ: coroutine job, 16 jobs at once per worker process."""

from __future__ import annotations

import os
from typing import Any

from saq import Queue

from bench.record import record_async

queue = Queue.from_url(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/4"), name="bench")


async def job(ctx: dict[str, Any], *, n: int) -> int:
    return await record_async(n)


settings = {"queue": queue, "functions": [job], "concurrency": 16}
