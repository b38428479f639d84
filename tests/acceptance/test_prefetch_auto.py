"""Automatic prefetch (``--prefetch auto``): the worker sizes its buffer of leased jobs itself,
large enough that it does not sit idle while a claim is on its way, and no larger than that."""

from __future__ import annotations

import asyncio
from pathlib import Path

from acceptance.conftest import Cluster
from support.server import Server

from tqueues import Client, Worker


async def run_until_done(client: Client, worker: Worker, count: int, timeout: float = 60) -> None:
    runner = asyncio.ensure_future(worker.run_forever())
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while worker.jobs_done < count:
            assert asyncio.get_running_loop().time() < deadline, f"{worker.jobs_done} of {count} jobs done"
            assert not runner.done(), runner
            await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await asyncio.wait_for(runner, 30)
    # The registry entry a worker refreshes (at each heartbeat, and its last one on stopping)
    # shows the size it had come to.
    entry = next(w for w in await client.workers() if w["id"] == worker.id)
    assert entry["prefetch"] == worker.prefetch


async def test_given_auto_prefetch_and_a_backlog_of_short_jobs_then_the_buffer_grows_and_every_job_runs(
        server: Server) -> None:
    async with Client(server.url) as client:
        await client.enqueue_many([{"queue": "pauto", "method": "support.jobs:echo", "args": [i]} for i in range(3000)],
                                  documents=False)
        worker = Worker(server.url, "pauto", modules=["support.jobs"], concurrency=2, prefetch="auto", wait=1)
        assert worker.prefetch == 2   # it begins as the default does: as many as concurrency
        await run_until_done(client, worker, 3000)
        # Jobs of a few microseconds run through a buffer of two long before a claim's answer
        # comes back: the worker doubled its prefetch each time it waited (in-process against
        # this dispatcher it settles at 16 to 998; a fixed buffer would have stayed at 2).
        assert worker.prefetch >= 8, worker.prefetch
        assert worker.jobs_failed == 0


async def test_given_auto_prefetch_and_jobs_slower_than_a_claim_then_the_buffer_stays_at_concurrency(
        server: Server, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger")
    async with Client(server.url) as client:
        await client.enqueue_many([{"queue": "pslow", "method": "support.jobs:slow_record", "args": [ledger, 0.25]}
                                   for _ in range(12)], documents=False)
        worker = Worker(server.url, "pslow", modules=["support.jobs"], concurrency=2, prefetch="auto", wait=1)
        await run_until_done(client, worker, 12)
        # Each claim came back with the buffered job still waiting: nothing to grow for. (Jobs of
        # a quarter second: a claim slower than a job, which a loaded machine can give with jobs
        # of 50 ms, rightly doubles the buffer.)
        assert worker.prefetch == 2


async def test_given_tqueues_worker_with_prefetch_auto_then_it_runs_jobs_and_registers_its_prefetch(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("pcli", "--prefetch", "auto", concurrency=3)
    async with Client(url) as client:
        job = await client.enqueue("support.jobs:echo", 1, queue="pcli")
        assert (await client.wait(job["id"], timeout=30))["status"] == "finished"
        (entry,) = [w for w in await client.workers() if w["queues"] == ["pcli"]]
    # It registered with the size an automatic prefetch begins at: as many as concurrency
    assert (entry["concurrency"], entry["prefetch"]) == (3, 3)
