"""Hung functions, on SQLite and PostgreSQL: a plain function in an endless loop, one in
``time.sleep(1e9)`` and a coroutine awaiting forever are each stopped at their timeout, and the
worker serves the jobs queued behind them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from faults.harness import JOBS_MODULE, Expect, Rig, Size, wait_for

pytestmark = pytest.mark.faults

HUNG = {"spin": (f"{JOBS_MODULE}:spin", True), "sleep": (f"{JOBS_MODULE}:sleep_long", True),
        "await": (f"{JOBS_MODULE}:await_forever", False)}   # name: (method, runs in a child process)
TIMED_OUT = Expect("failed", "JobTimeout", runs=False)


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as exited)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (FileNotFoundError, ProcessLookupError):
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_given_hung_functions_then_each_is_stopped_at_its_timeout_and_the_worker_keeps_serving(
        rig: Rig, size: Size) -> None:
    rounds = size(1, 10)
    rig.start_dispatcher()
    worker = rig.worker("hang", concurrency=1)
    producer = rig.producer()
    specs = []
    for r in range(rounds):
        # Given, in a single-slot worker's queue, three hung functions with a 0.5 s timeout and
        # healthy jobs behind them
        for name, (method, _) in HUNG.items():
            specs.append(producer.job(f"{name}{r}", queue="hang", method=method, timeout=0.5, max_attempts=1,
                                      expect=TIMED_OUT))
        specs += [producer.job(f"after{r}-{i}", queue="hang") for i in range(2)]
    async with producer.session() as session:
        await producer.enqueue_all(session, specs)
    # When their timeouts pass
    report = await rig.check("hung functions", [producer], faults=len(HUNG) * rounds, fault_kind="hung jobs",
                             timeout=size(90, 600))
    # Then each hung job ended failed with JobTimeout after its one attempt, and every job behind them finished
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected) == (len(specs), len(specs), 0, 0)
    begins = [e for e in rig.ledger.entries() if e.kind == "begin"]
    assert sorted(e.tag for e in begins) == sorted(f"{name}{r}" for name in HUNG for r in range(rounds))
    # And the processes running the plain ones are gone, while the worker itself serves on
    children = [e.pid for e in begins if HUNG[e.tag.rstrip("0123456789")][1]]
    assert worker.pid not in children
    await wait_for(lambda: all(gone(pid) for pid in children), 30, "a hung function's process is still running")
    assert worker.alive()
