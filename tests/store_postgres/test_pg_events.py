"""Event seqs of the PostgreSQL store when several dispatchers write to one database at once."""

from __future__ import annotations

import asyncio

from tqueues import models
from tqueues.store import open_store


async def test_given_two_dispatchers_writing_at_once_then_event_seqs_have_no_gap_and_no_duplicate(pg_url: str) -> None:
    # Given two stores (two dispatchers) on one database
    stores = [open_store(pg_url), open_store(pg_url)]
    for store in stores:
        await store.open()
    try:
        # When both enqueue, claim and complete in many small transactions at the same time
        async def work(store, tag: str) -> int:
            written = 0
            for round_ in range(40):
                jobs = [models.NewJob(queue=f"q-{tag}", method="m:f", args=[round_, n]) for n in range(1 + round_ % 3)]
                await store.enqueue(jobs)
                written += len(jobs)
                claimed = await store.claim([f"q-{tag}"], "w", 2)
                written += len(claimed)
            return written

        counts = await asyncio.gather(*(work(store, tag) for store, tag in zip(stores, "ab")))
        # Then the seqs of all their events run 1, 2, 3, ... in commit order: none twice, none missing
        events = await stores[0].events_since(0, limit=10_000)
        job_events = [e for e in events if e["kind"] in (models.EV_CREATED, models.EV_STARTED)]
        assert len(job_events) == sum(counts)
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        # And the events of both dispatchers are there
        assert {e["queue"] for e in job_events} == {"q-a", "q-b"}
    finally:
        for store in stores:
            await store.close()


async def test_given_a_dispatcher_enqueueing_one_by_one_then_its_own_notifies_cost_no_catch_up_read(pg_url: str) -> None:
    store = open_store(pg_url)
    await store.open()
    reads = 0
    real = store._events_since

    async def counted(*args, **kwargs):
        nonlocal reads
        reads += 1
        return await real(*args, **kwargs)

    sub = store.subscribe()
    try:
        await asyncio.sleep(0.2)   # the listener is up, its first catch-up done
        store._events_since = counted
        # When it enqueues jobs one at a time (each commit NOTIFYs, often before its answer)
        for n in range(30):
            await store.enqueue([models.NewJob(queue="own", method="m:f", args=[n])])
        await asyncio.sleep(0.1)
        # Then its subscribers got every event, and it never read back what it had just written
        got = []
        while len(got) < 30:
            got += await asyncio.wait_for(sub.get(), 5)
        assert [e["new_val"]["args"] for e in got] == [[n] for n in range(30)]
        assert reads <= 2, f"{reads} catch-up reads for 30 of its own commits"   # the 1 s backstop poll at most
    finally:
        sub.close()
        await store.close()


async def test_given_another_dispatchers_commit_while_ours_are_in_flight_then_it_arrives_at_once(pg_url: str) -> None:
    ours, theirs = open_store(pg_url), open_store(pg_url)
    for store in (ours, theirs):
        await store.open()
    sub = ours.subscribe()
    stop = asyncio.Event()

    async def busy() -> None:   # our writes in flight nearly all the time
        n = 0
        while not stop.is_set():
            await asyncio.gather(*(ours.enqueue([models.NewJob(queue="busy", method="m:f", args=[n, k])])
                                   for k in range(4)))
            n += 1

    writer = asyncio.ensure_future(busy())
    try:
        await asyncio.sleep(0.3)
        for n in range(5):
            # When the other dispatcher commits a job
            (doc, _), = await theirs.enqueue([models.NewJob(queue="other", method="m:f", args=[n])])
            sent = asyncio.get_running_loop().time()
            # Then our subscribers see it well before the 1 s backstop poll would have found it
            while True:
                events = await asyncio.wait_for(sub.get(), 5)
                if any(e["job_id"] == doc["id"] for e in events):
                    break
            assert asyncio.get_running_loop().time() - sent < 0.5
    finally:
        stop.set()
        await writer
        sub.close()
        for store in (ours, theirs):
            await store.close()
