"""``GET /api/v1/enqueue``: enqueueing over one websocket, raw and through ``tqueues.Client``,
over real loopback connections."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from support.server import Server

import tqueues
from tqueues.dispatcher import auth
from tqueues.dispatcher.app import HUB
from tqueues.errors import ClientError

METHOD = "support.jobs:echo"
Start = Callable[..., Awaitable[Server]]


def job(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"queue": "cq", "method": METHOD, "args": [n], **extra}


async def open_channel(server: Server, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    return await server.session.ws_connect(server.url + "api/v1/enqueue", **kwargs)


async def ask(ws: aiohttp.ClientWebSocketResponse, message: Any) -> dict[str, Any]:
    await ws.send_str(message if isinstance(message, str) else json.dumps(message))
    return json.loads((await ws.receive(timeout=10)).data)


async def jobs_in(server: Server, queue: str = "cq") -> list[dict[str, Any]]:
    status, body = await server.call("GET", f"/api/v1/jobs?queue={queue}&limit=1000")
    assert status == 200, body
    return body["jobs"]


async def test_given_a_channel_when_jobs_are_sent_then_each_answer_carries_its_ref_and_the_jobs_exist(
        server: Server) -> None:
    ws = await open_channel(server)
    # When one job, then a batch, are sent
    one = await ask(ws, {"ref": 1, "job": job(1)})
    many = await ask(ws, {"ref": "batch-a", "jobs": [job(2), job(3)]})
    # Then each is answered as POST /api/v1/jobs would, with its ref
    assert (one["ref"], one["status"], one["job"]["status"], one["job"]["args"]) == (1, 201, "pending", [1])
    assert (many["ref"], many["status"], [j["args"] for j in many["jobs"]]) == ("batch-a", 201, [[2], [3]])
    # And the jobs are stored
    stored = {j["id"]: j for j in await jobs_in(server)}
    assert {one["job"]["id"], *(j["id"] for j in many["jobs"])} == set(stored)
    await ws.close()


async def test_given_a_channel_when_a_batch_asks_for_no_documents_then_it_is_answered_with_ids(server: Server) -> None:
    ws = await open_channel(server)
    answer = await ask(ws, {"ref": 7, "jobs": [job(1), job(2)], "documents": False})
    assert (answer["ref"], answer["status"]) == (7, 201)
    assert [set(item) for item in answer["jobs"]] == [{"id", "status", "created"}] * 2
    assert {j["id"] for j in await jobs_in(server)} == {item["id"] for item in answer["jobs"]}
    bad = await ask(ws, {"ref": 8, "jobs": [job(3)], "documents": 0})
    assert (bad["status"], bad["error"]["field"]) == (400, "documents")
    assert len(await jobs_in(server)) == 2
    await ws.close()


async def test_given_a_channel_when_many_messages_are_sent_without_waiting_then_every_one_is_answered_once(
        server: Server) -> None:
    ws = await open_channel(server)
    for ref in range(100):
        await ws.send_str(json.dumps({"ref": ref, "job": job(ref)}))
    answers = [json.loads((await ws.receive(timeout=10)).data) for _ in range(100)]
    assert sorted(a["ref"] for a in answers) == list(range(100))
    assert all(a["status"] == 201 and a["job"]["args"] == [a["ref"]] for a in answers)
    assert len({a["job"]["id"] for a in answers}) == 100
    assert len(await jobs_in(server)) == 100
    await ws.close()


async def test_given_an_idempotency_key_sent_twice_then_the_second_answer_is_the_first_job_with_200(
        server: Server) -> None:
    ws = await open_channel(server)
    first = await ask(ws, {"ref": 1, "job": job(1, key="order-7")})
    again = await ask(ws, {"ref": 2, "job": job(1, key="order-7")})
    assert (first["status"], again["status"]) == (201, 200)
    assert first["job"]["id"] == again["job"]["id"]
    assert len(await jobs_in(server)) == 1
    await ws.close()


MALFORMED: list[tuple[str, Any, Any, str]] = [
    # name, message, ref expected in the answer, error code
    ("not JSON", "{nope", None, "invalid_request"),
    ("a JSON array", "[1, 2]", None, "invalid_request"),
    ("neither job nor jobs", {"ref": 3}, 3, "invalid_request"),
    ("both job and jobs", {"ref": 4, "job": job(), "jobs": [job()]}, 4, "invalid_request"),
    ("a boolean ref", {"ref": True, "job": job()}, None, "invalid_request"),
    ("a list ref", {"ref": [1], "job": job()}, None, "invalid_request"),
    ("a ref too long", {"ref": "r" * 500, "job": job()}, None, "invalid_request"),
    ("job not an object", {"ref": 8, "job": [1]}, 8, "invalid_request"),
    ("jobs not a list", {"ref": 9, "jobs": {"queue": "cq"}}, 9, "invalid_request"),
    ("bad queue name", {"ref": 10, "job": {**job(), "queue": "bad name!"}}, 10, "invalid_request"),
    ("no method", {"ref": 11, "job": {"queue": "cq"}}, 11, "invalid_request"),
    ("one bad job of a batch", {"ref": 12, "jobs": [job(), {**job(), "args": "x"}]}, 12, "invalid_request"),
]


async def test_given_malformed_messages_then_each_gets_a_4xx_answer_nothing_is_enqueued_and_the_socket_goes_on(
        server: Server) -> None:
    ws = await open_channel(server)
    failures = []
    for name, message, ref, code in MALFORMED:
        answer = await ask(ws, message)
        if not (answer.get("ref") == ref and 400 <= answer.get("status", 0) < 500
                and answer.get("error", {}).get("code") == code and answer["error"].get("message")):
            failures.append(f"{name}: {answer}")
    # A binary frame is refused the same way
    await ws.send_bytes(b'{"ref": 1, "job": {}}')
    binary = json.loads((await ws.receive(timeout=10)).data)
    assert (binary["status"], binary["error"]["code"]) == (400, "invalid_request")
    assert failures == [], "\n".join(failures)
    # Then nothing was enqueued, and the same socket still enqueues
    assert await jobs_in(server) == []
    ok = await ask(ws, {"ref": 99, "job": job(99)})
    assert (ok["ref"], ok["status"]) == (99, 201)
    await ws.close()


async def test_given_a_message_over_the_body_limit_then_the_socket_closes_with_1009_and_the_dispatcher_goes_on(
        start_server: Start) -> None:
    server = await start_server(max_body=2048)
    ws = await open_channel(server)
    await ws.send_str(json.dumps({"ref": 1, "job": job(0, data={"blob": "x" * 10_000})}))
    closing = await ws.receive(timeout=10)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert ws.close_code == 1009
    assert await jobs_in(server) == []
    assert (await server.call("GET", "/api/v1/health"))[0] == 200
    ws = await open_channel(server)
    assert (await ask(ws, {"ref": 2, "job": job(2)}))["status"] == 201
    await ws.close()


# ---------------------------------------------------------------------------- tqueues.Client

async def test_given_a_client_then_enqueue_uses_one_websocket_and_concurrent_calls_share_it(server: Server) -> None:
    async with tqueues.Client(server.url) as client:
        first = await client.enqueue(METHOD, 1, queue="cq")
        socket = client._channel._socket   # type: ignore[union-attr]
        assert socket is not None and not socket.ws.closed
        docs = await asyncio.gather(*(client.enqueue(METHOD, n, queue="cq") for n in range(2, 202)))
        # the same socket carried them all
        assert client._channel._socket is socket   # type: ignore[union-attr]
    assert [d["args"] for d in docs] == [[n] for n in range(2, 202)]
    assert {j["id"] for j in await jobs_in(server)} == {first["id"], *(d["id"] for d in docs)}


async def test_given_jobs_of_every_frame_length_then_the_client_sends_them_all_over_its_socket(server: Server) -> None:
    # A websocket frame gives its length in 7 bits, in 16 bits past 125 bytes, in 64 bits past
    # 65,535: one job of each size, and one of a few megabytes, on the same socket
    sizes = [0, 60, 126, 3_000, 65_535, 70_000, 3_000_000]
    async with tqueues.Client(server.url) as client:
        await client.enqueue(METHOD, "", queue="cq")
        socket = client._channel._socket   # type: ignore[union-attr]
        docs = [await client.enqueue(METHOD, "é" * (size // 2) + "x" * (size % 2), queue="cq") for size in sizes]
        assert client._channel._socket is socket and not socket.ws.closed   # type: ignore[union-attr]
    stored = {j["id"]: j for j in await jobs_in(server)}
    for size, doc in zip(sizes, docs):
        assert len(stored[doc["id"]]["args"][0].encode()) == size
        assert stored[doc["id"]]["args"] == doc["args"]


async def test_given_auth_when_the_client_has_a_submit_token_then_its_jobs_go_over_the_socket(start_server: Start) -> None:
    server = await start_server(auth=True)
    value = await make_token(server, "submit")
    async with tqueues.Client(server.url, token=value) as client:
        docs = await asyncio.gather(*(client.enqueue(METHOD, n, queue="cq") for n in range(20)))
        socket = client._channel._socket   # type: ignore[union-attr]
        assert socket is not None and not socket.ws.closed
        assert len(server.app[HUB].sockets) == 1   # the dispatcher holds the client's socket
    assert sorted(d["args"][0] for d in docs) == list(range(20))


async def test_given_a_refused_job_then_the_client_raises_the_same_error_as_over_http(server: Server) -> None:
    errors = []
    for channel in (True, False):
        async with tqueues.Client(server.url, channel=channel) as client:
            with pytest.raises(ClientError) as caught:
                await client.enqueue(METHOD, queue="bad name!")
            errors.append((caught.value.status, caught.value.code, str(caught.value)))
    assert errors[0] == errors[1]
    assert errors[0][:2] == (400, "invalid_request")


async def test_given_the_dispatcher_closes_the_socket_then_the_next_enqueue_opens_another(server: Server) -> None:
    async with tqueues.Client(server.url) as client:
        await client.enqueue(METHOD, 1, queue="cq")
        old = client._channel._socket   # type: ignore[union-attr]
        # When the dispatcher side closes it (a restart, a proxy timeout)
        for ws in list(server.app[HUB].sockets):
            await ws.close()
        await asyncio.sleep(0.1)
        # Then the next enqueue goes through on a new socket
        again = await client.enqueue(METHOD, 2, queue="cq")
        assert client._channel._socket is not old   # type: ignore[union-attr]
    assert again["status"] == "pending"
    assert len(await jobs_in(server)) == 2


async def test_given_a_dispatcher_that_never_answers_then_each_enqueue_times_out_on_time(
        serve_app: Callable[..., Awaitable[int]]) -> None:
    # Given an endpoint that takes the websocket and reads every message but answers none
    async def silent(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/enqueue", silent)
    port = await serve_app(app)
    async with tqueues.Client(f"http://127.0.0.1:{port}/", timeout=0.3) as client:
        # When enqueues are sent a moment apart
        async def enqueue_late(delay: float) -> tuple[float, ClientError]:
            await asyncio.sleep(delay)
            started = time.monotonic()
            with pytest.raises(ClientError) as caught:
                await client.enqueue(METHOD, queue="cq")
            return time.monotonic() - started, caught.value
        outcomes = await asyncio.gather(*(enqueue_late(d) for d in (0.0, 0.1, 0.2, 0.5)))
        # Then each fails with a timeout once its own 0.3 s are up, not before
        for took, error in outcomes:
            assert error.code == "timeout" and error.status == 0
            assert 0.29 <= took < 1.5
        assert not client._channel._socket.waiting   # type: ignore[union-attr]


async def test_given_a_proxy_that_refuses_websockets_then_the_client_enqueues_over_http(
        server: Server, serve_app: Callable[..., Awaitable[int]]) -> None:
    # Given a reverse proxy in front of the dispatcher that forwards plain HTTP only
    async def forward(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return web.Response(status=400, text="websockets are not proxied here")
        async with server.session.request(request.method, server.url.rstrip("/") + request.path_qs,
                                          data=await request.read(), headers={
                                              k: v for k, v in request.headers.items()
                                              if k.lower() in ("content-type", "authorization")}) as answer:
            return web.Response(status=answer.status, body=await answer.read(), content_type=answer.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    port = await serve_app(app)
    async with tqueues.Client(f"http://127.0.0.1:{port}/") as client:
        # When jobs are enqueued through it
        docs = [await client.enqueue(METHOD, n, queue="cq") for n in range(3)]
        # Then they went over HTTP, and the client stopped trying the websocket
        assert client._channel.unavailable   # type: ignore[union-attr]
        assert client._channel._socket is None   # type: ignore[union-attr]
    assert sorted(j["id"] for j in await jobs_in(server)) == sorted(d["id"] for d in docs)


# ---------------------------------------------------------------------------- authentication

async def make_token(server: Server, *scopes: str) -> str:
    value, _ = await auth.create_token(server.store, scopes, ("*",), ("*",))
    return value


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_given_auth_when_a_token_without_submit_opens_the_channel_then_it_is_refused(start_server: Start) -> None:
    server = await start_server(auth=True)
    worker_token = await make_token(server, "work")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_channel(server, headers=bearer(worker_token))
    assert refused.value.status == 403
    # And the client reports it as HTTP would
    async with tqueues.Client(server.url, token=worker_token) as client:
        with pytest.raises(ClientError) as caught:
            await client.enqueue(METHOD, queue="cq")
    assert (caught.value.status, caught.value.code) == (403, "forbidden")


async def test_given_auth_when_the_token_is_revoked_then_the_open_channel_stops_enqueueing(start_server: Start) -> None:
    server = await start_server(auth=True)
    value = await make_token(server, "submit")
    ws = await open_channel(server, headers=bearer(value))
    assert (await ask(ws, {"ref": 1, "job": job(1)}))["status"] == 201
    # When the token is revoked while the socket stays open
    await server.store.revoke_token(auth.token_id_of(value) or "")
    await asyncio.sleep(auth.CACHE_SECONDS + 0.2)
    # Then its next message is refused with 401, and nothing more is enqueued
    answer = await ask(ws, {"ref": 2, "job": job(2)})
    assert (answer["ref"], answer["status"], answer["error"]["code"]) == (2, 401, "unauthorized")
    assert value not in json.dumps(answer)
    await ws.close()
    admin = await make_token(server, "admin")
    status, body = await server.call("GET", "/api/v1/jobs?queue=cq", headers=bearer(admin))
    assert status == 200 and len(body["jobs"]) == 1


async def test_given_a_rate_limit_then_it_counts_every_message_of_the_channel(start_server: Start) -> None:
    server = await start_server(auth=True, rate_limit=1, rate_burst=3)
    value = await make_token(server, "submit")
    ws = await open_channel(server, headers=bearer(value))   # the handshake is one request
    answers = [await ask(ws, {"ref": n, "job": job(n)}) for n in range(4)]
    statuses = [a["status"] for a in answers]
    assert statuses[:2] == [201, 201]
    assert 429 in statuses[2:]
    limited = next(a for a in answers if a["status"] == 429)
    assert limited["error"]["code"] == "rate_limited" and limited["retry_after"] >= 1
    await ws.close()
