"""Every kind of write a store makes to its jobs, in turn, for the tests of its queue counts."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from tqueues import models
from tqueues.errors import JobNotFound
from tqueues.store.base import Outcome, Store


def job(queue: str, **fields: object) -> models.NewJob:
    return models.NewJob(queue=queue, method="m:f", **fields)  # type: ignore[arg-type]


async def every_write(store: Store, check: Callable[[str], Awaitable[None]]) -> int:
    """Change jobs in every way a store can, ``await check(step)`` after each step; the number
    of steps. Jobs remain at the end (prune leaves the pending ones)."""
    steps = 0

    async def step(name: str) -> None:
        nonlocal steps
        steps += 1
        await check(name)

    await store.enqueue([job("a") for _ in range(6)] + [job("b", key="k1"), job("b", max_attempts=1)])
    await step("batch enqueue")
    again = await store.enqueue([job("b", key="k1"), job("b", key="k2")])
    assert [created for _, created in again] == [False, True]
    await step("enqueue with an existing key")

    claimed = await store.claim(["a"], "w1", limit=3)
    await step("claim")
    answers = await store.complete([
        Outcome(id=claimed[0]["id"], lease=claimed[0]["lease"], result=1),                          # finished
        Outcome(id=claimed[1]["id"], lease=claimed[1]["lease"], status=models.FAILED, retry=True),  # retried
        Outcome(id=claimed[2]["id"], lease=claimed[2]["lease"], status=models.FAILED, retry=False),  # failed
        Outcome(id=claimed[0]["id"], lease="stale"),                                                # conflict
        Outcome(id="no-such-job", lease="x"),                                                       # unknown
    ])
    assert [a["ok"] for a in answers] == [True, True, True, False, False]
    await step("complete: finished, retried, failed, conflicts")
    failed = claimed[2]["id"]
    assert (await store.get(failed))["status"] == models.FAILED
    await store.retry(failed)
    await step("retry a failed job")

    pending = (await store.list_jobs(queue="a", status=models.PENDING))[0]
    await store.abort(pending["id"])
    await step("abort a pending job")
    (running,) = await store.claim(["a"], "w1")
    await store.abort(running["id"])
    await step("abort a started job")
    await store.retry(running["id"])
    await step("retry an aborted job")

    (released,) = await store.claim(["a"], "w1")
    await store.release([(released["id"], released["lease"])])
    await step("release")

    await store.update_data(released["id"], {"x": 1})
    await step("update data")

    # A claim that takes the new job as it is enqueued, and one for which the new job waits
    # (an older job of higher priority is ready).
    _, taken = await store.enqueue_and_claim(job("c"), ["c"], "w2")
    assert len(taken) == 1
    await step("enqueue and claim: the new job leased")
    await store.enqueue([job("c", priority=5)])
    doc, taken = await store.enqueue_and_claim(job("c"), ["c"], "w2")
    assert doc["id"] not in [j["id"] for j in taken]
    await step("enqueue and claim: the new job waits")

    # Leases that expire: a job with attempts left goes back, one without fails.
    lost = await store.claim(["b"], "w3", limit=3, lease_seconds=0.001)
    assert {j["max_attempts"] for j in lost} == {1, models.DEFAULT_MAX_ATTEMPTS}
    await asyncio.sleep(0.01)
    assert await store.requeue_expired() == 3
    await step("requeue expired leases")

    # TQueues' DELETE: an unfenced completion of a job that is not running.
    (waiting,) = [d for d in await store.list_jobs(queue="b", status=models.PENDING)][:1]
    await store.complete([Outcome(id=waiting["id"], lease=None)])
    await step("unfenced completion of a pending job")

    # Operations of one turn of the loop share a group; one that fails rolls back alone.
    results = await asyncio.gather(store.enqueue([job("d"), job("d")]), store.abort("no-such-job"),
                                   store.claim(["a"], "w4", limit=2), return_exceptions=True)
    assert isinstance(results[1], JobNotFound)
    await step("a group with a failed operation")

    assert await store.prune(0) > 0
    await step("prune")
    return steps
