"""Store contract: the event log (events_since, last_seq) and live subscriptions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tqueues import models
from tqueues.errors import Conflict
from tqueues.store import Store, open_store

from store_contract.contract_helpers import (SHORT_LEASE, fail, finish, put, receive_until, spec, take,
                                             wait_expired)

EVENT_KEYS = {"seq", "ts", "kind", "queue", "job_id", "new_val"}


async def test_given_a_fresh_store_when_asking_last_seq_then_it_is_zero_and_there_are_no_events(store: Store) -> None:
    # Given a fresh store, Then there is no event yet
    assert await store.last_seq() == 0
    assert await store.events_since(0) == []


async def test_given_every_kind_of_change_when_made_then_each_emits_its_event_with_the_job_document(
        store: Store) -> None:
    # Given a store and a record of (expected kind, job document after the change)
    expected: list[tuple[str, str | None, dict[str, Any]]] = []

    def saw(kind: str, doc: dict[str, Any]) -> None:
        expected.append((kind, doc.get("queue", doc.get("name")), doc))

    # When every kind of change is made
    [(created, _)] = await store.enqueue([spec("q", max_attempts=2)])
    saw(models.EV_CREATED, created)
    claimed = await take(store, "q")
    saw(models.EV_STARTED, claimed)
    saw(models.EV_UPDATED, await store.update_data(created["id"], {"step": 1}, claimed["lease"]))
    [released] = await store.release([(claimed["id"], claimed["lease"])])
    saw(models.EV_RELEASED, released["job"])
    claimed = await take(store, "q")
    saw(models.EV_STARTED, claimed)
    saw(models.EV_RETRYING, await fail(store, claimed))
    claimed = await take(store, "q", lease_seconds=SHORT_LEASE)
    saw(models.EV_STARTED, claimed)
    await wait_expired()
    assert await store.requeue_expired() == 1
    saw(models.EV_FAILED, await store.get(created["id"]))   # max_attempts=2: both used
    other = await put(store, "q")
    saw(models.EV_CREATED, other)
    claimed = await take(store, "q")
    saw(models.EV_STARTED, claimed)
    saw(models.EV_FINISHED, await finish(store, claimed, result=42))
    third = await put(store, "q")
    saw(models.EV_CREATED, third)
    saw(models.EV_ABORTED, await store.abort(third["id"]))
    fourth = await put(store, "q")
    saw(models.EV_CREATED, fourth)
    claimed = await take(store, "q", lease_seconds=SHORT_LEASE)
    saw(models.EV_STARTED, claimed)
    await wait_expired()
    assert await store.requeue_expired() == 1
    saw(models.EV_REQUEUED, await store.get(fourth["id"]))
    saw(models.EV_QUEUE, await store.set_queue("q", paused=True))

    # Then the log holds exactly these events, in order, with strictly increasing seq
    events = await store.events_since(0)
    assert [(e["kind"], e["queue"]) for e in events] == [(kind, queue) for kind, queue, _ in expected]
    seqs = [e["seq"] for e in events]
    assert all(a < b for a, b in zip(seqs, seqs[1:])) and seqs[0] > 0
    assert await store.last_seq() == seqs[-1]
    for event, (kind, _, doc) in zip(events, expected):
        assert set(event) == EVENT_KEYS
        assert isinstance(event["ts"], float)
        # ... each job event carries the job id and the job document as it was after the change
        if kind in models.JOB_KINDS:
            assert event["job_id"] == doc["id"]
            assert event["new_val"] == doc, kind
        else:
            assert event["job_id"] is None and event["new_val"]["paused"] is True


async def test_given_events_when_read_since_a_seq_then_only_later_ones_come_oldest_first(store: Store) -> None:
    # Given five events
    await store.enqueue([spec(args=[i]) for i in range(5)])
    everything = await store.events_since(0)
    assert len(everything) == 5

    # When reading after the second, and with a limit
    after_second = await store.events_since(everything[1]["seq"])
    limited = await store.events_since(0, limit=2)
    limited_after = await store.events_since(everything[1]["seq"], 2)

    # Then only later events come, oldest first, at most limit
    assert after_second == everything[2:]
    assert limited == everything[:2]
    assert limited_after == everything[2:4]
    assert await store.events_since(everything[-1]["seq"]) == []


async def test_given_events_of_several_queues_and_jobs_when_filtered_then_only_matching_ones_come(
        store: Store) -> None:
    # Given events about jobs in queues a and b, and about queue a itself
    a1 = await put(store, "a")
    b1 = await put(store, "b")
    a2 = await put(store, "a")
    await store.update_data(a1["id"], {"x": 1})
    await store.set_queue("a", paused=True)

    # When filtering by queue, by job, and by both
    by_queue = await store.events_since(0, queue="a")
    by_job = await store.events_since(0, job_id=a1["id"])
    by_both = await store.events_since(0, queue="b", job_id=a1["id"])
    by_queue_limited = await store.events_since(0, 2, queue="a")

    # Then each filter applies
    assert [(e["kind"], e["job_id"]) for e in by_queue] == [
        (models.EV_CREATED, a1["id"]), (models.EV_CREATED, a2["id"]), (models.EV_UPDATED, a1["id"]),
        (models.EV_QUEUE, None)]
    assert [e["kind"] for e in by_job] == [models.EV_CREATED, models.EV_UPDATED]
    assert by_both == []
    assert by_queue_limited == by_queue[:2]
    assert [e["job_id"] for e in await store.events_since(0, queue="b")] == [b1["id"]]


# --------------------------------------------------------------------------- subscriptions


async def test_given_a_subscriber_when_changes_commit_then_it_receives_their_events_live(store: Store) -> None:
    # Given an event written before subscribing, then a subscriber
    await put(store, "q", args=["before"])
    sub = store.subscribe()

    # When jobs are enqueued and one is claimed
    [(job, _)] = await store.enqueue([spec("q", args=["after"])])
    claimed = await take(store, "q")

    # Then the subscriber receives exactly the later events, the same as the stored log
    got = await receive_until(sub, lambda e: e["kind"] == models.EV_STARTED)
    assert [(e["kind"], e["job_id"]) for e in got] == [(models.EV_CREATED, job["id"]), (models.EV_STARTED, claimed["id"])]
    stored = await store.events_since(got[0]["seq"] - 1)
    assert got == stored
    sub.close()


async def test_given_several_subscribers_when_a_change_commits_then_each_receives_it(store: Store) -> None:
    # Given two subscribers
    subs = [store.subscribe(), store.subscribe()]

    # When a job is enqueued
    job = await put(store)

    # Then both receive its job.created event
    for sub in subs:
        [event] = await asyncio.wait_for(sub.get(), 2.0)
        assert (event["kind"], event["job_id"], event["new_val"]) == (models.EV_CREATED, job["id"], job)
        sub.close()


async def test_given_a_subscriber_when_an_operation_fails_then_nothing_is_published(store: Store) -> None:
    # Given a finished job, a pending job and a subscriber
    ended = await put(store)
    await finish(store, await take(store))
    pending = await put(store)
    sub = store.subscribe()
    seq = await store.last_seq()

    # When failing operations run, alone and alongside a successful one
    with pytest.raises(Conflict):
        await store.abort(ended["id"])
    with pytest.raises(Exception):
        await store.enqueue([spec(), spec(args=[object()])])
    outcomes = await asyncio.gather(store.abort(ended["id"]), store.update_data(pending["id"], {"ok": 1}),
                                    return_exceptions=True)
    assert isinstance(outcomes[0], Conflict) and isinstance(outcomes[1], dict)

    # Then the subscriber receives only the successful update, and the log holds only it
    got = await receive_until(sub, lambda e: e["kind"] == models.EV_UPDATED)
    assert [(e["kind"], e["job_id"]) for e in got] == [(models.EV_UPDATED, pending["id"])]
    assert [e["kind"] for e in await store.events_since(seq)] == [models.EV_UPDATED]
    sub.close()


async def test_given_a_small_subscription_when_more_events_arrive_than_it_holds_then_it_overflows(
        store: Store) -> None:
    # Given a subscription holding at most two events
    sub = store.subscribe(limit=2)

    # When three events are committed
    await store.enqueue([spec(), spec(), spec()])

    # Then it is marked overflowed and returns nothing more: its owner must re-read the log
    assert await asyncio.wait_for(sub.get(), 2.0) == []
    assert sub.overflowed is True
    assert len(await store.events_since(0)) == 3
    sub.close()


async def test_given_a_closed_subscription_when_read_then_it_returns_nothing_and_gets_no_events(
        store: Store) -> None:
    # Given a closed subscription
    sub = store.subscribe()
    sub.close()

    # When a change commits and the subscription is read
    await put(store)

    # Then it returns an empty list at once
    assert sub.closed is True
    assert await asyncio.wait_for(sub.get(), 1.0) == []


async def test_given_a_subscriber_when_the_store_closes_then_its_subscription_is_closed(db_url: str) -> None:
    # Given an open store with a subscriber waiting for events
    own = open_store(db_url)
    await own.open()
    sub = own.subscribe()
    waiting = asyncio.ensure_future(sub.get())
    await asyncio.sleep(0)

    # When the store closes
    await own.close()

    # Then the waiting reader wakes up with nothing and the subscription is closed
    assert await asyncio.wait_for(waiting, 2.0) == []
    assert sub.closed is True


async def test_given_a_reopened_store_when_changes_continue_then_data_persists_and_seq_keeps_growing(
        db_url: str) -> None:
    # Given a store that recorded a job and was closed
    async with open_store(db_url) as first:
        job = await put(first)
        seq = await first.last_seq()

    # When the store is opened again (open is idempotent) and another job is enqueued
    async with open_store(db_url) as second:
        again = await second.get(job["id"])
        other = await put(second)
        events = await second.events_since(seq)

    # Then the job survived and the new event continues the sequence
    assert again == job
    assert [(e["kind"], e["job_id"]) for e in events] == [(models.EV_CREATED, other["id"])]
    assert events[0]["seq"] > seq
