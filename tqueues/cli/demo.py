"""``tqueues demo``: a dispatcher on a throw-away SQLite file, a worker, a few jobs."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from ..client import Client

JOBS: list[tuple[str, list[Any], dict[str, Any]]] = [
    ("tqueues.examples:add", [2, 3], {}),
    ("tqueues.examples:fibonacci", [90], {}),
    ("tqueues.examples:countdown", [5], {}),
    ("tqueues.examples:flaky", [], {"backoff": 0.2}),
    ("tqueues.examples:sleepy", [60], {"timeout": 1, "max_attempts": 1}),
    ("tqueues.examples:broken", [], {"max_attempts": 2, "backoff": 0.2}),
    ("os:system", ["echo this never runs"], {"max_attempts": 1}),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_ready(client: Client, deadline: float) -> None:
    while True:
        try:
            await client.health()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _show(client: Client) -> int:
    await _wait_ready(client, time.monotonic() + 20)
    print("enqueueing:")
    jobs = []
    for method, args, options in JOBS:
        job = await client.enqueue(method, *args, queue="demo", **options)
        jobs.append(job)
        print(f"  {job['id'][-8:]}  {method}({', '.join(map(repr, args))})")
    print("results, as they finish:")

    async def one(job: dict[str, Any]) -> dict[str, Any]:
        done = await client.wait(job["id"], timeout=60)
        detail = repr(done["result"]) if done["status"] == "finished" else f"{done['error']['type']}: {done['error']['message']}"
        print(f"  {done['id'][-8:]}  {done['status']:<8} attempts={done['attempts']}  {done['method']} -> {detail}", flush=True)
        return done

    finished = await asyncio.gather(*(one(job) for job in jobs))
    ok = sum(1 for job in finished if job["status"] == "finished")
    print(f"{ok} finished, {len(finished) - ok} failed on purpose (timeout, exception, unregistered method)")
    return 0 if ok == 4 else 1


def run_demo(db: str | None = None) -> int:
    tmp = tempfile.mkdtemp(prefix="tqueues-demo-")
    url = db or f"sqlite:///{os.path.join(tmp, 'demo.db')}"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/"
    print(f"dispatcher on {endpoint} with store {url}; one worker with 4 slots")
    procs = [
        subprocess.Popen([sys.executable, "-m", "tqueues.cli.dispatcher", "--db", url, "--bind", f"127.0.0.1:{port}",
                          "--loglevel", "WARNING"], stdout=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "tqueues.cli.worker", "--endpoint_url", endpoint, "--queue", "demo",
                          "--import", "tqueues.examples", "--concurrency", "4", "--loglevel", "ERROR"]),
    ]
    try:
        async def go() -> int:
            async with Client(endpoint) as client:
                return await _show(client)
        return asyncio.run(go())
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
