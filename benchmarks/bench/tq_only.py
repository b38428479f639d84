"""Workloads D (websocket fan-out) and E (growth), for tqueues alone.

No other system here has a websocket event feed, and growth is about how the dispatcher's
store behaves with a deep backlog, so these have no ratios, only tqueues' own figures on
each store.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import TYPE_CHECKING, Any

from .peers import QUEUE
from .tqtools import SUBS_READY, SUBS_STOP
from .util import BenchError, percentile, run_json, say, wait_until
from .workloads import start_workers, stop_workers, wait_done

if TYPE_CHECKING:   # pragma: no cover
    from .context import Context
    from .peers import Peer

SUB_PROCESSES = 2


def fanout(ctx: "Context", peer: "Peer", subscribers: int, rate: float, seconds: float) -> dict[str, float]:
    """D: ``subscribers`` websockets on the queue while ``rate`` jobs/s flow for ``seconds``.

    Each job makes three events (created, started, finished), each delivered to every
    subscriber; lag is the receive time minus the event's ``ts`` stamped by the dispatcher.
    """
    ctx.prepare(peer, "fanout")
    workers: list[subprocess.Popen[bytes]] = []
    subs: list[subprocess.Popen[bytes]] = []
    try:
        workers = start_workers(ctx, peer)
        # Workers warmed up first, so the subscribers see only the measured flow.
        ctx.producer(peer, ["paced", "0", "1", "4"], f"{peer.name}-producer", timeout=180, workers=workers)
        ctx.record.reset()
        env = peer.env(ctx)
        per = subscribers // SUB_PROCESSES
        subs = [ctx.procs.start([ctx.python("main"), "-m", "bench.tqtools", "subscribe", ctx.tq_url or "", QUEUE,
                                 str(per)], name=f"{peer.name}-subscribers{i}", env=env, stdout_pipe=True)
                for i in range(SUB_PROCESSES)]
        wait_until(lambda: int(ctx.control.get(SUBS_READY) or 0) >= per * SUB_PROCESSES
                   or any(p.poll() is not None for p in subs), 120, "websocket subscribers connecting")
        if any(p.poll() is not None for p in subs):
            raise BenchError("a subscriber process exited while connecting")
        count = int(rate * seconds)
        ctx.producer(peer, ["paced", str(count), str(1.0 / rate), "0"], f"{peer.name}-producer",
                     timeout=180 + seconds, workers=workers)
        wait_done(ctx, peer, workers, count, 60)
        time.sleep(2.0)   # the last events reach the subscribers
        ctx.control.set(SUBS_STOP, 1)
        lags: list[float] = []
        messages = closed = 0
        first, last = float("inf"), 0.0
        for proc in subs:
            out, _ = proc.communicate(timeout=120)
            data = json.loads(out.decode().strip().splitlines()[-1])
            lags.extend(data["lags"])
            messages += data["messages"]
            closed += data["closed"]
            if data["first"]:
                first = min(first, data["first"])
            last = max(last, data["last"])
        events = 3 * count
        expected = events * per * SUB_PROCESSES
        return {"rate": messages / max(last - first, 1e-6), "p50": percentile(lags, 50), "p99": percentile(lags, 99),
                "delivered": messages / expected if expected else 0.0, "closed": float(closed),
                "offered": rate * 3 * per * SUB_PROCESSES}
    finally:
        for proc in subs:
            ctx.procs.stop(proc, grace=2)
        stop_workers(ctx, workers)
        ctx.finish(peer)


def growth(ctx: "Context", peer: "Peer", pending: int, drain_n: int, claims: int, runs: int) -> list[dict[str, Any]]:
    """E: claim latency, drain rate and dispatcher memory with ``pending`` jobs waiting.

    Before each run the backlog is topped up to ``pending + claims``; the claims bring it to
    ``pending``, then the workers drain ``drain_n`` of it (all of it when it is that small).
    The fill rate and memory are those of the first, full fill.
    """
    ctx.prepare(peer, "growth")
    out: list[dict[str, Any]] = []
    try:
        left = 0
        fill_rate = rss = 0.0
        for run in range(runs):
            add = pending + claims - left
            if add > 0:
                say(f"    {peer.name}: enqueueing {add:,} jobs")
                answer = ctx.producer(peer, ["fill", str(add), "10000"], f"{peer.name}-producer",
                                      timeout=max(300.0, add / 400))
                left += add
                if run == 0:
                    fill_rate = add / answer["seconds"]
                    time.sleep(1.0)
                    rss = ctx.dispatcher_rss() / 2**20
            ctx.record.reset()
            claimed = run_json(ctx.procs, [ctx.python("main"), "-m", "bench.tqtools", "claim", ctx.tq_url or "", QUEUE,
                                           str(claims)], name=f"{peer.name}-claimer", env=peer.env(ctx), timeout=300)
            left -= claims
            workers = start_workers(ctx, peer)
            try:
                wait_done(ctx, peer, workers, 1, 120)
                begin = time.time()
                begin_done = ctx.record.done()
                finished = wait_done(ctx, peer, workers, drain_n, max(300.0, drain_n / 20))
            finally:
                stop_workers(ctx, workers)
            left -= ctx.record.done()
            out.append({"claim_p50": percentile(claimed["ms"], 50), "claim_p99": percentile(claimed["ms"], 99),
                        "drain": (drain_n - begin_done) / max(finished - begin, 1e-6), "rss_mb": rss,
                        "fill_rate": fill_rate})
        return out
    finally:
        ctx.finish(peer)
