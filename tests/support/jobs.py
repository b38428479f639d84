"""Functions the test workers run (``tqueues_worker --import support.jobs``).

Jobs that must be counted append one line ``job_id attempt pid`` to a ledger file; the
lines are small and written with O_APPEND, so concurrent writers never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any


def append(ledger: str, line: str) -> None:
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def ledger_lines(ledger: str | os.PathLike[str], settled: bool = False) -> list[str]:
    """The ledger's whole lines. A line is one ``write``, but Linux lets a reader see the part of
    a write before a page boundary ahead of the rest: while jobs run, a last line without its
    newline is one being written and is left for the next read. ``settled`` (nothing runs any
    more) returns it with the rest, for the caller to find torn."""
    try:
        with open(ledger, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    if not settled and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    return text.splitlines()


async def record(ledger: str, value: Any, tq_parent_job: Any = None) -> Any:
    append(ledger, f"{tq_parent_job.id} {tq_parent_job.attempt} {os.getpid()}")
    return value


def record_plain(ledger: str, value: Any, tq_parent_job: Any = None) -> Any:
    append(ledger, f"{tq_parent_job.id} {tq_parent_job.attempt} {os.getpid()}")
    return value


async def claim_stamp(ledger: str, tq_parent_job: Any = None) -> None:
    """Records when its claim leased it (the document's ``started_at``) and when it ran."""
    append(ledger, f"stamp {tq_parent_job.doc['started_at']!r} {time.time()!r}")


async def slow_record(ledger: str, seconds: float, tq_parent_job: Any = None) -> str:
    """Records its start, then sleeps: a job to be caught in flight."""
    append(ledger, f"start {tq_parent_job.id} {tq_parent_job.attempt} {os.getpid()}")
    await asyncio.sleep(seconds)
    append(ledger, f"{tq_parent_job.id} {tq_parent_job.attempt} {os.getpid()}")
    return "slept"


async def fail_always(message: str = "boom") -> None:
    raise RuntimeError(message)


def fail_plain(message: str = "boom") -> None:
    raise ValueError(message)


def sleep_forever() -> None:
    time.sleep(1e9)


def spin_forever() -> None:
    while True:
        pass


async def hang_forever() -> None:
    await asyncio.Event().wait()


async def hang_stubbornly(ledger: str) -> None:
    """Awaits forever and shrugs off every cancellation (writes "cancelled" each time)."""
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            append(ledger, "cancelled")


JOB_REFS: list[Any] = []   # weak references to the Job handles that keep_ref saw (in-process workers)


async def keep_ref(n: int, tq_parent_job: Any = None) -> int:
    import weakref

    JOB_REFS.append(weakref.ref(tq_parent_job))
    return n


async def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}


async def progress(steps: int, tq_parent_job: Any = None) -> int:
    for step in range(1, steps + 1):
        await tq_parent_job.update({"step": step})
    return steps


def progress_plain(steps: int, tq_parent_job: Any = None) -> int:
    for step in range(1, steps + 1):
        tq_parent_job.update({"step": step})
    return steps


def add_plain(a: int, b: int) -> int:
    return a + b


async def chatty(tag: str, lines: int) -> int:
    """Prints and logs interleaved with other jobs: each line must land on its own job."""
    import logging

    for i in range(lines):
        print(f"{tag} out {i}")
        logging.getLogger("jobs.chatty").warning("%s log %d", tag, i)
        await asyncio.sleep(0.01)
    import sys
    print(f"{tag} err", file=sys.stderr)
    return lines


def chatty_plain(tag: str, lines: int) -> int:
    import logging
    import sys

    for i in range(lines):
        print(f"{tag} out {i}", flush=True)
        logging.getLogger("jobs.chatty").warning("%s log %d", tag, i)
        time.sleep(0.01)
    print(f"{tag} err", file=sys.stderr)
    return lines


def stubborn(ledger: str) -> None:
    """A plain function that refuses to stop: it swallows every attempt to interrupt it."""
    append(ledger, f"start {os.getpid()}")
    while True:
        try:
            time.sleep(1e9)
        except BaseException:  # noqa: BLE001 - the point of this job
            append(ledger, f"ignored {os.getpid()}")


async def ticker(count: int, every: float) -> int:
    for i in range(count):
        print(f"tick {i}", flush=True)
        await asyncio.sleep(every)
    return count


def exit_hard(code: int = 1) -> None:
    """Kills its own process, as a segfault or a stray os._exit would."""
    os._exit(code)


def burn(seconds: float) -> int:
    """Keeps a CPU busy (no sleeping, no awaiting) for ``seconds``."""
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    return spins


def noisy_failure(tag: str) -> None:
    """Prints a few lines, then fails: a job whose traceback and output both matter."""
    for i in range(3):
        print(f"{tag} step {i}", flush=True)
    raise ValueError(f"{tag} could not be parsed")


async def own_task() -> str:
    """The name of the coroutine the task running this job runs: its own, ``own_task``."""
    task = asyncio.current_task()
    return task.get_coro().__qualname__ if task is not None else "no task"   # type: ignore[union-attr]


async def own_timeout(seconds: float) -> str:
    """Times itself out with ``asyncio.timeout`` (Python 3.11+), which cancels the task that
    entered it: the job's own task, never one of the worker's."""
    try:
        async with asyncio.timeout(seconds):   # type: ignore[attr-defined]
            await asyncio.sleep(30)
    except TimeoutError:
        return "timed out"
    return "slept 30 s"


async def loop_name() -> str:
    """The event loop the worker runs its coroutine jobs on: "uvloop" or "asyncio"."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]
