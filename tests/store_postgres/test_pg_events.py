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
