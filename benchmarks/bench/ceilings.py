"""Ceilings for context: what the layers under tqueues can do on this machine at best.

    python -m bench.ceilings server PORT              # a bare aiohttp app: GET / and a websocket echo at /ws
    python -m bench.ceilings client URL SECONDS CONC  # keep-alive aiohttp client: requests/s
    python -m bench.ceilings echo URL SECONDS         # one websocket, one message answered at a time: messages/s
    python -m bench.ceilings sqlite DIR N BATCH       # batched insert + two updates per job: jobs/s

tqueues' dispatcher is an aiohttp application in front of SQLite: every job is at least one
insert and two updates (claim, completion) and three HTTP requests' worth of work at each
end, so these figures bound what its HTTP hop and its store could reach on this machine. The
echo is the bound of one-by-one enqueueing over the client's enqueue websocket: the same
frames each way, with nothing done between them.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import time
import uuid
from typing import Any

import aiohttp
from aiohttp import web


def server(port: int) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/ws", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


async def client(url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    count = 0
    deadline = time.perf_counter() + seconds

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def loop() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                async with session.get(url) as answer:
                    await answer.read()
                count += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"rate": count / elapsed}


# What Client.enqueue sends for one job, and about what comes back.
ECHO_MESSAGE = json.dumps({"ref": 1, "job": {"queue": "bench", "method": "bench.apps.tqueues_app:job", "args": [1]}})


async def echo_client(url: str, seconds: float) -> dict[str, Any]:
    """Messages/s of one websocket on which each message waits for its answer (as enqueue
    calls awaited one after the other do)."""
    count = 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            started = time.perf_counter()
            deadline = started + seconds
            while time.perf_counter() < deadline:
                await ws.send_str(ECHO_MESSAGE)
                await ws.receive_str()
                count += 1
            elapsed = time.perf_counter() - started
    return {"rate": count / elapsed}


def sqlite_rate(directory: str, n: int, batch: int) -> dict[str, Any]:
    """Insert ``n`` job rows in transactions of ``batch``, then set them started, then finished."""
    path = os.path.join(directory, f"ceiling-{uuid.uuid4().hex[:8]}.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, queue TEXT, method TEXT, args TEXT, status TEXT, "
                     "result TEXT, created_at REAL, updated_at REAL)")
        conn.execute("CREATE INDEX jobs_ready ON jobs (queue, status, created_at)")
        ids = [uuid.uuid4().hex for _ in range(n)]
        started = time.perf_counter()
        for low in range(0, n, batch):
            conn.execute("BEGIN")
            now = time.time()
            conn.executemany("INSERT INTO jobs VALUES (?, 'bench', 'bench:job', ?, 'pending', NULL, ?, ?)",
                             [(i, json.dumps([k]), now, now) for k, i in enumerate(ids[low:low + batch], low)])
            conn.execute("COMMIT")
        inserted = time.perf_counter()
        for status in ("started", "finished"):
            for low in range(0, n, batch):
                conn.execute("BEGIN")
                now = time.time()
                conn.executemany("UPDATE jobs SET status = ?, result = '0', updated_at = ? WHERE id = ?",
                                 [(status, now, i) for i in ids[low:low + batch]])
                conn.execute("COMMIT")
        ended = time.perf_counter()
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except OSError:
                pass
    return {"insert": n / (inserted - started), "jobs": n / (ended - started)}


if __name__ == "__main__":
    action = sys.argv[1]
    if action == "server":
        server(int(sys.argv[2]))
    elif action == "client":
        print(json.dumps(asyncio.run(client(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))), flush=True)
    elif action == "echo":
        print(json.dumps(asyncio.run(echo_client(sys.argv[2], float(sys.argv[3])))), flush=True)
    else:
        print(json.dumps(sqlite_rate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))), flush=True)
