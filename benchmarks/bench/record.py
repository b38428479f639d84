"""What the benchmark job does, the same for every system: record its start and count itself.

The job takes a small int and returns it. So that the harness can see completions and start
times without going through each system's own result API (which differ widely in cost), every
job makes one pipelined round trip to a shared Redis database: ``HSET bench:start N time``
and ``INCR bench:done``. Coroutine systems use ``redis.asyncio``, thread and process based
ones the blocking client of the same library; the cost is one loopback round trip per job
for everyone.
"""

from __future__ import annotations

import os
import time
from typing import Any

START_KEY = "bench:start"
DONE_KEY = "bench:done"

_sync_client: Any = None
_async_clients: dict[int, Any] = {}


def record_url() -> str:
    return os.environ.get("BENCH_RECORD_URL", "redis://127.0.0.1:6379/15")


def record_sync(n: int) -> int:
    """The job body for blocking systems."""
    global _sync_client
    started = time.time()
    if _sync_client is None:
        import redis

        _sync_client = redis.Redis.from_url(record_url())
    pipe = _sync_client.pipeline(transaction=False)
    pipe.hset(START_KEY, str(n), repr(started))
    pipe.incr(DONE_KEY)
    pipe.execute()
    return n


async def record_async(n: int) -> int:
    """The job body for coroutine systems (one client per event loop)."""
    import asyncio

    started = time.time()
    loop_id = id(asyncio.get_running_loop())
    client = _async_clients.get(loop_id)
    if client is None:
        import redis.asyncio

        client = _async_clients[loop_id] = redis.asyncio.Redis.from_url(record_url())
    pipe = client.pipeline(transaction=False)
    pipe.hset(START_KEY, str(n), repr(started))
    pipe.incr(DONE_KEY)
    await pipe.execute()
    return n
