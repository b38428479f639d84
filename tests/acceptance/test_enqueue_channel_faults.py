"""A dispatcher killed while a producer has enqueues in flight on its websocket: every call
answers or fails at once as ``unreachable``, and sending the failed ones again with their
idempotency keys leaves each job stored exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

from acceptance.conftest import Cluster
from support.procs import start_dispatcher

import tqueues
from tqueues.errors import ClientError

METHOD = "support.jobs:echo"


async def all_jobs(client: tqueues.Client, queue: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    before = None
    while True:
        page = await client.jobs(queue=queue, limit=1000, before=before)
        jobs += page
        if len(page) < 1000:
            return jobs
        before = page[-1]["id"]


async def test_given_a_dispatcher_killed_with_enqueues_in_flight_then_none_hangs_and_keyed_retries_store_each_once(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    keys = [f"order-{i}" for i in range(2000)]
    # Given a producer with 2,000 keyed enqueues in flight on its websocket
    async with tqueues.Client(url, timeout=10) as client:
        tasks = [asyncio.ensure_future(client.enqueue(METHOD, key, queue="cf", key=key)) for key in keys]
        while sum(t.done() for t in tasks) < 50:
            await asyncio.sleep(0.001)
        # When the dispatcher is killed outright
        assert cluster.dispatcher is not None
        cluster.dispatcher.popen.kill()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    # Then every call either answered with its job or failed as unreachable; none hung
    answered = [r for r in results if isinstance(r, dict)]
    failed = [k for k, r in zip(keys, results) if not isinstance(r, dict)]
    assert all(isinstance(r, dict) or (isinstance(r, ClientError) and r.code == "unreachable") for r in results), \
        {type(r).__name__ for r in results}
    assert answered and failed
    # When the dispatcher is back on the same store and the failed calls are sent again
    proc, url = start_dispatcher(cluster.tmp, cluster.db_url, port=port)
    cluster.procs.append(proc)
    async with tqueues.Client(url, timeout=10) as client:
        again = await asyncio.gather(*(client.enqueue(METHOD, key, queue="cf", key=key) for key in failed))
        stored = await all_jobs(client, "cf")
    # Then each key is one job, and the answers before the kill name the jobs stored
    assert sorted(j["key"] for j in stored) == sorted(keys)
    by_key = {j["key"]: j["id"] for j in stored}
    assert all(by_key[doc["key"]] == doc["id"] for doc in answered + again)
