"""``tasks.start_task``: a task whose first step runs at once on Python 3.12+ (asyncio's eager
start), an ordinary task before that; a task either way, with the semantics of one."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

from tqueues.tasks import EAGER, start_task

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")


def test_eager_start_is_used_exactly_where_asyncio_has_it() -> None:
    assert EAGER == (sys.version_info >= (3, 12))


async def test_a_coroutine_that_never_waits_is_done_on_return_where_eager_and_on_the_next_turn_otherwise() -> None:
    steps: list[str] = []

    async def quick() -> int:
        steps.append("ran")
        return 7

    task = start_task(quick())
    if EAGER:
        assert task.done() and steps == ["ran"]
    else:
        assert not task.done() and steps == []
    assert await task == 7 and steps == ["ran"]


async def test_a_coroutine_that_waits_runs_up_to_its_first_wait_then_goes_on_as_a_task() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def waits() -> str:
        steps.append("before")
        await gate
        steps.append("after")
        return "done"

    task = start_task(waits())
    assert steps == (["before"] if EAGER else [])
    await asyncio.sleep(0)
    assert steps == ["before"] and not task.done()
    gate.set_result(None)
    assert await task == "done" and steps == ["before", "after"]


async def test_the_coroutine_runs_as_its_own_task_even_in_its_first_step() -> None:
    seen: list[asyncio.Task[None] | None] = []

    async def who() -> None:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    caller = asyncio.current_task()
    task = start_task(who())
    await task
    assert seen == [task, task] and caller not in seen


async def test_the_task_sees_the_callers_context_and_its_own_changes_stay_in_it() -> None:
    seen: list[str] = []

    async def reads_and_sets() -> None:
        seen.append(marker.get())
        marker.set("inside")
        await asyncio.sleep(0)
        seen.append(marker.get())

    token = marker.set("caller")
    try:
        task = start_task(reads_and_sets())
        assert marker.get() == "caller"   # not even the first step's change leaks out
        await task
        assert marker.get() == "caller"
    finally:
        marker.reset(token)
    assert seen == ["caller", "inside"]


async def test_an_error_in_the_first_step_is_held_by_the_task_not_raised_by_the_call() -> None:
    async def fails() -> None:
        raise ValueError("at once")

    task = start_task(fails())
    with pytest.raises(ValueError, match="at once"):
        await task


async def test_a_task_started_at_once_can_still_be_cancelled_at_its_wait() -> None:
    async def sleeps() -> None:
        await asyncio.sleep(30)

    task = start_task(sleeps())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
