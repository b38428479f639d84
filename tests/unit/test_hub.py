"""The dispatcher's hub counts which events leave a job ready to claim, and wakes that many
parked claims."""

from __future__ import annotations

from typing import Any

from tqueues import models
from tqueues.dispatcher.feeds import Feed, Hub


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


async def test_an_event_is_offered_only_to_the_feeds_that_want_its_kind() -> None:
    hub = Hub(store=None)   # type: ignore[arg-type]
    aborts = [Feed(queue="q", kinds={models.EV_ABORTED}) for _ in range(50)]   # workers' abort feeds
    everything = Feed(queue="q")
    finishes = Feed(kinds={models.EV_FINISHED, models.EV_FAILED})
    for feed in [*aborts, everything, finishes]:
        hub.feeds.add(feed)
    offered: list[Feed] = []
    for feed in [*aborts, everything, finishes]:
        feed.matches = (lambda f: lambda e: offered.append(f) or Feed.matches(f, e))(feed)   # type: ignore[method-assign]
    # When a job finishes
    hub.dispatch([event(1, models.EV_FINISHED, "a")])
    # Then the abort feeds were not even asked; the others were, and got it
    assert sorted(map(id, offered)) == sorted(map(id, [everything, finishes]))
    assert [e["seq"] for e in everything.items] == [1] and [e["seq"] for e in finishes.items] == [1]
    # And an abort reaches every abort feed and the feed of every kind
    offered.clear()
    hub.dispatch([event(2, models.EV_ABORTED, "a")])
    assert len(offered) == 51 and all([e["seq"] for e in f.items] == [2] for f in aborts)
    # And a feed removed is offered nothing more; the set counts what is left
    for feed in aborts:
        hub.feeds.discard(feed)
    hub.feeds.discard(aborts[0])   # twice is harmless
    offered.clear()
    hub.dispatch([event(3, models.EV_ABORTED, "b")])
    assert offered == [everything]
    assert len(hub.feeds) == 2 and everything in hub.feeds and aborts[0] not in hub.feeds


async def test_a_woken_wait_resumes_at_the_next_turn_of_the_loop() -> None:
    import asyncio

    hub = Hub(store=None)   # type: ignore[arg-type]
    with hub.wait_queues(["q"]) as waiter:
        waiting = asyncio.ensure_future(waiter.wait(30.0))
        for _ in range(3):
            await asyncio.sleep(0)   # parked
        assert not waiting.done()
        # When it is woken
        waiter.wake()
        # Then the waiting task has its answer after one turn of the loop
        await asyncio.sleep(0)
        assert waiting.done() and waiting.result() is True


async def test_a_wait_nobody_wakes_times_out_false_and_a_woken_waiter_does_not_wait() -> None:
    import asyncio

    hub = Hub(store=None)   # type: ignore[arg-type]
    with hub.wait_queues(["q"]) as waiter:
        assert await waiter.wait(0.05) is False
        waiter.wake()
        assert await asyncio.wait_for(waiter.wait(30.0), 1) is True
        assert waiter.woken
