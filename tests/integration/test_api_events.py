"""/api/v1/events over real HTTP: pages since a seq, long-polls, and the websocket feed."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import aiohttp
import pytest
from support.server import Server

from tqueues.dispatcher import HUB

METHOD = "support.jobs:echo"


async def enqueue(server: Server, **spec: Any) -> dict[str, Any]:
    status, job = await server.call("POST", "/api/v1/jobs", json={"queue": "q", "method": METHOD, **spec})
    assert status == 201, job
    return job


async def events(server: Server, **params: Any) -> dict[str, Any]:
    """The JSON list of events, with the cursor the dispatcher gives in ``X-Last-Seq``."""
    async with server.session.get(server.url + "api/v1/events", params={k: str(v) for k, v in params.items()}) as response:
        body = await response.json()
        assert response.status == 200, body
        assert isinstance(body, list)
        return {"events": body, "last_seq": int(response.headers["X-Last-Seq"])}


async def receive(ws: aiohttp.ClientWebSocketResponse, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        message = await ws.receive(timeout=timeout)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        out.append(json.loads(message.data))
    return out


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition was not reached in time"
        await asyncio.sleep(0.002)


# ---------------------------------------------------------------------------- HTTP


async def test_given_changes_when_events_are_read_since_zero_then_they_come_in_seq_order(server: Server) -> None:
    # Given a job created, claimed and finished
    job = await enqueue(server)
    _, claimed = await server.call("POST", "/api/v1/claim", json={"queue": "q"})
    await server.call("POST", f"/api/v1/jobs/{job['id']}/complete", json={"lease": claimed["jobs"][0]["lease"], "result": 1})
    # When every event since 0 is read
    page = await events(server, since=0)
    # Then its three changes come in order, each with the job document as it became
    kinds = [(e["kind"], e["job_id"], e["queue"]) for e in page["events"]]
    assert kinds == [("job.created", job["id"], "q"), ("job.started", job["id"], "q"), ("job.finished", job["id"], "q")]
    seqs = [e["seq"] for e in page["events"]]
    assert seqs == sorted(set(seqs)) and page["last_seq"] == seqs[-1]
    assert [e["new_val"]["status"] for e in page["events"]] == ["pending", "started", "finished"]
    # And reading since the last seq gives nothing new
    assert (await events(server, since=page["last_seq"]))["events"] == []


async def test_given_events_of_several_queues_and_kinds_when_filtered_then_only_matching_ones_come(server: Server) -> None:
    a = await enqueue(server, queue="a")
    await enqueue(server, queue="b")
    await server.call("PATCH", f"/api/v1/jobs/{a['id']}", json={"data": {"x": 1}})
    assert [e["queue"] for e in (await events(server, since=0, queue="a"))["events"]] == ["a", "a"]
    assert [e["kind"] for e in (await events(server, since=0, kind="job.updated"))["events"]] == ["job.updated"]
    assert {e["job_id"] for e in (await events(server, since=0, job=a["id"]))["events"]} == {a["id"]}
    page = await events(server, since=0, limit=1)
    assert len(page["events"]) == 1 and page["last_seq"] == page["events"][0]["seq"]


async def test_given_no_new_event_when_events_long_poll_then_a_change_answers_at_once(server: Server) -> None:
    await enqueue(server)
    last = (await events(server, since=0))["last_seq"]
    hub = server.app[HUB]
    feeds_before = len(hub.feeds)
    waiting = asyncio.ensure_future(events(server, since=last, wait=5))
    await until(lambda: len(hub.feeds) > feeds_before)
    assert not waiting.done()
    # When a new job is enqueued
    changed_at = time.monotonic()
    job = await enqueue(server, queue="other")
    page = await asyncio.wait_for(waiting, 5)
    # Then the long-poll answers with just that change, quickly
    assert time.monotonic() - changed_at < 0.5
    assert [(e["kind"], e["job_id"]) for e in page["events"]] == [("job.created", job["id"])]
    assert page["last_seq"] == page["events"][0]["seq"] > last


async def test_given_no_since_when_events_long_poll_then_only_later_events_come(server: Server) -> None:
    await enqueue(server)
    started = time.monotonic()
    page = await events(server, wait=0.2)
    assert page["events"] == [] and time.monotonic() - started >= 0.18
    assert page["last_seq"] == await server.store.last_seq()


# ---------------------------------------------------------------------------- websocket


async def test_given_past_events_when_a_websocket_connects_with_since_then_it_replays_then_streams_live(
        server: Server) -> None:
    # Given a job created before the feed opens
    first = await enqueue(server)
    async with server.session.ws_connect(server.url + "api/v1/events?since=0") as ws:
        # Then the past event is replayed
        (replayed,) = await receive(ws, 1)
        assert (replayed["kind"], replayed["job_id"]) == ("job.created", first["id"])
        # When more changes happen
        second = await enqueue(server, queue="other")
        await server.call("PATCH", f"/api/v1/jobs/{first['id']}", json={"data": {"n": 1}})
        # Then they stream live, in order, with no gap and no duplicate
        live = await receive(ws, 2)
        assert [(e["kind"], e["job_id"]) for e in live] == [("job.created", second["id"]), ("job.updated", first["id"])]
        seqs = [replayed["seq"], *(e["seq"] for e in live)]
        assert seqs == list(range(seqs[0], seqs[0] + 3))
        assert live[1]["new_val"]["data"] == {"n": 1}


async def test_given_a_websocket_filtered_by_queue_and_kind_then_only_matching_events_are_sent(server: Server) -> None:
    async with server.session.ws_connect(server.url + "api/v1/events?queue=a&kind=job.created,job.finished") as ws:
        await until(lambda: len(server.app[HUB].feeds) == 1)
        job = await enqueue(server, queue="a")
        await enqueue(server, queue="b")
        _, claimed = await server.call("POST", "/api/v1/claim", json={"queue": "a"})
        await server.call("POST", f"/api/v1/jobs/{job['id']}/complete", json={"lease": claimed["jobs"][0]["lease"]})
        marker = await enqueue(server, queue="a")
        got = await receive(ws, 3)
    assert [(e["kind"], e["job_id"]) for e in got] == [
        ("job.created", job["id"]), ("job.finished", job["id"]), ("job.created", marker["id"])]


async def test_given_events_committed_while_the_replay_reads_when_a_websocket_resumes_then_nothing_is_lost(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two past events, and a third committed (and published) while the replay is reading
    a = await enqueue(server)
    b = await enqueue(server)
    original = server.store.events_since
    injected: list[dict[str, Any]] = []

    async def racing_events_since(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        page = await original(*args, **kwargs)
        if not injected:
            injected.append(await enqueue(server))
            await until(lambda: server.app[HUB].events_seen >= 3)
        return page

    monkeypatch.setattr(server.store, "events_since", racing_events_since)
    async with server.session.ws_connect(server.url + "api/v1/events?since=0") as ws:
        got = await receive(ws, 3)
    # Then the feed holds every event exactly once, in order
    assert [e["job_id"] for e in got] == [a["id"], b["id"], injected[0]["id"]]
    assert [e["seq"] for e in got] == [1, 2, 3]


async def test_given_a_websocket_when_the_client_closes_then_the_dispatcher_drops_its_feed_promptly(server: Server) -> None:
    hub = server.app[HUB]
    async with server.session.ws_connect(server.url + "api/v1/events") as ws:
        await until(lambda: len(hub.feeds) == 1)
        await ws.close()
    # Then its feed is dropped promptly (not at the feed's next 1 s poll)
    await until(lambda: len(hub.feeds) == 0, timeout=0.5)
    await enqueue(server)   # and publishing afterwards is harmless
    assert (await server.call("GET", "/api/v1/health"))[0] == 200


async def test_given_an_event_seq_when_a_websocket_connects_since_it_then_only_later_events_are_replayed(
        server: Server) -> None:
    await enqueue(server)
    await enqueue(server)
    since = await server.store.last_seq()
    later = await enqueue(server)
    async with server.session.ws_connect(server.url + f"api/v1/events?since={since}") as ws:
        (event,) = await receive(ws, 1)
        assert (event["kind"], event["job_id"], event["seq"]) == ("job.created", later["id"], since + 1)
        with pytest.raises(asyncio.TimeoutError):
            await ws.receive(timeout=0.1)


async def test_given_pending_jobs_when_a_feed_asks_for_the_initial_state_then_it_gets_them_first(server: Server) -> None:
    a = await enqueue(server, queue="snap")
    b = await enqueue(server, queue="snap")
    await enqueue(server, queue="elsewhere")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(server.url + "api/v1/events?queue=snap&initial=true")
        first = await receive(ws, 2)
        assert {(e["kind"], e["job_id"]) for e in first} == {("job.initial", a["id"]), ("job.initial", b["id"])}
        assert all(e["new_val"]["status"] == "pending" for e in first)
        c = await enqueue(server, queue="snap")
        (live,) = await receive(ws, 1)
        assert (live["kind"], live["job_id"]) == ("job.created", c["id"]) and live["seq"] > first[0]["seq"]
        await ws.close()
        bad = await session.get(server.url + "api/v1/events?initial=maybe", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                                                   "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        assert bad.status == 400
