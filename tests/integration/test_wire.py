"""``tqueues.wire``: the worker's own HTTP/1.1 and websocket client, against real servers on
loopback (aiohttp applications, a raw asyncio server for what aiohttp would not do, and the
dispatcher itself)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import WSMsgType, web
from support.server import Server

from tqueues.errors import ClientError, ConfigurationError
from tqueues.wire import Wire

Serve = Callable[..., Awaitable[str]]
Connect = Callable[..., Awaitable[Wire]]


@pytest.fixture
def serve(serve_app: Callable[..., Awaitable[int]]) -> Serve:
    """Serve an aiohttp application on a free loopback port; its base URL."""
    async def start(app: web.Application, **runner_args: Any) -> str:
        port = await serve_app(app, **{"shutdown_timeout": 0.2, **runner_args})
        return f"http://127.0.0.1:{port}/base/"

    return start


@pytest.fixture
async def connect(serve: Serve) -> AsyncIterator[Connect]:
    """A Wire to a fresh echo_app() server (runner settings as keywords, ``token`` for the
    Wire); closed after the test."""
    wires: list[Wire] = []

    async def make(token: str | None = None, **runner_args: Any) -> Wire:
        wire = Wire(await serve(echo_app(), **runner_args), token=token)
        wires.append(wire)
        return wire

    yield make
    for wire in wires:
        await wire.close()


def peer_port(request: web.Request) -> int:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if peer else 0


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"method": request.method, "path": request.path, "query": dict(request.query),
                                  "body": body.decode(), "port": peer_port(request),
                                  "auth": request.headers.get("Authorization"),
                                  "type": request.headers.get("Content-Type")})

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b'{"parts": [', b'"a", ', b'"b"', b"]}"):
            await response.write(piece)
        await response.write_eof()
        return response

    async def closing(request: web.Request) -> web.Response:
        return web.json_response({"port": peer_port(request)}, headers={"Connection": "close"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.json_response({"slow": True})

    async def failing(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "job_not_found", "message": "no job has this id", "id": "x"}},
                                 status=404)

    async def plain_error(request: web.Request) -> web.Response:
        return web.Response(text="<html>bad gateway</html>", status=502, content_type="text/html")

    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"partial": ')
        assert request.transport is not None
        request.transport.close()
        return response

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("https://elsewhere.example/")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/base/echo", echo)
    app.router.add_get("/base/chunked", chunked)
    app.router.add_get("/base/closing", closing)
    app.router.add_get("/base/slow", slow)
    app.router.add_get("/base/failing", failing)
    app.router.add_get("/base/plain_error", plain_error)
    app.router.add_get("/base/cut", cut)
    app.router.add_get("/base/empty", empty)
    app.router.add_post("/base/moved", moved)
    return app


async def test_json_requests_reuse_one_keep_alive_connection(connect: Connect) -> None:
    wire = await connect(token="s3cret")
    first = await wire.request("POST", "echo", json={"n": 1}, params={"a": "x y"})
    second = await wire.request("GET", "/echo")
    assert first["method"] == "POST" and first["path"] == "/base/echo" and first["query"] == {"a": "x y"}
    assert first["body"] == '{"n":1}' and first["type"] == "application/json"
    assert first["auth"] == "Bearer s3cret" == second["auth"]
    assert second["method"] == "GET" and second["body"] == ""
    assert first["port"] == second["port"], "the second request opened a new connection"
    assert "s3cret" not in repr(wire)


async def test_concurrent_requests_each_get_their_own_connection(connect: Connect) -> None:
    wire = await connect()
    slow = asyncio.ensure_future(wire.request("GET", "slow", params={"s": "0.3"}))
    await asyncio.sleep(0.05)
    quick = await wire.request("GET", "echo")   # not queued behind the long one
    assert not slow.done()
    assert await slow == {"slow": True}
    assert len(wire._idle) == 2
    assert quick["method"] == "GET"


async def test_chunked_answers_are_read_whole_and_the_connection_kept(connect: Connect) -> None:
    wire = await connect()
    assert await wire.request("GET", "chunked") == {"parts": ["a", "b"]}
    before = (await wire.request("GET", "echo"))["port"]
    assert await wire.request("GET", "chunked") == {"parts": ["a", "b"]}
    assert (await wire.request("GET", "echo"))["port"] == before
    assert await wire.request("GET", "empty") is None


async def test_connection_close_answers_are_not_reused(connect: Connect) -> None:
    wire = await connect()
    first = (await wire.request("GET", "closing"))["port"]
    second = (await wire.request("GET", "closing"))["port"]
    assert first != second
    assert not wire._idle


async def test_an_idle_connection_the_server_closed_is_not_used_again(connect: Connect) -> None:
    wire = await connect(keepalive_timeout=0.1)
    first = (await wire.request("GET", "echo"))["port"]
    await asyncio.sleep(0.4)   # the server drops the idle connection
    second = await wire.request("GET", "echo")
    assert second["port"] != first


async def test_error_answers_raise_client_errors_with_the_dispatchers_code(connect: Connect) -> None:
    wire = await connect()
    with pytest.raises(ClientError) as caught:
        await wire.request("GET", "failing")
    assert (caught.value.status, caught.value.code, caught.value.message) == (404, "job_not_found", "no job has this id")
    assert caught.value.details == {"id": "x"}
    with pytest.raises(ClientError) as caught:
        await wire.request("GET", "plain_error")
    assert (caught.value.status, caught.value.code) == (502, "http_error")
    with pytest.raises(ClientError) as caught:   # not followed: the dispatcher never redirects
        await wire.request("POST", "moved", json={})
    assert (caught.value.status, caught.value.code) == (301, "http_error")
    assert (await wire.request("GET", "echo"))["method"] == "GET"   # the connection is still good


async def test_a_request_that_overruns_its_timeout_fails_as_timeout_and_drops_its_connection(connect: Connect) -> None:
    wire = await connect()
    started = time.monotonic()
    with pytest.raises(ClientError) as caught:
        await wire.request("GET", "slow", params={"s": "5"}, timeout=0.2)
    assert caught.value.code == "timeout" and caught.value.status == 0
    assert "no answer within 0.2 s" in caught.value.message
    assert time.monotonic() - started < 2
    assert not wire._idle and not wire._open, "the timed-out connection was kept"
    assert (await wire.request("GET", "echo"))["method"] == "GET"
    task = asyncio.current_task()
    if hasattr(task, "cancelling"):   # Python 3.11+: the timeout's own cancellation was taken back
        assert not task.cancelling()


async def test_a_cancelled_request_closes_its_connection(connect: Connect) -> None:
    wire = await connect()
    pending = asyncio.ensure_future(wire.request("GET", "slow", params={"s": "5"}))
    await asyncio.sleep(0.1)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert not wire._idle and not wire._open
    assert (await wire.request("GET", "echo"))["method"] == "GET"


async def test_an_answer_cut_short_fails_as_unreachable(connect: Connect) -> None:
    wire = await connect()
    with pytest.raises(ClientError) as caught:
        await wire.request("GET", "cut")
    assert caught.value.code == "unreachable"
    assert "in the middle of an answer" in caught.value.message
    assert (await wire.request("GET", "echo"))["method"] == "GET"


async def test_nothing_listening_fails_as_unreachable() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    wire = Wire(f"http://127.0.0.1:{port}")
    with pytest.raises(ClientError) as caught:
        await wire.request("POST", "api/v1/claim", json={})
    assert caught.value.code == "unreachable"
    assert f"cannot connect to 127.0.0.1:{port}" in caught.value.message
    await wire.close()
    with pytest.raises(ClientError, match="closed"):
        await wire.request("GET", "api/v1/health")


def test_endpoint_urls_must_be_http_or_https() -> None:
    for bad in ("ftp://host/", "127.0.0.1:8080", "http://", "http://host:notaport/"):
        with pytest.raises(ConfigurationError):
            Wire(bad)


async def test_requests_to_the_dispatcher(server: Server) -> None:
    wire = Wire(server.url)
    try:
        job = await wire.request("POST", "api/v1/jobs", json={"queue": "wq", "method": "m", "args": [1]})
        assert (await wire.request("GET", f"api/v1/jobs/{job['id']}"))["args"] == [1]
        with pytest.raises(ClientError) as caught:
            await wire.request("POST", "api/v1/jobs", json={"queue": "bad name!", "method": "m"})
        assert caught.value.status == 400 and caught.value.code == "invalid_request"
    finally:
        await wire.close()


# --------------------------------------------------------------------------- websockets

def ws_app(on_socket: Callable[[web.WebSocketResponse], Awaitable[None]], heartbeat: float | None = None
           ) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("deny"):
            return web.json_response({"error": {"code": "unauthorized", "message": "a token is required"}}, status=401)
        ws = web.WebSocketResponse(heartbeat=heartbeat)
        await ws.prepare(request)
        await on_socket(ws)
        return ws

    app = web.Application()
    app.router.add_get("/base/feed", handler)
    return app


async def test_websocket_messages_of_every_length_arrive_whole(serve: Serve) -> None:
    sizes = [0, 5, 125, 126, 300, 65535, 65536, 200_000]

    async def talk(ws: web.WebSocketResponse) -> None:
        for size in sizes:
            await ws.send_str("x" * size)
        await ws.send_bytes("é".encode())
        await ws.close()

    wire = Wire(await serve(ws_app(talk)))
    async with await wire.websocket("feed", {"kind": "job.aborted"}) as ws:
        got = [message async for message in ws]
    assert [len(m) for m in got[:-1]] == sizes and got[-1] == "é"
    assert ws.closed and ws.close_code == 1000
    await wire.close()


async def test_websocket_text_sent_of_every_length_arrives_whole_at_the_server(serve: Serve) -> None:
    sizes = [0, 5, 125, 126, 300, 65535, 65536, 200_000]
    got: list[str] = []

    async def talk(ws: web.WebSocketResponse) -> None:
        async for message in ws:
            got.append(message.data)
            if len(got) == len(sizes):
                await ws.send_str("all here")

    wire = Wire(await serve(ws_app(talk)))
    ws = await wire.websocket("feed")
    for size in sizes:
        await ws.send_text("é" * (size // 2) + "x" * (size % 2))
    assert await asyncio.wait_for(ws.receive(), 5) == "all here"
    assert [len(m.encode()) for m in got] == sizes
    await ws.close()
    with pytest.raises(ConnectionError):
        await ws.send_text("after close")
    await wire.close()


async def test_a_quiet_server_that_answers_pings_keeps_the_websocket_open(serve: Serve) -> None:
    async def talk(ws: web.WebSocketResponse) -> None:
        async def read() -> None:   # aiohttp answers pings as it reads
            async for _ in ws:
                pass

        reading = asyncio.ensure_future(read())
        await asyncio.sleep(1.0)   # ten heartbeats of 0.1 s without a message
        await ws.send_str("still here")
        await ws.close()
        await reading

    wire = Wire(await serve(ws_app(talk)))
    ws = await wire.websocket("feed", heartbeat=0.1)
    assert await asyncio.wait_for(ws.receive(), 5) == "still here"
    await wire.close()


async def test_websocket_answers_the_servers_pings(serve: Serve) -> None:
    async def talk(ws: web.WebSocketResponse) -> None:
        await asyncio.sleep(0.6)   # several pings of 0.1 s heartbeat: unanswered, aiohttp would close
        await ws.send_str("still here")
        await ws.close()

    wire = Wire(await serve(ws_app(talk, heartbeat=0.1)))
    ws = await wire.websocket("feed")
    assert await asyncio.wait_for(ws.receive(), 5) == "still here"
    assert await ws.receive() is None
    await wire.close()


async def test_a_websocket_whose_server_falls_silent_is_closed_by_the_heartbeat() -> None:
    """A server that took the handshake and then answers nothing, pings included."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        request = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key"))
        import base64
        import hashlib
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wire = Wire(f"http://127.0.0.1:{port}/")
    try:
        ws = await wire.websocket("feed", heartbeat=0.2)
        started = time.monotonic()
        assert await asyncio.wait_for(ws.receive(), 5) is None
        assert 0.2 <= time.monotonic() - started < 2
        assert ws.closed
    finally:
        await wire.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_websocket_raises_the_dispatchers_error(serve: Serve) -> None:
    async def talk(ws: web.WebSocketResponse) -> None:
        await ws.close()

    wire = Wire(await serve(ws_app(talk)))
    with pytest.raises(ClientError) as caught:
        await wire.websocket("feed", {"deny": "1"})
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    with pytest.raises(ClientError) as caught:
        await wire.websocket("nowhere")
    assert caught.value.status == 404
    assert not wire._open
    await wire.close()


async def test_the_abort_feed_of_the_dispatcher(server: Server) -> None:
    wire = Wire(server.url)
    try:
        ws = await wire.websocket("api/v1/events", {"kind": "job.created", "queue": "wf"})
        await asyncio.sleep(0.1)
        async with server.session.post(server.url + "api/v1/jobs", json={"queue": "wf", "method": "m"}) as answer:
            job = await answer.json()
        message = await asyncio.wait_for(ws.receive(), 10)
        assert message is not None and job["id"] in message
        await ws.close()
        assert ws.closed
        sent = [m async for m in ws]
        assert sent == []
    finally:
        await wire.close()


async def test_server_messages_while_closed_by_the_client_end_the_iteration(serve: Serve) -> None:
    async def talk(ws: web.WebSocketResponse) -> None:
        async for message in ws:
            if message.type == WSMsgType.CLOSE:
                break

    wire = Wire(await serve(ws_app(talk)))
    ws = await wire.websocket("feed")
    await ws.close()
    assert await ws.receive() is None
    await wire.close()


async def test_the_workers_full_client_is_made_on_first_use(server: Server) -> None:
    from tqueues import Client, Worker

    worker = Worker(server.url, "wq", token=None)
    assert worker._client is None
    client = worker.client
    assert isinstance(client, Client) and worker.client is client
    assert client.endpoint_url == worker.wire.endpoint_url == server.url
    await client.queues()   # it works (and opened its session)
    await worker.close()
    assert client._session is not None and client._session.closed


def test_a_worker_process_starts_without_aiohttp() -> None:
    """The worker's command line, its Worker and job registry import no aiohttp, nor
    multiprocessing and pickle (start-up time); tqueues.Client still comes on first use."""
    code = ("import sys, tqueues, tqueues.cli.worker\n"
            "assert 'aiohttp' not in sys.modules, sorted(m for m in sys.modules if 'aiohttp' in m)\n"
            "assert 'multiprocessing' not in sys.modules   # until a plain function runs\n"
            "assert 'pickle' not in sys.modules, 'pickle'   # the same\n"
            "from tqueues import Client\n"
            "assert 'aiohttp' in sys.modules and Client.__name__ == 'Client'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
