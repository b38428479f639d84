"""tqueues dispatcher: serves the tqueues API in front of a store.

Usage:
  tqueues_dispatcher [options]
  tqueues_dispatcher -h | --help
  tqueues_dispatcher --version

Options:
  --db URL                   Store: sqlite:///PATH or postgresql://USER@HOST/DB; a name without a
                             scheme is a RethinkDB database (TQueues) [default: sqlite:///./tqueues.db]
  --bind HOST:PORT           Address to listen on [default: 127.0.0.1:8000]
  --host HOST                RethinkDB host (TQueues; only with a RethinkDB --db)
  --port PORT                RethinkDB port (TQueues; only with a RethinkDB --db)
  --user USER                RethinkDB user (TQueues; only with a RethinkDB --db)
  --password PASSWORD        RethinkDB password (TQueues; only with a RethinkDB --db)
  --allowed_domains DOMAINS  Comma-separated origins allowed for CORS and websockets, e.g. 'foo.com,bar.com'
  --lease SECONDS            How long a claim lasts without a heartbeat [default: 30]
  --pool-size N              Database connections (PostgreSQL) [default: 10]
  --max-wait SECONDS         Longest long-poll a client may ask for [default: 60]
  --max-body BYTES           Largest request body accepted [default: 16777216]
  --access-log               Log every request
  --loglevel LEVEL           DEBUG, INFO, WARNING or ERROR [default: INFO]
  -h --help                  Show this screen
  --version                  Show version

Examples:
  tqueues_dispatcher --db sqlite:///./tqueues.db --bind 127.0.0.1:8000
  tqueues_dispatcher --db sqlite:////var/lib/tqueues/jobs.db --lease 60 --loglevel WARNING
  tqueues_dispatcher --db postgresql://tqueues@db.internal/tqueues --bind 127.0.0.1:8001 --pool-size 20
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any, Sequence

from aiohttp import web

from ..dispatcher import Settings, create_app
from ..errors import BackendNotAvailable
from ..store import open_store
from .common import UsageError, loglevel, number, parse, run, setup_logging

PROG = "tqueues_dispatcher"
log = logging.getLogger("tqueues.dispatcher")


def store_url(args: dict[str, Any]) -> str:
    db = args["--db"]
    if "://" in db:
        for flag in ("--host", "--port", "--user", "--password"):
            if args[flag] is not None:
                raise UsageError(f"{flag} applies to a RethinkDB --db NAME only; put connection details in the --db URL")
        return db
    raise BackendNotAvailable(
        f"--db {db!r} names a RethinkDB database (TQueues style), but the RethinkDB store is not available "
        "in this version of tqueues yet; use --db sqlite:///PATH")


def bind_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise UsageError(f"--bind must be HOST:PORT, not {value!r}")
    try:
        number_port = int(port)
    except ValueError:
        raise UsageError(f"--bind port must be a number, not {port!r}") from None
    if not 0 <= number_port <= 65535:
        raise UsageError("--bind port must be between 0 and 65535")
    return host.strip("[]"), number_port


def settings_from(args: dict[str, Any]) -> Settings:
    domains = [d.strip() for d in (args["--allowed_domains"] or "").split(",") if d.strip()]
    return Settings(lease=number(args, "--lease", minimum=0.05), max_wait=number(args, "--max-wait", minimum=0),
                    max_body=number(args, "--max-body", minimum=1024, integer=True), allowed_domains=domains,
                    open_store=False)


async def serve(url: str, settings: Settings, host: str, port: int, access_log: bool, pool_size: int) -> None:
    store = open_store(url, pool_size=pool_size)
    await store.open()
    runner = web.AppRunner(create_app(store, settings), access_log=log if access_log else None, handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        bound = [s.getsockname() for s in site._server.sockets] if site._server else []  # type: ignore[union-attr]
        actual = bound[0][1] if bound else port
        log.info("tqueues dispatcher listening on http://%s:%d/ (store %s)", host, actual, store.scheme)
        print(f"tqueues dispatcher listening on http://{host}:{actual}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        await store.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(__doc__ or "", argv, PROG)

    def go() -> int:
        level = loglevel(args)
        url = store_url(args)
        host, port = bind_address(args["--bind"])
        settings = settings_from(args)
        setup_logging(level)
        pool_size = number(args, "--pool-size", minimum=2, integer=True)
        asyncio.run(serve(url, settings, host, port, args["--access-log"], pool_size))
        return 0

    return run(PROG, go)


if __name__ == "__main__":
    sys.exit(main())
