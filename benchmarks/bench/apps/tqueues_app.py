"""tqueues: the coroutine job, registered with ``@tqueues.task`` (workers run it on their loop)."""

from __future__ import annotations

import tqueues

from bench.record import record_async


@tqueues.task
async def job(n: int) -> int:
    return await record_async(n)
