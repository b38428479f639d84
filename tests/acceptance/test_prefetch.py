"""Worker prefetch: jobs leased ahead of free slots wait in the worker, kept by heartbeats,
and are released (not run) when the worker stops or dropped when they are aborted."""

from __future__ import annotations

import asyncio
import signal

from acceptance.conftest import Cluster, wait_for

from tqueues import Client


async def statuses(client: Client, jobs: list[dict], want: list[str], timeout: float = 20) -> list[dict]:
    """The jobs once their statuses are ``want`` (polled; the worker claims as they arrive)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        docs = [await client.get(j["id"]) for j in jobs]
        if [d["status"] for d in docs] == want or asyncio.get_running_loop().time() > deadline:
            return docs
        await asyncio.sleep(0.02)


def starts(cluster: Cluster) -> list[str]:
    return [line[1] for line in cluster.ledger_lines() if line[0] == "start"]


async def test_given_prefetched_jobs_waiting_longer_than_the_lease_then_each_runs_once_in_claim_order(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher("--lease", "1")
    cluster.worker("pf", "--prefetch", "3", concurrency=1)
    async with Client(url) as client:
        # Given four jobs of 0.8 s each for one slot with three prefetched: the last waits 2.4 s,
        # more than two leases, in the worker's buffer
        jobs = [await client.enqueue("support.jobs:slow_record", cluster.ledger, 0.8, queue="pf") for _ in range(4)]
        wait_for(lambda: len(starts(cluster)) >= 1, 20, "no job started")
        # While the first runs, the others are leased to the same worker but have not started
        held = await statuses(client, jobs, ["started"] * 4)
        assert [j["status"] for j in held] == ["started"] * 4
        assert len({j["worker"] for j in held}) == 1
        assert len(starts(cluster)) == 1
        done = [await client.wait(j["id"], timeout=30) for j in jobs]
        executions = [await client.executions(j["id"]) for j in jobs]
    # Then heartbeats kept every lease: each ran once, as attempt 1, in the order it was queued
    assert [(d["status"], d["attempts"]) for d in done] == [("finished", 1)] * 4
    assert [[e["status"] for e in ex] for ex in executions] == [["finished"]] * 4
    assert starts(cluster) == [j["id"] for j in jobs]


async def test_given_a_prefetched_job_aborted_before_it_starts_then_it_never_runs(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("pfa", "--prefetch", "2", concurrency=1)
    async with Client(url) as client:
        first = await client.enqueue("support.jobs:slow_record", cluster.ledger, 1.5, queue="pfa")
        second = await client.enqueue("support.jobs:slow_record", cluster.ledger, 0.1, queue="pfa")
        third = await client.enqueue("support.jobs:slow_record", cluster.ledger, 0.1, queue="pfa")
        wait_for(lambda: len(starts(cluster)) >= 1, 20, "no job started")
        assert [j["status"] for j in await statuses(client, [second], ["started"])] == ["started"]  # prefetched
        # When the prefetched job is aborted while it waits
        assert (await client.abort(second["id"]))["status"] == "aborted"
        assert (await client.wait(third["id"], timeout=20))["status"] == "finished"
        assert (await client.wait(first["id"], timeout=20))["status"] == "finished"
        final = await client.get(second["id"])
    # Then it stays aborted and its function never started
    assert final["status"] == "aborted"
    assert second["id"] not in starts(cluster)
    assert starts(cluster) == [first["id"], third["id"]]


async def test_given_sigterm_with_prefetched_jobs_then_they_are_released_without_an_attempt(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    worker = cluster.worker("pft", "--prefetch", "2", "--grace", "5", concurrency=1)
    async with Client(url) as client:
        running = await client.enqueue("support.jobs:slow_record", cluster.ledger, 1.0, queue="pft")
        waiting = [await client.enqueue("support.jobs:slow_record", cluster.ledger, 0.1, queue="pft") for _ in range(2)]
        wait_for(lambda: len(starts(cluster)) >= 1, 20, "no job started")
        assert [j["status"] for j in await statuses(client, waiting, ["started"] * 2)] == ["started"] * 2
        # When the worker gets SIGTERM while one job runs and two wait in its buffer
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(20) == 0, worker.output()
        # Then the running job finished within the grace period and no buffered job started
        assert (await client.get(running["id"]))["status"] == "finished"
        released = [await client.get(j["id"]) for j in waiting]
    assert [(j["status"], j["attempts"], j["lease"]) for j in released] == [("pending", 0, None)] * 2
    assert starts(cluster) == [running["id"]]


async def test_given_prefetch_0_then_a_busy_worker_leaves_queued_jobs_to_an_idle_one(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("pf0", "--prefetch", "0", concurrency=1)
    async with Client(url) as client:
        first = await client.enqueue("support.jobs:slow_record", cluster.ledger, 3.0, queue="pf0")
        wait_for(lambda: len(starts(cluster)) >= 1, 20, "no job started")
        second = await client.enqueue("support.jobs:slow_record", cluster.ledger, 0.1, queue="pf0")
        # The busy worker does not take it: it stays pending until a second worker comes
        assert (await client.get(second["id"]))["status"] == "pending"
        cluster.worker("pf0", "--prefetch", "0", concurrency=1)
        done = await client.wait(second["id"], timeout=20)
        first_done = await client.get(first["id"])
    assert done["status"] == "finished" and done["worker"] != first_done["worker"]
    assert first_done["status"] in ("started", "finished")


async def test_given_a_prefetch_past_two_full_claims_then_each_claim_takes_a_thousand_once_the_worker_ran_all_it_held(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    async with Client(url) as client:
        # Given 2,500 jobs queued before a worker with --prefetch 2048 starts (one claim leases
        # at most 1,000, so half the buffer is never free while it holds a job)
        for low in range(0, 2500, 500):
            await client.enqueue_many([{"queue": "big", "method": "support.jobs:claim_stamp", "args": [cluster.ledger]}
                                       for _ in range(low, low + 500)])
        cluster.worker("big", "--prefetch", "2048", concurrency=4)
        wait_for(lambda: len(cluster.ledger_lines()) >= 2500, 60, "the jobs did not all run")
    # Then the jobs came in three claims (those of one claim share its time) of 1,000, 1,000
    # and the 500 left: full ones, not refills of the buffer
    claims: dict[float, list[float]] = {}
    for _, claimed, ran in cluster.ledger_lines():
        claims.setdefault(float(claimed), []).append(float(ran))
    order = sorted(claims)
    assert [len(claims[at]) for at in order] == [1000, 1000, 500]
    # And each claim went out only once every job of the one before had run
    for before, after in zip(order, order[1:]):
        assert max(claims[before]) <= after, "a claim was made while jobs of the previous one still waited"
