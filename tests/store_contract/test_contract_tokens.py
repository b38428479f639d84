"""Contract: access tokens (only hashes stored) and strict queues."""

from __future__ import annotations

import pytest

from tqueues.errors import InvalidRequest, NotFound
from tqueues.store import Store


async def test_given_a_token_record_then_it_is_stored_without_exposing_its_hash_in_listings(store: Store) -> None:
    created = await store.create_token({"id": "t1", "hash": "h" * 64, "scopes": ["submit"], "queues": ["a*"],
                                        "methods": ["app.*"], "name": "ci"})
    assert "hash" not in created and created["revoked_at"] is None and created["created_at"] > 0
    full = await store.token("t1")
    assert (full["hash"], full["scopes"], full["queues"], full["methods"], full["name"]) == ("h" * 64, ["submit"], ["a*"], ["app.*"], "ci")
    listed = await store.tokens()
    assert [t["id"] for t in listed] == ["t1"] and "hash" not in listed[0]


async def test_given_a_revoked_token_then_its_record_says_so_and_revoking_again_is_harmless(store: Store) -> None:
    await store.create_token({"id": "t2", "hash": "x", "scopes": ["read"]})
    first = await store.revoke_token("t2")
    assert first["revoked_at"] is not None and "hash" not in first
    again = await store.revoke_token("t2")
    assert again["revoked_at"] == first["revoked_at"]
    assert (await store.token("t2"))["revoked_at"] == first["revoked_at"]


async def test_unknown_tokens_and_incomplete_records_are_refused(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.token("nope")
    with pytest.raises(NotFound):
        await store.revoke_token("nope")
    with pytest.raises(InvalidRequest):
        await store.create_token({"id": "t3", "scopes": ["read"]})


async def test_a_token_emits_no_event(store: Store) -> None:
    before = await store.last_seq()
    await store.create_token({"id": "t4", "hash": "y", "scopes": ["admin"]})
    await store.revoke_token("t4")
    assert await store.last_seq() == before


async def test_given_a_strict_queue_then_its_setting_is_kept_apart_from_paused(store: Store) -> None:
    assert await store.set_queue("s", strict=True) == {"name": "s", "paused": False, "strict": True}
    assert await store.set_queue("s", paused=True) == {"name": "s", "paused": True, "strict": True}
    assert await store.set_queue("s", strict=False) == {"name": "s", "paused": True, "strict": False}
    (queue,) = [q for q in await store.queues() if q["name"] == "s"]
    assert (queue["paused"], queue["strict"]) == (True, False)
