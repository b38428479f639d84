"""Jobs that harm their own process, or hog a CPU past their lease, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from faults.harness import JOBS_MODULE, RECORD_PLAIN, Expect, Rig, Size

from tqueues import Client

pytestmark = pytest.mark.faults


async def test_given_a_job_that_kills_its_own_process_then_it_fails_after_max_attempts_and_the_pool_serves_on(
        rig: Rig, size: Size) -> None:
    bad_jobs, good_jobs = size(1, 5), size(6)
    rig.start_dispatcher()
    worker = rig.worker("harm", concurrency=2)
    producer = rig.producer()
    # Given a plain function that ends its process with os._exit(1) every time, among healthy ones
    bad = [producer.job(f"exit{i}", queue="harm", method=f"{JOBS_MODULE}:exit_hard", max_attempts=3, backoff=0.05,
                        expect=Expect("failed", "WorkerLost", runs=False)) for i in range(bad_jobs)]
    good = [producer.job(f"good{i}", queue="harm", method=RECORD_PLAIN) for i in range(good_jobs)]
    async with producer.session() as session:
        await producer.enqueue_all(session, bad + good)
    report = await rig.check("job kills its own process", [producer], faults=3 * bad_jobs,
                             fault_kind="process deaths (os._exit)", timeout=size(90, 300))
    # Then it ends failed after its three attempts, each recorded as a lost worker, each begun once
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected) == (bad_jobs + good_jobs,) * 2 + (0, 0)
    async with Client(rig.url) as client:
        for spec in bad:
            job_id = next(iter(producer.acknowledged()[spec["key"]]))
            failed = await client.get(job_id)
            executions = await client.executions(job_id)
            assert (failed["status"], failed["attempts"]) == ("failed", 3)
            assert [(e["status"], e["error"]["type"]) for e in executions] == [("failed", "WorkerLost")] * 3
            assert "exited with code 1" in failed["error"]["message"]
            assert sorted(e.attempt for e in rig.ledger.entries() if e.tag == spec["key"]) == [1, 2, 3]
    # And the worker process itself never died: it kept serving the other jobs
    assert worker.alive()


async def test_given_a_cpu_bound_job_longer_than_the_lease_then_heartbeats_keep_it_and_it_is_not_re_leased(
        rig: Rig, size: Size) -> None:
    jobs = size(1, 4)
    rig.start_dispatcher("--lease", "1")
    rig.worker("cpu", concurrency=1)
    producer = rig.producer()
    # Given plain functions keeping a CPU busy for 3.5 s, more than three leases
    specs = [producer.job(f"burn{i}", queue="cpu", method=f"{JOBS_MODULE}:burn", args=[str(rig.ledger), f"burn{i}", 3.5],
                          max_attempts=3) for i in range(jobs)]
    async with producer.session() as session:
        await producer.enqueue_all(session, specs)
    report = await rig.check("CPU-bound job longer than the lease", [producer], faults=jobs,
                             fault_kind="CPU hogs > 3 leases", timeout=size(60, 240))
    # Then each finished on its first attempt: no lease expired, nothing ran twice
    assert report.ok, str(report)
    assert (report.done, report.lost, report.duplicates, report.retried) == (jobs, 0, 0, 0)
    async with Client(rig.url) as client:
        for job_id in producer.ids():
            done = await client.get(job_id)
            assert done["status"] == "finished" and done["attempts"] == 1 and done["result"] > 0
            assert [e["status"] for e in await client.executions(job_id)] == ["finished"]
