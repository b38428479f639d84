"""The dispatcher's hub counts which events leave a job ready to claim, and wakes that many
parked claims."""

from __future__ import annotations

from typing import Any

from tqueues import models
from tqueues.dispatcher.feeds import Hub


def event(seq: int, kind: str, job: str, queue: str = "q") -> dict[str, Any]:
    return {"seq": seq, "ts": 0.0, "kind": kind, "queue": queue, "job_id": job, "new_val": {"id": job}}


async def woken_after(events: list[dict[str, Any]], parked: int = 3) -> int:
    hub = Hub(store=None)   # type: ignore[arg-type] - dispatch never reads the store
    waiters = [hub.wait_queues(["q"]) for _ in range(parked)]
    hub.dispatch(events)
    woken = sum(w.woken for w in waiters)
    for waiter in waiters:
        waiter.cancel()
    return woken


async def test_a_job_created_and_started_in_the_same_write_wakes_nobody() -> None:
    assert await woken_after([event(1, models.EV_CREATED, "a"), event(2, models.EV_STARTED, "a")]) == 0


async def test_a_job_started_then_put_back_in_the_same_write_wakes_one_claim() -> None:
    # e.g. a claim and a failed attempt with a retry left, committed together
    assert await woken_after([event(1, models.EV_STARTED, "a"), event(2, models.EV_RETRYING, "a")]) == 1


async def test_only_the_jobs_not_handed_over_wake_claims() -> None:
    events = [event(1, models.EV_CREATED, "a"), event(2, models.EV_CREATED, "b"), event(3, models.EV_CREATED, "c"),
              event(4, models.EV_STARTED, "b")]
    assert await woken_after(events) == 2
