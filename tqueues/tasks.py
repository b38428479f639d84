"""Tasks that start at once where asyncio allows it.

A task made by ``create_task`` first runs on a later turn of the event loop: the loop has to
come round, pick the task's step off its ready queue and switch to it, before the first line
of the coroutine runs. For work that usually finishes without waiting (a no-op job, an enqueue
message whose write commits inline) that turn is a good part of the cost, and on an idle
machine, whose caches have gone cold, of the latency too.

On Python 3.12 and newer, :func:`start_task` makes the task with asyncio's eager start: the
coroutine runs at once, inside the call, as the task (``asyncio.current_task()`` is the new
task, in a copy of the caller's context, as for any task), up to its first wait; one that never
waits returns a task already done, which the loop never schedules. On older Pythons it is
``create_task``: asyncio has no safe way there to run a task's first step early.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

EAGER = sys.version_info >= (3, 12)


def start_task(coro: Coroutine[Any, Any, T]) -> "asyncio.Task[T]":
    """A task running ``coro``, started eagerly where asyncio supports it (see the module)."""
    loop = asyncio.get_running_loop()
    if EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)   # type: ignore[call-arg]
    return loop.create_task(coro)


__all__ = ["EAGER", "start_task"]
