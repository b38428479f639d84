"""Functions the fault tests run (``tqueues_worker --import support.ledger_jobs``).

Each appends to an append-only ledger, one line per event, written with a single ``write`` on
a descriptor opened with ``O_APPEND``, so lines of concurrent processes never interleave:

    begin JOB ATTEMPT LEASE PID START - TAG      the function started (jobs that run a while)
    run   JOB ATTEMPT LEASE PID START END TAG    the function's body ran to its end

``LEASE`` is the lease token the attempt runs under (``-`` in a plain function, which runs in a
child process and is not told its lease); ``TAG`` is the producer's key of the job; times are
UNIX seconds. ``tests/faults/harness.py`` reads the ledger back and checks it against what the
producer was told and what the dispatcher recorded.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from support.jobs import append   # one O_APPEND write per line


def _line(kind: str, job: Any, start: float, end: float | None, tag: str) -> str:
    lease = getattr(job, "lease", None) or "-"
    stop = f"{end:.6f}" if end is not None else "-"
    return f"{kind} {job.id} {job.attempt} {lease} {os.getpid()} {start:.6f} {stop} {tag}"


async def record(ledger: str, tag: str, seconds: float = 0.0, tq_parent_job: Any = None) -> str:
    """A coroutine job: notes its start when it takes a while, sleeps ``seconds``, notes its run."""
    start = time.time()
    if seconds > 0:
        append(ledger, _line("begin", tq_parent_job, start, None, tag))
        await asyncio.sleep(seconds)
    append(ledger, _line("run", tq_parent_job, start, time.time(), tag))
    return tag


def record_plain(ledger: str, tag: str, seconds: float = 0.0, tq_parent_job: Any = None) -> str:
    """The same as a plain function (it runs in a child process of the worker)."""
    start = time.time()
    if seconds > 0:
        append(ledger, _line("begin", tq_parent_job, start, None, tag))
        time.sleep(seconds)
    append(ledger, _line("run", tq_parent_job, start, time.time(), tag))
    return tag


def spin(ledger: str, tag: str, tq_parent_job: Any = None) -> None:
    """A plain function in an endless busy loop."""
    append(ledger, _line("begin", tq_parent_job, time.time(), None, tag))
    while True:
        pass


def sleep_long(ledger: str, tag: str, tq_parent_job: Any = None) -> None:
    """A plain function in ``time.sleep(1e9)``."""
    append(ledger, _line("begin", tq_parent_job, time.time(), None, tag))
    time.sleep(1e9)


async def await_forever(ledger: str, tag: str, tq_parent_job: Any = None) -> None:
    """A coroutine awaiting something that never happens."""
    append(ledger, _line("begin", tq_parent_job, time.time(), None, tag))
    await asyncio.Event().wait()


def burn(ledger: str, tag: str, seconds: float, tq_parent_job: Any = None) -> int:
    """A plain function keeping a CPU busy (no sleeping, no awaiting) for ``seconds``, then noting its run."""
    start = time.time()
    deadline = time.monotonic() + seconds
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    append(ledger, _line("run", tq_parent_job, start, time.time(), tag))
    return spins


def exit_hard(ledger: str, tag: str, code: int = 1, tq_parent_job: Any = None) -> None:
    """Notes its start, then kills its own process, as a segfault or a stray os._exit would."""
    append(ledger, _line("begin", tq_parent_job, time.time(), None, tag))
    os._exit(code)
