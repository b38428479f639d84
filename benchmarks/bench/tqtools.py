"""Client processes of the tqueues-only workloads (D and E), speaking raw HTTP and websockets.

    python -m bench.tqtools subscribe URL QUEUE COUNT   # COUNT websocket subscribers until told to stop
    python -m bench.tqtools claim URL QUEUE COUNT       # claim latency: COUNT claims of one job each

They use aiohttp directly rather than ``tqueues.Client`` so that what is timed is the
dispatcher's answer, not client conveniences (reconnects, event filtering).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

import aiohttp

from .record import control_url

SUBS_READY = "bench:subs_ready"
SUBS_STOP = "bench:subs_stop"


async def subscribe(url: str, queue: str, count: int) -> dict[str, Any]:
    """Hold ``count`` websockets on the queue's event feed; per message, the lag from its ``ts``."""
    import redis.asyncio

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count * 2 + 256)), hard))
    record = redis.asyncio.Redis.from_url(control_url())
    ws_url = url.rstrip("/") + "/api/v1/events"
    lags: list[float] = []
    stats = {"messages": 0, "closed": 0, "first": 0.0, "last": 0.0}
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            async with session.ws_connect(ws_url, params={"queue": queue}, max_msg_size=0,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=5)) as ws:
                await record.incr(SUBS_READY)
                while not stop.is_set():
                    msg = await ws.receive()
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        if not stop.is_set():
                            stats["closed"] += 1
                        return
                    now = time.time()
                    event = json.loads(msg.data)
                    lags.append((now - float(event["ts"])) * 1000.0)
                    stats["messages"] += 1
                    if not stats["first"]:
                        stats["first"] = now
                    stats["last"] = now

        async def watch_stop() -> None:
            while not await record.get(SUBS_STOP):
                await asyncio.sleep(0.1)
            stop.set()

        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        stopper = asyncio.ensure_future(watch_stop())
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
    await record.aclose()
    return {**stats, "lags": [round(lag, 2) for lag in lags]}


async def claim(url: str, queue: str, count: int) -> dict[str, Any]:
    """``count`` sequential claims of one job (not waiting); each claimed job is completed, untimed."""
    base = url.rstrip("/") + "/api/v1/"
    times: list[float] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(base + "claim", json={"queue": queue, "worker": "bench-claimer", "limit": 1,
                                                          "wait": 0}) as answer:
                body = await answer.json()
            times.append((time.perf_counter() - started) * 1000.0)
            jobs = body.get("jobs") or []
            if not jobs:
                raise SystemExit("the queue ran empty while measuring claim latency")
            outcomes = [{"id": job["id"], "lease": job["lease"], "status": "finished", "result": 0} for job in jobs]
            async with session.post(base + "complete", json={"outcomes": outcomes}) as answer:
                await answer.read()
    return {"ms": times}


if __name__ == "__main__":
    action, target, queue_name, number = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    work = subscribe if action == "subscribe" else claim
    print(json.dumps(asyncio.run(work(target, queue_name, number))), flush=True)
