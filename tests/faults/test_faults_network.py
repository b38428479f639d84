"""Network faults between a worker and its dispatcher, on SQLite and PostgreSQL:
claim answers lost on the wire, and partitions longer than the lease."""

from __future__ import annotations

import asyncio

import pytest
from faults.harness import Rig, Size, wait_for
from faults.proxy import FaultProxy

from tqueues import Client

pytestmark = pytest.mark.faults


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


async def test_given_claim_answers_lost_on_the_wire_then_each_job_is_released_by_its_lease_and_finished_once(
        rig: Rig, size: Size) -> None:
    jobs, drops = size(4), size(1, 10)
    url = rig.start_dispatcher("--lease", "1")
    proxy = await FaultProxy(port_of(url)).start()
    producer = rig.producer()
    try:
        # Given a worker whose next claim answer will be lost after the claim committed
        proxy.drop_next_claim_answer()
        worker = rig.worker("lost", "--wait", "2", concurrency=1, url=proxy.url)
        specs = [producer.job(f"l{i}", queue="lost", max_attempts=drops + 2) for i in range(jobs)]
        async with producer.session() as session:
            await producer.enqueue_all(session, specs)
        # When that answer, and each next one until enough were, is dropped
        for n in range(1, drops + 1):
            await wait_for(lambda: proxy.dropped >= n, 60, f"claim answer {n} was never dropped")
            if n < drops:
                proxy.drop_next_claim_answer()
        report = await rig.check("claim answer lost", [producer], faults=proxy.dropped, fault_kind="claim answer dropped",
                                 timeout=size(60, 300))
        async with Client(url) as client:
            first = await client.executions(producer.ids()[0])
    finally:
        await proxy.close()
    # Then every job finished; each lost answer cost one recorded, lost attempt that never ran
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected) == (jobs, jobs, 0, 0)
    assert report.faults == drops
    assert report.retried >= drops
    assert report.duplicates == 0, "a lost attempt ran"
    assert [e["status"] for e in first] == ["lost", "finished"]
    assert worker.alive()


async def test_given_a_partition_longer_than_the_lease_then_the_job_is_re_leased_and_the_old_worker_overwrites_nothing(
        rig: Rig, size: Size) -> None:
    url = rig.start_dispatcher("--lease", "1")
    proxy = await FaultProxy(port_of(url)).start()
    producer = rig.producer()
    rounds = size(1, 5)
    try:
        async with Client(url) as client, producer.session() as session:
            for n in range(rounds):
                queue = f"split{n}"
                cut_off = rig.worker(queue, concurrency=1, url=proxy.url)
                await producer.enqueue(session, [producer.job(f"p{n}", queue=queue, seconds=2.5, max_attempts=5)])
                job_id = producer.ids()[-1]
                await wait_for(lambda: rig.ledger.count("begin", tags=[f"p{n}"]) > 0, 30, "the job never started")
                # When the worker running it is cut off for longer than the lease
                proxy.partition()
                rescuer = rig.worker(queue, concurrency=1)
                done = await client.wait(job_id, timeout=60)
                # Then another worker finished it on a new attempt; the attempts before it were the
                # cut-off worker's and are recorded lost (a claim it had waiting at the dispatcher
                # may have been handed the job again, and lost it again, before the rescuer got it)
                assert done["status"] == "finished" and done["attempts"] >= 2 and f":{rescuer.pid}:" in done["worker"]
                executions = await client.executions(job_id)
                statuses = [e["status"] for e in executions]
                assert statuses == ["lost"] * (done["attempts"] - 1) + ["finished"]
                assert all(f":{cut_off.pid}:" in e["worker"] for e in executions[:-1])
                # And when the partition heals, the old worker's late heartbeat and completion change nothing
                proxy.heal()
                await wait_for(lambda: "not recorded" in cut_off.output() or "lease lost" in cut_off.output(), 30,
                               "the cut-off worker never heard back")
                await asyncio.sleep(0.5)
                after = await client.get(job_id)
                assert (after["status"], after["attempts"], after["finished_at"]) == ("finished", done["attempts"],
                                                                                      done["finished_at"])
                assert [e["status"] for e in await client.executions(job_id)] == statuses
                cut_off.close()
                rescuer.close()
        report = await rig.check("partition longer than the lease", [producer], faults=rounds,
                                 fault_kind="partition > lease", timeout=60)
    finally:
        await proxy.close()
    # And over all rounds: nothing lost; a job the cut-off worker also ran did so as the lost attempt
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected, report.unexplained) == (rounds, rounds, 0, 0, 0)
    assert report.retried >= rounds
