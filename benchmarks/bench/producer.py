"""The producer process: enqueues jobs with one system's client and prints what it measured.

    python -m bench.producer PEER one N          # N jobs one call each
    python -m bench.producer PEER batch N SIZE   # N jobs in calls of SIZE (systems with a batch API)
    python -m bench.producer PEER fill N SIZE    # the fastest of the two, to pre-load a queue
    python -m bench.producer PEER paced COUNT INTERVAL [WARMUP]   # idle-system pickup latency

It runs in a process of its own so that a system's client (its imports, connection pools,
event loop) never shares an interpreter with another system or with the harness. The
timed span starts after connecting and ends when the last enqueue call returned.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from .peers import PEERS
from .record import Recording, record_path

WARMUP = 4
WARMUP_BASE = 10_000_000     # job ints of the warm-up jobs, apart from the measured ones


async def main(argv: list[str]) -> dict[str, Any]:
    peer = {p.name: p for p in PEERS}[argv[0]]
    action = argv[1]
    await peer.open()
    try:
        if action == "one" or (action == "fill" and not peer.has_batch):
            n = int(argv[2])
            started = time.perf_counter()
            for i in range(n):
                await peer.enqueue_one(i)
            return {"seconds": time.perf_counter() - started}
        if action in ("batch", "fill"):
            n, size = int(argv[2]), int(argv[3])
            started = time.perf_counter()
            for low in range(0, n, size):
                await peer.enqueue_batch(range(low, min(n, low + size)))
            return {"seconds": time.perf_counter() - started}
        if action == "paced":
            return await paced(peer, int(argv[2]), float(argv[3]), int(argv[4]) if len(argv) > 4 else WARMUP)
        raise SystemExit(f"unknown action {action!r}")
    finally:
        await peer.close()


async def paced(peer: Any, count: int, interval: float, warmup: int) -> dict[str, Any]:
    """Warm the workers up, let them go idle, then enqueue ``count`` jobs ``interval`` apart."""
    record = Recording(record_path())
    if warmup:
        base = record.done()
        for k in range(warmup):
            await peer.enqueue_one(WARMUP_BASE + k)
        deadline = time.monotonic() + 120
        while record.done() < base + warmup:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not run the warm-up jobs within 120 s")
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)     # idle: pollers back off, long-polls are parked
    enqueued: dict[int, float] = {}
    origin = time.monotonic()
    for i in range(count):
        delay = origin + i * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        enqueued[i] = time.time()
        await peer.enqueue_one(i)
    return {"enqueued": enqueued, "warmup": warmup}


if __name__ == "__main__":
    answer = asyncio.run(main(sys.argv[1:]))
    print(json.dumps(answer), flush=True)
