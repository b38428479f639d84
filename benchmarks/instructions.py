#!/usr/bin/env python3
"""Instructions the dispatcher spends per job, counted by valgrind's callgrind.

    python benchmarks/instructions.py                                  # SQLite: batch, one, drain
    python benchmarks/instructions.py --store postgres --workloads drain
    python benchmarks/instructions.py --jobs 10000 --workloads batch
    python benchmarks/instructions.py --process worker                 # a worker's, per drained job

Rates and latencies move with whatever else the machine is doing; the number of instructions
a dispatcher executes for the same work does not (within a few tenths of a percent). This is
the measure to compare two commits with: run it on each and compare the figures.

Each workload runs twice, each time against a fresh dispatcher (and a fresh SQLite file or
PostgreSQL database) started under ``valgrind --tool=callgrind``: once with a fifth of the
jobs, once with all of them. The difference of the two totals over the difference in jobs is
the cost of one job, with start-up, warm-up and shutdown cancelled out. Producers and workers
run normally (only the dispatcher is counted), on the same machine, over real connections.

Workloads (every job is ``tqueues.examples:noop``):

* ``batch``  enqueue in batches of 1,000 (``Client.enqueue_many``, one POST each);
* ``one``    enqueue one at a time (``Client.enqueue``, over the enqueue websocket);
* ``drain``  a batch-enqueued backlog run to the end by two ``tqueues_worker --concurrency 16
  --prefetch 128``. Shown is the drain's own cost: the fill's and the drain's together, less
  the ``batch`` figure of the same invocation (measured first when asked for ``drain``).

With ``--process worker`` the worker is counted instead: the ``drain`` workload only, the
dispatcher running normally and a single ``tqueues_worker --concurrency 16 --prefetch 128``
under callgrind; its instructions per job are the difference of the two runs' totals over the
difference in jobs, as above (the fill costs the worker nothing).

Needs valgrind (``apt-get install valgrind``) and tqueues importable by this Python (run it
with the project's virtual environment). Under callgrind the dispatcher runs about fifty times
slower: the defaults take a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import tqueues
from tqueues.errors import ClientError

QUEUE = "instructions"
METHOD = "tqueues.examples:noop"
BATCH = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def fresh_postgres(admin_url: str, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def callgrind_total(out: Path, log: str) -> int:
    """The instructions callgrind counted in ``out`` (one file per process it followed)."""
    total = 0
    for path in glob.glob(f"{out}*"):
        for line in Path(path).read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    if not total:
        raise SystemExit(f"instructions: callgrind wrote no totals; see {log}")
    return total


class Dispatcher:
    """A dispatcher on a free port, under callgrind when ``counted``."""

    def __init__(self, db_url: str, scratch: Path, counted: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.out = scratch / "callgrind.out"
        self.log = open(scratch / "dispatcher.log", "wb")
        under = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}"] if counted else []
        self.proc = subprocess.Popen(
            [*under, sys.executable, "-m", "tqueues.cli.dispatcher", "--db", db_url, "--bind", f"127.0.0.1:{self.port}",
             "--loglevel", "WARNING"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, client: tqueues.Client, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"instructions: the dispatcher exited ({self.proc.returncode}); see {self.log.name}")
            try:
                await client.health()
                return
            except ClientError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"instructions: the dispatcher did not answer within {timeout:.0f} s") from None
                await asyncio.sleep(0.5)

    def stop(self) -> int:
        """SIGTERM, wait for callgrind to write its totals; the instructions counted."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise SystemExit("instructions: the dispatcher did not stop within 300 s") from None
        finally:
            self.log.close()
        return callgrind_total(self.out, self.log.name)


async def wait_finished(client: tqueues.Client, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        queues = {q["name"]: q for q in await client.queues()}
        if queues.get(QUEUE, {}).get("counts", {}).get("finished", 0) >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"instructions: the workers did not finish {count} jobs within {timeout:.0f} s")
        await asyncio.sleep(1.0)


WORKER = [sys.executable, "-m", "tqueues.cli.worker", "--queue", QUEUE, "--import", "tqueues.examples",
          "--concurrency", "16", "--prefetch", "128", "--loglevel", "WARNING"]


async def one_run(workload: str, jobs: int, store: str, pg_admin: str, process: str = "dispatcher") -> int:
    """Total instructions of the dispatcher that served ``jobs`` jobs of ``workload`` (or of
    the one worker that drained them, for ``process="worker"``)."""
    with tempfile.TemporaryDirectory(prefix="tqueues-instructions-") as scratch_dir:
        scratch = Path(scratch_dir)
        if store == "postgres":
            db_url = await fresh_postgres(pg_admin, "tqueues_instructions")
        else:
            db_url = f"sqlite:///{scratch / 'tqueues.db'}"
        dispatcher = Dispatcher(db_url, scratch, counted=process == "dispatcher")
        worker_out = scratch / "callgrind-worker.out"
        worker_log = open(scratch / "worker.log", "wb")
        workers: list[subprocess.Popen[bytes]] = []
        client = tqueues.Client(dispatcher.url, timeout=600)
        failed = True
        try:
            await dispatcher.ready(client)
            if workload == "one":
                for n in range(jobs):
                    await client.enqueue(METHOD, n, queue=QUEUE)
            else:
                for low in range(0, jobs, BATCH):
                    await client.enqueue_many([{"method": METHOD, "args": [n], "queue": QUEUE}
                                               for n in range(low, min(jobs, low + BATCH))])
            if workload == "drain" and process == "worker":
                workers.append(subprocess.Popen(
                    ["valgrind", "--tool=callgrind", f"--callgrind-out-file={worker_out}", *WORKER,
                     "--endpoint_url", dispatcher.url],
                    stdout=subprocess.DEVNULL, stderr=worker_log, start_new_session=True))
                await wait_finished(client, jobs, timeout=120 + jobs * 0.1)
            elif workload == "drain":
                for _ in range(2):
                    workers.append(subprocess.Popen(
                        [*WORKER, "--endpoint_url", dispatcher.url],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
                await wait_finished(client, jobs, timeout=60 + jobs * 0.05)
            failed = False
        finally:
            await client.close()
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=300 if process == "worker" else 30)   # callgrind is slow to stop
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
            if failed or process == "worker":   # on error, that error says more than missing totals
                dispatcher.proc.kill()
                dispatcher.proc.wait()
                dispatcher.log.close()
            else:
                total = dispatcher.stop()
            worker_log.close()
            if not failed and process == "worker":
                total = callgrind_total(worker_out, worker_log.name)
        return total


async def per_job(workload: str, jobs: int, store: str, pg_admin: str, process: str = "dispatcher") -> float:
    small = max(1, jobs // 5)
    low = await one_run(workload, small, store, pg_admin, process)
    high = await one_run(workload, jobs, store, pg_admin, process)
    return (high - low) / (jobs - small)


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workloads", default="batch,one,drain", help="comma-separated: batch, one, drain")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs of the larger run (default 5000)")
    parser.add_argument("--process", choices=["dispatcher", "worker"], default="dispatcher",
                        help="whose instructions to count (worker: the drain workload only)")
    parser.add_argument("--pg-admin", default=os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL URL allowed to create databases (--store postgres)")
    args = parser.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(workloads) - {"batch", "one", "drain"}
    if unknown or not workloads:
        parser.error(f"--workloads: unknown {', '.join(sorted(unknown)) or 'empty list'}")
    if args.jobs < 10:
        parser.error("--jobs: at least 10")
    if shutil.which("valgrind") is None:
        print("instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    if args.process == "worker":
        if workloads != ["drain"] and args.workloads != parser.get_default("workloads"):
            parser.error("--process worker: only the drain workload runs a worker")
        workloads = ["drain"]
    elif "drain" in workloads and "batch" not in workloads:
        workloads.insert(0, "batch")   # the drain's figure is net of the fill
    figures: dict[str, float] = {}
    for workload in sorted(workloads, key=["batch", "one", "drain"].index):
        print(f"instructions: {workload} on {args.store}…", file=sys.stderr, flush=True)
        figure = await per_job(workload, args.jobs, args.store, args.pg_admin, args.process)
        figures[workload] = figure - figures["batch"] if workload == "drain" and args.process == "dispatcher" else figure
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent, check=False).stdout.strip() or "unknown"
    print(f"\n{args.process.capitalize()} instructions per job, {args.store}, tqueues at {head} ({args.jobs:,} jobs):\n")
    print("| workload | instructions per job |\n|---|---:|")
    for workload, figure in figures.items():
        print(f"| {workload} | {figure:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
