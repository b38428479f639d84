"""The store-independent half of the tests of how job events are stored (SQLite, PostgreSQL)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from tqueues import models
from tqueues.store.base import Store

WriteOld = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]


async def check_event_forms(store: Store, write_old_event: WriteOld,
                            created_is_array: Callable[[], Awaitable[bool]]) -> None:
    """A job event written now is stored as an array of the job's values; an event as an older
    tqueues wrote it (``write_old_event(job, old_doc)`` puts one straight into the database,
    as a JSON object) still reads back. Every event reads back as the document written."""
    # Given a job event written now, and a job event as an older tqueues wrote it (an object)
    [(job, _)] = await store.enqueue([models.NewJob(queue="q", method="m:f", args=[1, {"k": "v"}])])
    await store.register_worker({"id": "w1", "queues": ["q"]})
    old = dict(job, status="started")
    await write_old_event(job, old)
    # Then the new row holds the job's values as an array, not an object of its keys
    assert await created_is_array()
    # And every event reads back as the document it was written with, whichever the form
    events = await store.events_since(0)
    assert [e["kind"] for e in events] == ["job.created", models.EV_WORKER, "job.started"]
    assert events[0]["new_val"] == job
    assert events[1]["new_val"]["id"] == "w1"
    assert events[2]["new_val"] == old
