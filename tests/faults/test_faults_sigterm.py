"""SIGTERM to a worker with jobs in flight, on SQLite and PostgreSQL: it stops claiming, lets
what can finish within ``--grace`` finish, releases the rest and exits 0."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from faults.harness import RECORD, RECORD_PLAIN, Rig, Size, wait_for

from tqueues import Client

pytestmark = pytest.mark.faults

GRACE = 2.0


async def test_given_sigterm_with_jobs_in_flight_then_it_claims_nothing_more_finishes_or_releases_them_and_exits_in_its_grace(
        rig: Rig, size: Size) -> None:
    rounds = size(1, 5)
    rig.start_dispatcher("--lease", "5")
    producer = rig.producer()
    loop = asyncio.get_running_loop()
    stopped_long: set[tuple[int, str]] = set()    # (pid, key) of the long jobs the stopped workers began
    async with Client(rig.url) as client, producer.session() as session:
        for r in range(rounds):
            queue = f"term{r}"
            worker = rig.worker(queue, "--grace", str(GRACE), concurrency=4)
            # Given four jobs running: two that end within the grace, two that would not (a
            # coroutine and a plain function of each kind)
            short = [producer.job(f"short{r}-{i}", queue=queue, method=m, seconds=0.8) for i, m in enumerate((RECORD, RECORD_PLAIN))]
            long = [producer.job(f"long{r}-{i}", queue=queue, method=m, seconds=6) for i, m in enumerate((RECORD, RECORD_PLAIN))]
            await producer.enqueue(session, short + long)
            keys = [s["key"] for s in short + long]
            await wait_for(lambda: rig.ledger.count("begin", tags=keys) == 4, 30, "the four jobs never all started")
            stopped_long |= {(e.pid, e.tag) for e in rig.ledger.entries() if e.kind == "begin" and e.tag in {s["key"] for s in long}}
            # When the worker gets SIGTERM, and jobs keep coming
            started = time.monotonic()
            worker.popen.send_signal(signal.SIGTERM)
            later = [producer.job(f"later{r}-{i}", queue=queue) for i in range(4)]
            await producer.enqueue(session, later)
            code = await loop.run_in_executor(None, worker.popen.wait, GRACE + 30)
            elapsed = time.monotonic() - started
            # Then it exits 0 within its grace (and a few seconds to hand back and report)
            assert code == 0, worker.output()[-3000:]
            assert elapsed < GRACE + 10, f"exit took {elapsed:.1f} s with a grace of {GRACE} s"
            ids = {key: next(iter(found)) for key, found in producer.acknowledged().items()}
            # And the short jobs finished there, while the long ones went back to pending, their attempt not counted
            for spec in short:
                doc = await client.get(ids[spec["key"]])
                assert doc["status"] == "finished" and f":{worker.pid}:" in doc["worker"], doc
            for spec in long + later:
                doc = await client.get(ids[spec["key"]])
                assert (doc["status"], doc["attempts"]) == ("pending", 0), doc
                assert await client.executions(doc["id"]) == []
            # And the jobs enqueued after the signal never started there
            assert rig.ledger.count(tags=[s["key"] for s in later]) == 0
            # And a new worker takes the released and waiting jobs over
            rig.worker(queue, concurrency=4)
        report = await rig.check("SIGTERM with jobs in flight", [producer], faults=rounds, fault_kind="worker SIGTERM",
                                 timeout=size(90, 600))
    # Then after the drain nothing was lost, and no released job had also run to its end
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected, report.duplicates) == (8 * rounds, 8 * rounds, 0, 0, 0)
    assert len(stopped_long) == 2 * rounds
    assert not [e for e in rig.ledger.entries() if e.kind == "run" and (e.pid, e.tag) in stopped_long]
