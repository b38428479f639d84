"""Small helpers shared by the store contract tests; they use only the public Store API."""

from __future__ import annotations

import asyncio
from typing import Any

from tqueues import models
from tqueues.store import Outcome, Store

#: A lease short enough to let it expire in a test without slowing the suite down.
SHORT_LEASE = 0.2


def spec(queue: str = "default", method: str = "app.jobs:work", **fields: Any) -> models.NewJob:
    """A validated job request (backoff 0 unless given, so retries are immediately due)."""
    fields.setdefault("backoff", 0.0)
    return models.NewJob(queue=queue, method=method, **fields)


async def put(store: Store, queue: str = "default", **fields: Any) -> dict[str, Any]:
    """Enqueue one new job and return its document."""
    [(job, created)] = await store.enqueue([spec(queue, **fields)])
    assert created
    return job


async def take(store: Store, queue: str = "default", worker: str = "w1",
               lease_seconds: float = 30.0) -> dict[str, Any]:
    """Claim exactly one job of ``queue``."""
    jobs = await store.claim([queue], worker, 1, lease_seconds)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def finish(store: Store, job: dict[str, Any], result: Any = None) -> dict[str, Any]:
    [item] = await store.complete([Outcome(job["id"], job["lease"], models.FINISHED, result=result)])
    assert item["ok"], item
    return item["job"]


async def fail(store: Store, job: dict[str, Any], *, retry: bool = True,
               error: dict[str, Any] | None = None) -> dict[str, Any]:
    error = error or models.error_doc("ValueError", "boom", "Traceback ...")
    [item] = await store.complete([Outcome(job["id"], job["lease"], models.FAILED, error=error, retry=retry)])
    assert item["ok"], item
    return item["job"]


async def wait_expired(lease_seconds: float = SHORT_LEASE) -> None:
    """Sleep just past a lease of ``lease_seconds`` taken before this call."""
    await asyncio.sleep(lease_seconds + 0.05)


async def kinds(store: Store, job_id: str) -> list[str]:
    """The kinds of every stored event of one job, oldest first."""
    return [event["kind"] for event in await store.events_since(0, job_id=job_id)]


def is_stale(item: dict[str, Any], job_id: str) -> bool:
    return item["id"] == job_id and item["ok"] is False and item["error"]["code"] == "stale_lease"


async def receive_until(sub: Any, predicate: Any, timeout: float = 2.0) -> list[dict[str, Any]]:
    """Every event a subscription delivers until one satisfies ``predicate``."""
    got: list[dict[str, Any]] = []

    async def loop() -> None:
        while not any(predicate(e) for e in got):
            batch = await sub.get()
            assert batch, "the subscription overflowed or closed"
            got.extend(batch)

    await asyncio.wait_for(loop(), timeout)
    return got
