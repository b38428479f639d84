"""Contract: one worker's entry, commands left for workers, fields kept across heartbeats."""

from __future__ import annotations

import pytest

from tqueues.errors import InvalidRequest, NotFound
from tqueues.store import Store


async def test_given_a_command_when_the_worker_reports_again_then_the_command_is_kept(store: Store) -> None:
    await store.register_worker({"id": "w1", "queues": ["q"], "jobs_done": 1})
    commanded = await store.command_worker("w1", "stop")
    assert commanded["command"] == "stop" and commanded["queues"] == ["q"]
    again = await store.register_worker({"id": "w1", "queues": ["q"], "jobs_done": 2})
    assert again["command"] == "stop" and again["jobs_done"] == 2
    assert (await store.worker("w1"))["command"] == "stop"
    cleared = await store.command_worker("w1", None)
    assert cleared["command"] is None


async def test_unknown_workers_and_commands_are_refused(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.worker("ghost")
    with pytest.raises(NotFound):
        await store.command_worker("ghost", "stop")
    await store.register_worker({"id": "w2"})
    with pytest.raises(InvalidRequest):
        await store.command_worker("w2", "explode")


async def test_a_command_emits_a_worker_event(store: Store) -> None:
    await store.register_worker({"id": "w3"})
    before = await store.last_seq()
    await store.command_worker("w3", "stop")
    (event,) = await store.events_since(before)
    assert event["kind"] == "worker.updated" and event["new_val"]["command"] == "stop"
