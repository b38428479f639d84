"""The whole job lifecycle through real processes: a dispatcher on a SQLite file, worker
processes, real HTTP. Jobs append to a ledger so each execution can be counted."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from pathlib import Path

from acceptance.conftest import Cluster, wait_for
from support.procs import Proc

from tqueues import Client

RECORD = "support.jobs:record"


async def wait_all(client: Client, ids: list[str], timeout: float) -> list[dict]:
    return list(await asyncio.gather(*(client.wait(i, timeout=timeout) for i in ids)))


async def wait_started(client: Client, ids: list[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while [(await client.get(i))["status"] for i in ids] != ["started"] * len(ids):
        assert time.monotonic() < deadline, "the jobs never started"
        await asyncio.sleep(0.05)


def sigterm(worker: Proc, timeout: float) -> tuple[int, float]:
    """Send the worker SIGTERM; its exit code and the seconds it took to exit."""
    started = time.monotonic()
    worker.popen.send_signal(signal.SIGTERM)
    code = worker.popen.wait(timeout)
    return code, time.monotonic() - started


async def test_given_two_worker_processes_when_1000_jobs_flow_then_each_finishes_exactly_once(cluster: Cluster) -> None:
    # Given a dispatcher and two worker processes
    url = cluster.start_dispatcher()
    workers = [cluster.worker("bulk", concurrency=4) for _ in range(2)]
    async with Client(url) as client:
        # (both serving: one worker alone can run the 1,000 before the other has started)
        deadline = time.monotonic() + 30
        while len([w for w in await client.workers() if w["queues"] == ["bulk"]]) < 2:
            assert time.monotonic() < deadline, "the workers never registered"
            await asyncio.sleep(0.02)
        # When 1,000 jobs are enqueued (in batches, as a producer would)
        jobs = await client.enqueue_many(
            [{"queue": "bulk", "method": RECORD, "args": [cluster.ledger, i]} for i in range(1000)], chunk=250)
        done = await wait_all(client, [j["id"] for j in jobs], timeout=120)
    # Then every job finished with its result stored
    assert collections.Counter(j["status"] for j in done) == {"finished": 1000}
    assert [j["result"] for j in done] == list(range(1000))
    # And each ran exactly once, on its first attempt, shared by both workers
    lines = cluster.ledger_lines()
    assert len(lines) == 1000
    assert {line[0] for line in lines} == {j["id"] for j in jobs}
    assert {line[1] for line in lines} == {"1"}
    assert len({line[2] for line in lines}) >= 2, "both worker processes should have taken jobs"
    for worker in workers:
        assert worker.terminate() == 0


async def test_given_a_worker_killed_holding_leases_then_every_job_still_finishes(cluster: Cluster) -> None:
    # Given a short lease and a worker holding four slow jobs
    url = cluster.start_dispatcher("--lease", "1")
    doomed = cluster.worker("kill", concurrency=4)
    async with Client(url) as client:
        jobs = [await client.enqueue("support.jobs:slow_record", cluster.ledger, 2.0, queue="kill", max_attempts=3)
                for _ in range(6)]
        wait_for(lambda: sum(1 for l in cluster.ledger_lines() if l[0] == "start") >= 4, 20,
                 "the first worker never started its jobs")
        # When it is killed with SIGKILL and another worker takes over
        doomed.kill9()
        cluster.worker("kill", concurrency=4)
        done = await wait_all(client, [j["id"] for j in jobs], timeout=60)
        # Then every job ends finished and nothing stays started
        assert {j["status"] for j in done} == {"finished"}
        assert not await client.jobs(queue="kill", status="started")
        # And the interrupted attempts are recorded as lost before the attempt that finished
        interrupted = [j for j in done if j["attempts"] > 1]
        assert len(interrupted) >= 4
        for job in interrupted:
            executions = await client.executions(job["id"])
            assert [e["status"] for e in executions] == ["lost"] * (job["attempts"] - 1) + ["finished"]
            assert executions[0]["error"]["type"] == "WorkerLost"
    killed_pid = str(doomed.pid)
    finishers = {line[2] for line in cluster.ledger_lines() if line[0] != "start"}
    assert killed_pid not in finishers


async def test_given_a_job_that_always_raises_then_it_fails_after_max_attempts_with_each_traceback(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("fail", concurrency=2)
    async with Client(url) as client:
        # Given a job that raises every time, among healthy jobs
        bad = await client.enqueue("support.jobs:fail_always", "kaboom", queue="fail", max_attempts=3, backoff=0.05)
        good = [await client.enqueue(RECORD, cluster.ledger, i, queue="fail") for i in range(5)]
        # When it has run out of attempts
        failed = await client.wait(bad["id"], timeout=30)
        others = await wait_all(client, [g["id"] for g in good], timeout=30)
        executions = await client.executions(bad["id"])
    # Then it ended failed after exactly three attempts, each with its traceback
    assert failed["status"] == "failed" and failed["attempts"] == 3
    assert failed["error"]["type"] == "RuntimeError" and failed["error"]["message"] == "kaboom"
    assert [e["status"] for e in executions] == ["failed"] * 3
    for execution in executions:
        assert "Traceback" in execution["error"]["traceback"] and "kaboom" in execution["error"]["traceback"]
    # And the other jobs were unaffected
    assert [o["status"] for o in others] == ["finished"] * 5


async def test_given_hung_functions_then_each_is_stopped_at_its_timeout_and_the_worker_keeps_serving(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("hang", concurrency=1)
    async with Client(url) as client:
        # Given a plain function sleeping forever, a plain busy loop and a coroutine awaiting forever
        hung = [await client.enqueue(method, queue="hang", timeout=0.5, max_attempts=1)
                for method in ("support.jobs:sleep_forever", "support.jobs:spin_forever", "support.jobs:hang_forever")]
        after = await client.enqueue("support.jobs:add_plain", 2, 3, queue="hang")
        started = time.monotonic()
        # When their timeouts pass
        stopped = await wait_all(client, [h["id"] for h in hung], timeout=30)
        served = await client.wait(after["id"], timeout=30)
    # Then each ended failed with a timeout error, and the single-slot worker went on serving
    assert [(s["status"], s["error"]["type"]) for s in stopped] == [("failed", "JobTimeout")] * 3
    assert served["status"] == "finished" and served["result"] == 5
    assert time.monotonic() - started < 25


async def test_given_a_plain_job_whose_child_is_slow_to_start_then_its_timeout_counts_from_its_start(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("slowstart", concurrency=1, imports=("support.slow_import_jobs",))
    async with Client(url) as client:
        # Given a plain job with a timeout shorter than its new child's start-up (importing the
        # function's module takes 1.5 s there) but far longer than the function itself
        job = await client.enqueue("support.slow_import_jobs:whose_pid", 7, queue="slowstart", timeout=1.0,
                                   max_attempts=1)
        # When it runs
        done = await client.wait(job["id"], timeout=60)
    # Then it finished: the start-up did not count against its timeout, though the attempt took longer
    assert done["status"] == "finished", done["error"]
    value, pid = done["result"]
    assert value == 7 and pid != cluster.procs[-1].popen.pid
    assert done["finished_at"] - done["started_at"] >= 1.5


async def test_given_a_coroutine_ignoring_cancellation_then_it_is_abandoned_after_the_stop_grace_and_fails_timed_out(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("stubborn", "--stop-grace", "1", concurrency=1)
    async with Client(url) as client:
        # Given a coroutine that swallows cancellation, with a timeout, on a single-slot worker
        hung = await client.enqueue("support.jobs:hang_stubbornly", cluster.ledger, queue="stubborn", timeout=0.5,
                                    max_attempts=1)
        after = await client.enqueue("support.jobs:add_plain", 2, 3, queue="stubborn")
        started = time.monotonic()
        # When its timeout passes
        stopped = await client.wait(hung["id"], timeout=30)
        served = await client.wait(after["id"], timeout=30)
    # Then it was asked to stop once, failed with JobTimeout after the stop grace, and its slot served the next job
    assert stopped["status"] == "failed" and stopped["error"]["type"] == "JobTimeout"
    assert 1.4 <= stopped["finished_at"] - stopped["started_at"] < 10
    assert cluster.ledger_lines() == [["cancelled"]]
    assert served["status"] == "finished" and served["result"] == 5
    assert time.monotonic() - started < 20


async def test_given_unregistered_methods_then_nothing_runs_and_nothing_is_imported(cluster: Cluster, tmp_path: Path) -> None:
    canary = tmp_path / "canary-ran"
    imported = tmp_path / "canary-imported"
    os.environ["TQUEUES_CANARY_IMPORT"] = str(imported)
    try:
        url = cluster.start_dispatcher()
        cluster.worker("canary")
    finally:
        del os.environ["TQUEUES_CANARY_IMPORT"]
    async with Client(url) as client:
        # Given jobs naming os.system and a function of a module the worker never imported
        jobs = [await client.enqueue("os:system", f"touch {canary}", queue="canary"),
                await client.enqueue("os.system", f"touch {canary}", queue="canary"),
                await client.enqueue("support.canary:touch", str(canary), queue="canary")]
        done = await wait_all(client, [j["id"] for j in jobs], timeout=30)
    # Then each failed at once with a clear error, without retries
    for job in done:
        assert job["status"] == "failed" and job["attempts"] == 1
        assert job["error"]["type"] == "NotRegistered" and "not registered" in job["error"]["message"]
    # And no side effect happened: nothing ran, nothing was imported on the job's behalf
    assert not canary.exists()
    assert not imported.exists()


async def test_given_a_running_job_when_aborted_then_the_worker_stops_it_and_serves_on(cluster: Cluster) -> None:
    url = cluster.start_dispatcher("--lease", "1")
    cluster.worker("abort", concurrency=1)
    async with Client(url) as client:
        job = await client.enqueue("support.jobs:slow_record", cluster.ledger, 30, queue="abort")
        wait_for(lambda: any(l[0] == "start" for l in cluster.ledger_lines()), 20, "job never started")
        # When it is aborted while running
        aborted = await client.abort(job["id"])
        assert aborted["status"] == "aborted"
        # Then the worker stops it at its next heartbeat and takes the next job
        nxt = await client.enqueue("support.jobs:add_plain", 1, 1, queue="abort")
        served = await client.wait(nxt["id"], timeout=10)
        assert served["status"] == "finished"
        final = await client.get(job["id"])
    assert final["status"] == "aborted"
    assert not [l for l in cluster.ledger_lines() if l[0] == job["id"]], "the aborted job must not complete"


async def test_given_sigterm_with_jobs_in_flight_then_the_worker_finishes_or_releases_them_and_exits_0(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    worker = cluster.worker("term", "--grace", "3", concurrency=2)
    async with Client(url) as client:
        # Given a short job and one longer than the grace period, both running
        short = await client.enqueue("support.jobs:slow_record", cluster.ledger, 1.0, queue="term")
        long = await client.enqueue("support.jobs:slow_record", cluster.ledger, 60, queue="term")
        wait_for(lambda: sum(1 for l in cluster.ledger_lines() if l[0] == "start") >= 2, 20, "jobs never started")
        # When the worker gets SIGTERM
        code, elapsed = sigterm(worker, 20)
        # Then it exits 0 within the grace period (plus a little to report)
        assert code == 0, worker.output()
        assert elapsed < 8
        # And the short job finished while the long one went back to pending, its attempt not counted
        assert (await client.get(short["id"]))["status"] == "finished"
        released = await client.get(long["id"])
        assert released["status"] == "pending" and released["attempts"] == 0
        # And a new claim gets nothing from the stopped worker's queue but the released job
        workers = {w["id"]: w for w in await client.workers()}
        assert any(w["status"] == "stopped" for w in workers.values())


async def test_given_hung_plain_jobs_past_the_grace_period_then_sigterm_stops_them_cleanly(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    worker = cluster.worker("hungterm", "--grace", "0.5", concurrency=2)
    async with Client(url) as client:
        # Given two plain functions that never return, running in child processes
        jobs = [await client.enqueue("support.jobs:sleep_forever", queue="hungterm"),
                await client.enqueue("support.jobs:spin_forever", queue="hungterm")]
        await wait_started(client, [j["id"] for j in jobs])
        await asyncio.sleep(0.5)
        # When the worker gets SIGTERM and its grace period runs out
        assert worker.terminate() == 0, worker.output()
        released = [await client.get(j["id"]) for j in jobs]
    # Then both jobs were stopped and handed back, and shutting down logged no error
    assert [(j["status"], j["attempts"]) for j in released] == [("pending", 0)] * 2
    output = worker.output()
    assert "never retrieved" not in output and "Traceback" not in output and "ERROR" not in output, output


async def test_given_sigterm_with_a_coroutine_ignoring_cancellation_then_it_is_abandoned_released_and_the_worker_exits_0(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    worker = cluster.worker("term-stubborn", "--grace", "1", "--stop-grace", "1", concurrency=1)
    async with Client(url) as client:
        # Given a running coroutine that swallows cancellation
        job = await client.enqueue("support.jobs:hang_stubbornly", cluster.ledger, queue="term-stubborn")
        await wait_started(client, [job["id"]])
        # When the worker gets SIGTERM
        code, elapsed = sigterm(worker, 30)
        # Then after its grace the coroutine was cancelled, then abandoned, and the worker exited 0
        assert code == 0, worker.output()
        assert elapsed < 12
        lines = cluster.ledger_lines()
        assert lines and all(line == ["cancelled"] for line in lines), lines
        # And the job went back to pending, its attempt not counted
        released = await client.get(job["id"])
        assert released["status"] == "pending" and released["attempts"] == 0
