"""Jobs that harm their own process, or hog a CPU past their lease, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from acceptance.conftest import Cluster

from tqueues import Client

pytestmark = pytest.mark.faults


async def test_given_a_job_that_kills_its_own_process_then_it_fails_after_max_attempts_and_the_pool_serves_on(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    worker = cluster.worker("harm", concurrency=2)
    async with Client(url) as client:
        # Given a plain function that ends its process with os._exit(1) every time
        bad = await client.enqueue("support.jobs:exit_hard", 1, queue="harm", max_attempts=3, backoff=0.05)
        good = [await client.enqueue("support.jobs:add_plain", i, 1, queue="harm") for i in range(6)]
        # Then it ends failed after its three attempts, each recorded as a lost worker
        failed = await client.wait(bad["id"], timeout=60)
        executions = await client.executions(bad["id"])
        assert (failed["status"], failed["attempts"]) == ("failed", 3)
        assert [(e["status"], e["error"]["type"]) for e in executions] == [("failed", "WorkerLost")] * 3
        assert "exited with code 1" in failed["error"]["message"]
        # And the worker process itself never died: it kept serving the other jobs
        assert [(await client.wait(g["id"], timeout=30))["result"] for g in good] == [i + 1 for i in range(6)]
        assert worker.alive()


async def test_given_a_cpu_bound_job_longer_than_the_lease_then_heartbeats_keep_it_and_it_is_not_re_leased(
        cluster: Cluster) -> None:
    url = cluster.start_dispatcher("--lease", "1")
    cluster.worker("cpu", concurrency=1)
    async with Client(url) as client:
        job = await client.enqueue("support.jobs:burn", 3.5, queue="cpu", max_attempts=3)
        done = await client.wait(job["id"], timeout=60)
        executions = await client.executions(job["id"])
    assert done["status"] == "finished" and done["attempts"] == 1 and done["result"] > 0
    assert [e["status"] for e in executions] == ["finished"]
