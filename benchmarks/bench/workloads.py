"""Workloads A (enqueue), B (drain) and C (pickup latency), the same for every system.

Each measurement starts from a clean queue (see :meth:`Context.prepare`), runs the producer
and the workers in processes of their own, and reads completions and start times from the
shared recording file (:mod:`bench.record`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .producer import WARMUP
from .util import SCRATCH, BenchError, last_error_line, named_cpu, percentile, process_cpu, tree_cpu

if TYPE_CHECKING:   # pragma: no cover
    import subprocess

    from .context import Context
    from .peers import Peer

BATCH = 1000     # jobs per batch call, the same for every system with a batch API
SERVERS = ("postgres", "redis-server")   # command names of the database and broker processes


def enqueue(ctx: "Context", peer: "Peer", n: int, batch: bool) -> dict[str, float]:
    """A: jobs/s enqueued by one producer, one call per job or in batches of ``BATCH``."""
    ctx.prepare(peer, "enqueue")
    try:
        args = ["batch", str(n), str(BATCH)] if batch else ["one", str(n)]
        answer = ctx.producer(peer, args, f"{peer.name}-producer", timeout=max(120.0, n / 50))
        return {"rate": n / answer["seconds"], "seconds": answer["seconds"]}
    finally:
        ctx.finish(peer)


def start_workers(ctx: "Context", peer: "Peer") -> list["subprocess.Popen[bytes]"]:
    env = peer.env(ctx)
    return [ctx.procs.start(argv, name=f"{peer.name}-worker{i}", env=env)
            for i, argv in enumerate(peer.worker_argvs(ctx))]


def stop_workers(ctx: "Context", workers: list["subprocess.Popen[bytes]"]) -> None:
    for proc in workers:
        ctx.procs.stop(proc, grace=3)


def wait_done(ctx: "Context", peer: "Peer", workers: list["subprocess.Popen[bytes]"], target: int,
              timeout: float) -> float:
    """Poll the completion counter every 2 ms until it reaches ``target``; the time it did."""
    deadline = time.monotonic() + timeout
    record = ctx.record
    done = 0
    while time.monotonic() < deadline:
        done = record.done()
        if done >= target:
            return time.time()
        if workers and all(proc.poll() is not None for proc in workers):
            raise BenchError(f"workers exited: {last_error_line(SCRATCH / f'{peer.name}-worker0.log')}")
        time.sleep(0.002)
    raise BenchError(f"timeout after {timeout:g} s with {done} of {target} jobs done")


def drain(ctx: "Context", peer: "Peer", n: int, timeout: float) -> dict[str, float]:
    """B: ``n`` jobs queued first; wall clock from starting the workers until all ran.

    Two figures: ``rate`` counts from the moment the worker processes are spawned (so a slow
    start is part of it), ``steady`` from the first job's start to the last completion.

    And the CPU the drain cost, in microseconds per job, from the same moment to the last
    completion: ``cpu_workers`` (the worker processes and their children, start-up included),
    ``cpu_dispatcher`` (tqueues' dispatcher), ``cpu_servers`` (every PostgreSQL and Redis
    process on the machine), ``cpu`` their sum: what each job cost, and where. It moves with
    the machine too (a busy host makes every instruction slower): compare within a run.
    """
    ctx.prepare(peer, "drain")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        ctx.producer(peer, ["fill", str(n), str(BATCH)], f"{peer.name}-producer", timeout=max(180.0, n / 50))
        if ctx.record.done():
            raise BenchError("jobs ran before any worker started")
        dispatcher = ctx.tq_proc.pid if ctx.tq_proc is not None else None
        servers_before = named_cpu(SERVERS)
        dispatcher_before = process_cpu(dispatcher) if dispatcher else 0.0
        spawned = time.time()
        workers = start_workers(ctx, peer)
        finished = wait_done(ctx, peer, workers, n, timeout)
        per_job = 1e6 / n
        cpu = {"cpu_workers": tree_cpu([proc.pid for proc in workers]) * per_job,
               "cpu_dispatcher": (process_cpu(dispatcher) - dispatcher_before) * per_job if dispatcher else 0.0,
               "cpu_servers": (named_cpu(SERVERS) - servers_before) * per_job}
        first = min(ctx.record.starts().values())
        return {"rate": n / (finished - spawned), "steady": n / max(finished - first, 1e-6),
                "seconds": finished - spawned, "cpu": sum(cpu.values()), **cpu}
    finally:
        stop_workers(ctx, workers)
        ctx.finish(peer)


def latency(ctx: "Context", peer: "Peer", count: int, interval: float) -> dict[str, float]:
    """C: on an idle system, ``count`` jobs ``interval`` apart; enqueue → start, in ms."""
    ctx.prepare(peer, "latency")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        workers = start_workers(ctx, peer)
        answer = ctx.producer(peer, ["paced", str(count), str(interval)], f"{peer.name}-producer",
                              timeout=180 + count * interval, workers=workers)
        wait_done(ctx, peer, workers, count + WARMUP, 60)
        starts = ctx.record.starts()
        lags = [(starts[int(i)] - ts) * 1000.0 for i, ts in answer["enqueued"].items()]
        return {"p50": percentile(lags, 50), "p99": percentile(lags, 99), "max": max(lags)}
    finally:
        stop_workers(ctx, workers)
        ctx.finish(peer)


def describe_failure(exc: BaseException) -> str:
    """One line for the table."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:140].replace("|", "/")


Result = dict[str, Any]
