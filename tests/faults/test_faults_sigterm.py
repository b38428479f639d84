"""SIGTERM to a worker with jobs in flight, on SQLite and PostgreSQL: it stops claiming, lets
what can finish within ``--grace`` finish, releases the rest and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any, AsyncIterator

import pytest
from faults.harness import RECORD, RECORD_PLAIN, Rig, Size, wait_for
from faults.proxy import FaultProxy
from faults.test_faults_network import port_of
from support.procs import Proc

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
    leased_to_stopped = 0                         # jobs enqueued with the signal, leased by the abandoned claim
    async with Client(rig.url) as client, producer.session() as session:
        for r in range(rounds):
            queue = f"term{r}"
            worker = rig.worker(queue, "--grace", str(GRACE), concurrency=4)
            # Given four jobs running: two that end within the grace, two that would not (a
            # coroutine and a plain function of each kind)
            kinds = list(enumerate((RECORD, RECORD_PLAIN)))
            short = [producer.job(f"short{r}-{i}", queue=queue, method=m, seconds=0.8) for i, m in kinds]
            long = [producer.job(f"long{r}-{i}", queue=queue, method=m, seconds=6) for i, m in kinds]
            await producer.enqueue(session, short + long)
            keys = [s["key"] for s in short + long]
            await wait_for(lambda: rig.ledger.count("begin", tags=keys) == 4, 30, "the four jobs never all started")
            long_keys = {s["key"] for s in long}
            stopped_long |= {(e.pid, e.tag) for e in rig.ledger.entries() if e.kind == "begin" and e.tag in long_keys}
            # When the worker gets SIGTERM, and jobs keep coming: at once, and while it drains
            started = time.monotonic()
            worker.popen.send_signal(signal.SIGTERM)
            racing = [producer.job(f"racing{r}-{i}", queue=queue) for i in range(2)]
            await producer.enqueue(session, racing)
            await asyncio.sleep(0.5)
            assert worker.alive(), "the worker left before its running jobs were due to end"
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
            # And nothing enqueued while it drained was claimed by it
            for spec in long + later:
                doc = await client.get(ids[spec["key"]])
                assert (doc["status"], doc["attempts"]) == ("pending", 0), doc
                assert await client.executions(doc["id"]) == []
            # And nothing enqueued after the signal started there. (A job enqueued at the very
            # moment of the signal may be leased by the claim the worker was abandoning; the
            # dispatcher hands such a claim back when it sees the client gone, but if the client
            # leaves between that check and the answer the job is held until its lease expires;
            # the checker sees it run later.)
            assert rig.ledger.count(tags=[s["key"] for s in racing + later]) == 0
            for spec in racing:
                doc = await client.get(ids[spec["key"]])
                if doc["status"] != "pending":
                    leased_to_stopped += 1
                    assert doc["status"] == "started" and f":{worker.pid}:" in doc["worker"], doc
            # And a new worker takes the released and waiting jobs over
            rig.worker(queue, concurrency=4)
        report = await rig.check("SIGTERM with jobs in flight", [producer], faults=rounds, fault_kind="worker SIGTERM",
                                 timeout=size(90, 600))
    print(f"jobs enqueued with the signal and leased by the stopping worker's last claim: {leased_to_stopped}")
    # Then after the drain nothing was lost, and no released job had also run to its end
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected) == (10 * rounds, 10 * rounds, 0, 0)
    assert report.duplicates == 0
    assert len(stopped_long) == 2 * rounds
    assert not [e for e in rig.ledger.entries() if e.kind == "run" and (e.pid, e.tag) in stopped_long]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_given_the_dispatcher_gone_when_a_worker_is_stopped_then_it_waits_without_spinning_and_exits(
        rig: Rig) -> None:
    if rig.backend != "sqlite":
        pytest.skip("the worker's side only: SQLite covers it")
    rig.start_dispatcher("--lease", "30")
    producer = rig.producer()
    worker = rig.worker("orphan", "--grace", "5", concurrency=2)
    # Given two jobs running: one that ends soon, one that ends later in the grace
    short = producer.job("orphan-short", queue="orphan", seconds=1.0)
    long = producer.job("orphan-long", queue="orphan", seconds=3.5)
    async with producer.session() as session:
        await producer.enqueue(session, [short, long])
    await wait_for(lambda: rig.ledger.count("begin", tags=[short["key"], long["key"]]) == 2, 30,
                   "the two jobs never both started")

    # When the dispatcher dies and the worker is told to stop
    rig.kill_dispatcher()
    before = cpu_seconds(worker.pid)
    assert before is not None
    worker.popen.send_signal(signal.SIGTERM)
    started, used = time.monotonic(), 0.0
    while worker.popen.poll() is None and time.monotonic() - started < 40:
        now = cpu_seconds(worker.pid)
        used = now - before if now is not None else used
        await asyncio.sleep(0.1)

    # Then it lets both jobs end, retries their outcomes with a pause between tries (no busy
    # loop), gives up on them, and exits 0
    assert worker.popen.poll() == 0, worker.output()[-3000:]
    assert rig.ledger.count("run", tags=[short["key"], long["key"]]) == 2
    assert "giving up reporting" in worker.output()
    assert used < 1.5, f"the worker used {used:.1f} s of CPU while it waited for an unreachable dispatcher"


@contextlib.asynccontextmanager
async def job_behind_a_proxy(rig: Rig, queue: str) -> AsyncIterator[tuple[FaultProxy, Proc, dict[str, Any]]]:
    """A job of one second started on a worker that reaches its dispatcher through a proxy."""
    if rig.backend != "sqlite":
        pytest.skip("the worker's side only: SQLite covers it")
    url = rig.start_dispatcher("--lease", "30")
    proxy = await FaultProxy(port_of(url)).start()
    try:
        producer = rig.producer()
        worker = rig.worker(queue, "--grace", "5", concurrency=1, url=proxy.url)
        job = producer.job(f"{queue}-1", queue=queue, seconds=1.0)
        async with producer.session() as session:
            await producer.enqueue(session, [job])
        await wait_for(lambda: rig.ledger.count("begin", tags=[job["key"]]) == 1, 30, "the job never started")
        yield proxy, worker, job
    finally:
        await proxy.close()


async def stop_and_time(worker: Proc) -> float:
    """SIGTERM the worker; seconds until it exited (60 at most)."""
    worker.popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    while worker.popen.poll() is None and time.monotonic() - started < 60:
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_given_a_partition_when_a_worker_is_stopped_then_it_stops_waiting_for_the_dispatcher_after_its_stopping_time(
        rig: Rig) -> None:
    # Given a job running on a worker that reaches its dispatcher through a proxy
    async with job_behind_a_proxy(rig, "cutoff") as (proxy, worker, job):
        # When the network is split (connections are accepted, nothing is answered) and the
        # worker is told to stop
        proxy.partition()
        took = await stop_and_time(worker)

    # Then the job ends, its outcome is tried for about six seconds in all (not six tries of
    # five seconds each), and the worker exits 0 soon after
    assert worker.popen.poll() == 0, worker.output()[-3000:]
    assert rig.ledger.count("run", tags=[job["key"]]) == 1
    assert "giving up reporting 1 outcome(s)" in worker.output(), worker.output()[-3000:]
    assert took < 12, f"the worker took {took:.1f} s to stop behind a partition"


async def test_given_an_outcome_sent_into_a_partition_before_the_stop_then_the_worker_does_not_wait_the_clients_timeout(
        rig: Rig) -> None:
    async with job_behind_a_proxy(rig, "cutoff2") as (proxy, worker, job):
        # Given the network split before the job ends: its outcome goes out (with the client's
        # usual 30 s timeout) and is not answered
        proxy.partition()
        await wait_for(lambda: rig.ledger.count("run", tags=[job["key"]]) == 1, 30, "the job never ended")
        await asyncio.sleep(0.5)
        # When the worker is told to stop
        took = await stop_and_time(worker)

    # Then it waits for that send as long as for a request made while stopping, tries the
    # outcome again within its stopping time, gives up and exits 0
    assert worker.popen.poll() == 0, worker.output()[-3000:]
    assert "giving up reporting 1 outcome(s)" in worker.output(), worker.output()[-3000:]
    assert took < 15, f"the worker took {took:.1f} s to stop behind a partition"
