"""Example jobs, used by ``tqueues demo`` and the documentation.

Run them with ``tqueues_worker --import tqueues.examples``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def add(a: float, b: float) -> float:
    """A coroutine job."""
    return a + b


async def countdown(n: int, tq_parent_job: Any = None) -> str:
    """Reports progress in the job's data while it runs."""
    for left in range(n, 0, -1):
        if tq_parent_job is not None:
            await tq_parent_job.update({"left": left})
        await asyncio.sleep(0.05)
    return "lift-off"


def fibonacci(n: int) -> int:
    """A plain (blocking) function: runs in a child process, off the event loop."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def sleepy(seconds: float) -> float:
    """A plain function that blocks; give it a timeout to see it stopped."""
    time.sleep(seconds)
    return seconds


async def flaky(tq_parent_job: Any = None) -> str:
    """Fails on its first attempt, succeeds on the next one."""
    if tq_parent_job is not None and tq_parent_job.attempt < 2:
        raise RuntimeError(f"attempt {tq_parent_job.attempt} fails on purpose")
    return "succeeded on a retry"


def broken(message: str = "this job always fails") -> None:
    """Always raises: ends failed once its attempts are used up."""
    raise ValueError(message)


async def noop(x: int) -> int:
    """The benchmark job: takes a small int and returns it."""
    return x
