"""The blocking client facade, as a script without asyncio would use it."""

from __future__ import annotations

import pytest
from acceptance.conftest import Cluster

from tqueues import SyncClient
from tqueues.errors import ClientError, JobFailed


def test_given_a_sync_client_then_it_enqueues_waits_gets_and_aborts(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("sync", concurrency=2)
    with SyncClient(url) as client:
        # enqueue one and wait for its result
        job = client.enqueue("support.jobs:add_plain", 20, 22, queue="sync")
        assert client.result(job["id"], timeout=20) == 42
        # enqueue many at once
        many = client.enqueue_many([{"queue": "sync", "method": "support.jobs:echo", "args": [i]} for i in range(10)])
        assert [client.wait(j["id"], timeout=20)["result"]["args"] for j in many] == [[i] for i in range(10)]
        # a failing job raises JobFailed from result()
        bad = client.enqueue("support.jobs:fail_always", "no", queue="sync", max_attempts=1)
        with pytest.raises(JobFailed, match="RuntimeError: no"):
            client.result(bad["id"], timeout=20)
        # abort a delayed job: it never runs
        later = client.enqueue("support.jobs:echo", queue="sync", delay=3600)
        assert client.abort(later["id"])["status"] == "aborted"
        assert client.get(later["id"])["status"] == "aborted"
        # errors from the dispatcher carry its status and code
        with pytest.raises(ClientError) as caught:
            client.get("no-such-job")
        assert (caught.value.status, caught.value.code) == (404, "job_not_found")
