"""tqueues dispatcher: serves the tqueues API in front of a store.

Usage:
  tqueues_dispatcher [options]
  tqueues_dispatcher -h | --help
  tqueues_dispatcher --version

Options:
  --db URL                   Store: sqlite:///PATH, postgresql://USER@HOST/DB or rethinkdb://HOST:PORT/DB;
                             a name without a scheme is a RethinkDB database, as in TQueues
                             [default: sqlite:///./tqueues.db]
  --bind HOST:PORT           Address to listen on [default: 127.0.0.1:8000]
  --host HOST                RethinkDB host, with --db NAME (TQueues); localhost if not given
  --port PORT                RethinkDB port, with --db NAME (TQueues); 28015 if not given
  --user USER                RethinkDB user, with --db NAME (TQueues); admin if not given
  --password PASSWORD        RethinkDB password, with --db NAME (TQueues); none if not given
  --allowed_domains DOMAINS  Comma-separated origins allowed for CORS and websockets, e.g. 'foo.com,bar.com'
  --lease SECONDS            How long a claim lasts without a heartbeat [default: 30]
  --pool-size N              Database connections (PostgreSQL, RethinkDB) [default: 10]
  --max-wait SECONDS         Longest long-poll a client may ask for [default: 60]
  --max-body BYTES           Largest request body accepted [default: 16777216]
  --auth                     Require a token on every route but the health check (see docs/security.md)
  --tokens-file PATH         Also accept the tokens listed in this JSON file
  --jwt-public-key PEM       Also accept RS256 JWTs signed by the private half of this public key
  --jwt-audience AUD         The "aud" a JWT must carry [default: tqueues]
  --rate-limit N             Requests per second per token; 0 for none [default: 0]
  --rate-burst N             Requests a token may send at once above its rate (default: 2 x rate)
  --insecure                 Allow listening beyond loopback without --auth
  --certfile PEM             Serve HTTPS with this certificate (chain)
  --keyfile PEM              The certificate's private key
  --access-log               Log every request
  --loglevel LEVEL           DEBUG, INFO, WARNING or ERROR [default: INFO]
  -h --help                  Show this screen
  --version                  Show version

Examples:
  tqueues_dispatcher --db sqlite:///./tqueues.db --bind 127.0.0.1:8000
  tqueues_dispatcher --db sqlite:////var/lib/tqueues/jobs.db --lease 60 --loglevel WARNING
  tqueues_dispatcher --db postgresql://tqueues@db.internal/tqueues --bind 127.0.0.1:8001 --pool-size 20
  tqueues_dispatcher --db rethinkdb://db.internal:28015/tqueues
  tqueues_dispatcher --db tqueues --host db.internal --port 28015 --user tqueues --password secret
  tqueues_dispatcher --auth --bind 0.0.0.0:8443 --certfile cert.pem --keyfile key.pem --rate-limit 500
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from typing import Any, Sequence
from urllib.parse import quote

from aiohttp import web

from ..dispatcher import Settings, create_app
from ..dispatcher.app import HUB
from ..loops import loop_kind, run_loop
from ..store import open_store
from ..store.base import redact
from .common import UsageError, loglevel, number, parse, quiet_gc, run, setup_logging

PROG = "tqueues_dispatcher"
log = logging.getLogger("tqueues.dispatcher")


RETHINKDB_FLAGS = ("--host", "--port", "--user", "--password")
RETHINKDB_DEFAULTS = {"--host": "localhost", "--port": "28015", "--user": "admin"}


def store_url(args: dict[str, Any]) -> str:
    """The store URL: ``--db`` itself when it has a scheme, else (TQueues) the RethinkDB
    database ``--db`` on ``--host``/``--port`` as ``--user``/``--password``."""
    db = args["--db"]
    if "://" in db:
        for flag in RETHINKDB_FLAGS:
            if args.get(flag) is not None:
                raise UsageError(f"{flag} applies to a RethinkDB --db NAME only; put connection details in the --db URL")
        return db
    if not db or not all(c.isalnum() or c == "_" for c in db):
        raise UsageError(f"--db {db!r}: a RethinkDB database name is letters, digits and underscores "
                         "(or give a store URL such as sqlite:///PATH)")
    host: str = args.get("--host") or RETHINKDB_DEFAULTS["--host"]
    port: str = args.get("--port") or RETHINKDB_DEFAULTS["--port"]
    user: str = args.get("--user") or RETHINKDB_DEFAULTS["--user"]
    password: str | None = args.get("--password")
    try:
        port_number = int(port)
    except ValueError:
        raise UsageError(f"--port must be a number, not {port!r}") from None
    if not 0 < port_number <= 65535:
        raise UsageError("--port must be between 1 and 65535")
    if not host or any(c in host for c in "/@?# "):
        raise UsageError(f"--host {host!r} is not a host name or address")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"       # an IPv6 address
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    return f"rethinkdb://{auth}@{host}:{port_number}/{db}"


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
    auth = bool(args["--auth"] or args["--tokens-file"] or args["--jwt-public-key"])
    return Settings(lease=number(args, "--lease", minimum=0.05), max_wait=number(args, "--max-wait", minimum=0),
                    max_body=number(args, "--max-body", minimum=1024, integer=True), allowed_domains=domains,
                    open_store=False, auth=auth, tokens_file=args["--tokens-file"],
                    jwt_public_key=args["--jwt-public-key"], jwt_audience=args["--jwt-audience"],
                    rate_limit=number(args, "--rate-limit"), rate_burst=number(args, "--rate-burst", minimum=1) or 0.0)


LOOPBACK = ("127.", "::1", "localhost")


def check_exposure(host: str, settings: Settings, insecure: bool) -> str | None:
    """Without authentication, serve loopback only unless told otherwise; the warning to log
    once listening, if any."""
    if settings.auth:
        return None
    if not host.startswith(LOOPBACK):
        if not insecure:
            raise UsageError(f"refusing to listen on {host} without --auth: anyone who can reach it could run "
                             "jobs; add --auth (see docs/security.md) or --insecure")
        return f"no authentication and listening on {host}: anyone who can reach it can run jobs"
    return "no authentication: serving loopback only (use --auth to serve other hosts)"


def tls_context(args: dict[str, Any]) -> ssl.SSLContext | None:
    certfile, keyfile = args["--certfile"], args["--keyfile"]
    if not certfile and not keyfile:
        return None
    if not certfile:
        raise UsageError("--keyfile needs --certfile")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load --certfile/--keyfile: {exc}") from None
    return context


async def serve(url: str, settings: Settings, host: str, port: int, access_log: bool, pool_size: int,
                tls: ssl.SSLContext | None = None, exposure: str | None = None) -> None:
    store = open_store(url, pool_size=pool_size)
    await store.open()
    log.debug("store %s open; event loop %s", redact(url), loop_kind())
    try:
        app = create_app(store, settings)
    except BaseException:
        await store.close()
        raise
    runner = web.AppRunner(app, access_log=log if access_log else None, handle_signals=False)
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024, ssl_context=tls)
        await site.start()
        bound = [s.getsockname() for s in site._server.sockets] if site._server else []  # type: ignore[union-attr]
        actual = bound[0][1] if bound else port
        scheme = "https" if tls else "http"
        log.info("tqueues dispatcher listening on %s://%s:%d/ (store %s%s)", scheme, host, actual, store.scheme,
                 ", authentication required" if settings.auth else "")
        print(f"tqueues dispatcher listening on {scheme}://{host}:{actual}/", flush=True)
        quiet_gc()
        if exposure:
            log.warning(exposure) if "anyone" in exposure else log.info(exposure)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down")
        await app[HUB].shutdown()   # before the listener closes: websockets get their 1001
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
        exposure = check_exposure(host, settings, args["--insecure"])
        tls = tls_context(args)
        pool_size = number(args, "--pool-size", minimum=2, integer=True)
        run_loop(lambda: serve(url, settings, host, port, args["--access-log"], pool_size, tls, exposure))
        return 0

    return run(PROG, go)


if __name__ == "__main__":
    sys.exit(main())
