"""tqueues worker: runs jobs claimed from a tqueues dispatcher.

Usage:
  tqueues_worker --endpoint_url URL (--queue QUEUE)... [--import MODULE]... [options]
  tqueues_worker -h | --help
  tqueues_worker --version

Options:
  --endpoint_url URL     The dispatcher, e.g. http://127.0.0.1:8000/
  --queue QUEUE          Queue to serve (repeat for several)
  --import MODULE        Register every function defined in MODULE as MODULE:function (repeat)
  --concurrency N        Jobs run at once [default: 1]
  --prefetch N           Jobs leased ahead of free slots, so claims overlap with running jobs
                         (default: as many as --concurrency; 0 for long jobs, to spread them
                         evenly over workers; auto: grown while the buffer runs dry between
                         claims, shrunk back once it lasts well beyond them)
  --isolation KIND       Where plain functions run: process (stoppable) or thread [default: process]
  --timeout SECONDS      Timeout for jobs that set none
  --grace SECONDS        On SIGTERM, how long running jobs may take to finish [default: 30]
  --stop-grace SECONDS   How long a job stopped by its timeout or an abort may clean up before
                         it is killed [default: 3]
  --wait SECONDS         Long-poll duration of a claim [default: 30]
  --token TOKEN          Bearer token for the dispatcher (default: $TQUEUES_TOKEN) [default: ]
  --cafile PEM           Certificate authority to verify an https dispatcher with
  --loglevel LEVEL       DEBUG, INFO, WARNING or ERROR [default: INFO]
  -h --help              Show this screen
  --version              Show version

Examples:
  tqueues_worker --endpoint_url http://127.0.0.1:8000/ --queue testqueue
  tqueues_worker --endpoint_url http://127.0.0.1:8000/ --queue default --import myapp.tasks --concurrency 8
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any, Callable, Coroutine, Sequence

from ..loops import new_event_loop
from ..worker import Worker
from ..worker.worker import AUTO
from .common import UsageError, loglevel, number, parse, quiet_gc, run, setup_logging

PROG = "tqueues_worker"


def prefetch(args: dict[str, Any]) -> int | str | None:
    if args["--prefetch"] == AUTO:
        return AUTO
    try:
        return number(args, "--prefetch", minimum=0, integer=True)
    except UsageError:
        raise UsageError(f"--prefetch must be {AUTO} or an integer of at least 0, not {args['--prefetch']!r}") from None


def build(args: dict[str, Any]) -> Worker:
    url = args["--endpoint_url"]
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint_url must be an http:// or https:// URL, not {url!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return Worker(url, args["--queue"], modules=args["--import"],
                  concurrency=number(args, "--concurrency", minimum=1, integer=True),
                  prefetch=prefetch(args),
                  isolation=args["--isolation"], grace=number(args, "--grace"),
                  wait=number(args, "--wait"), timeout=number(args, "--timeout", minimum=0.001),
                  stop_grace=number(args, "--stop-grace"),
                  token=args["--token"] or os.environ.get("TQUEUES_TOKEN") or None, cafile=args["--cafile"])


async def serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    quiet_gc()   # the job modules are imported: from here on, jobs come and go
    await worker.run_forever()


def run_until_stopped(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())`` on :func:`new_event_loop`, except that a function the worker
    abandoned (a coroutine that ignored cancellation past its stop grace) does not keep the
    process from exiting: asyncio.run would wait for it forever."""
    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
        leftover = asyncio.all_tasks(loop)
        for task in leftover:
            task.cancel()
        if leftover:
            loop.run_until_complete(asyncio.wait(leftover, timeout=1.0))
        for task in leftover:
            if not task.done():
                task._log_destroy_pending = False   # type: ignore[attr-defined]  # abandoned on purpose
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(__doc__ or "", argv, PROG)

    def go() -> int:
        setup_logging(loglevel(args))
        worker = build(args)
        run_until_stopped(lambda: serve(worker))
        return 0

    return run(PROG, go)


if __name__ == "__main__":
    sys.exit(main())
