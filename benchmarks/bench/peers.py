"""The systems compared: how each is reset, how its workers start, how its producer enqueues.

A :class:`Peer` lives on both sides of a measurement. In the harness process it empties its
broker or database and builds its worker command lines; in a producer subprocess
(:mod:`bench.producer`) it enqueues jobs with the system's own client. Every library import
happens inside the methods, so this module loads in any of the harness' virtual environments.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:   # pragma: no cover
    from .context import Context

QUEUE = "bench"
CONCURRENCY = 16           # coroutine slots per worker process, the same for every async system
TQ_PREFETCH = 2048         # tqueues: jobs leased ahead of free slots, as docs/workers.md advises for jobs under a millisecond


@dataclass
class Peer:
    """One system under test."""

    name: str
    package: str                  # what pip installs for it (for the "failed" line)
    store: str                    # "redis" or "postgres" (the broker or database it needs)
    tuning: str
    redis_db: int = 0
    venv: str = "main"            # which of the harness' virtual environments runs it
    has_batch: bool = False
    tqueues: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------ harness side

    def broker_url(self, ctx: "Context") -> str:
        if self.store == "redis":
            return ctx.servers.redis_url(self.redis_db)
        if self.store == "sqlite":
            return ""
        return ctx.servers.pg_url(self.pg_database)

    @property
    def pg_database(self) -> str:
        return "bench_" + self.name.replace("-", "_")

    def env(self, ctx: "Context") -> dict[str, str]:
        """The environment of this peer's workers and producers."""
        env = dict(ctx.base_env)
        env["BENCH_PEER"] = self.name
        env["BENCH_BROKER_URL"] = self.broker_url(ctx)
        env["PATH"] = f"{ctx.bin_dir(self.venv)}{os.pathsep}{env.get('PATH', '')}"
        if self.tqueues and ctx.tq_url:
            env["BENCH_TQ_URL"] = ctx.tq_url
        if self.name == "pgqueuer":
            env["PGDSN"] = env["BENCH_BROKER_URL"]
        return env

    def reset(self, ctx: "Context") -> None:
        """A clean broker or database: FLUSHDB of its own Redis database, or a new PostgreSQL database."""
        if self.store == "redis":
            ctx.redis(self.redis_db).flushdb()
            return
        ctx.recreate_database(self.pg_database)
        if self.name == "procrastinate":
            ctx.run_cli(self, ["procrastinate", "--app=bench.apps.procrastinate_app.app", "schema", "--apply"],
                        "procrastinate-schema")
        elif self.name == "pgqueuer":
            ctx.run_cli(self, ["pgq", "install"], "pgqueuer-install")

    def worker_argvs(self, ctx: "Context") -> list[list[str]]:
        """The command lines of this peer's workers, tuned for two cores (see ``tuning``)."""
        b = str(ctx.bin_dir(self.venv))
        url = self.broker_url(ctx)
        name = self.name
        if name == "celery":
            return [[f"{b}/celery", "-A", "bench.apps.celery_app", "worker", "-P", "prefork", "-c", "2", "-Q", QUEUE,
                     "--prefetch-multiplier", "64", "--without-gossip", "--without-mingle", "--without-heartbeat",
                     "-l", "WARNING"]]
        if name == "rq":
            return [[f"{b}/rq", "worker-pool", QUEUE, "-n", "2", "-u", url, "-w", "rq.worker.SimpleWorker", "-q"]]
        if name == "arq":
            return [[f"{b}/arq", "bench.apps.arq_app.WorkerSettings"] for _ in range(2)]
        if name == "saq":
            return [[f"{b}/saq", "bench.apps.saq_app.settings", "--workers", "2", "--quiet"]]
        if name == "dramatiq":
            return [[f"{b}/dramatiq", "bench.apps.dramatiq_app", "--processes", "2", "--threads", "8"]]
        if name == "huey":
            return [[f"{b}/huey_consumer", "bench.apps.huey_app.huey", "-k", "thread", "-w", "4", "-q", "-C"]]
        if name == "taskiq":
            return [[f"{b}/taskiq", "worker", "bench.apps.taskiq_app:broker", "--workers", "2",
                     "--max-async-tasks", str(CONCURRENCY), "--log-level", "WARNING"]]
        if name == "procrastinate":
            return [[f"{b}/procrastinate", "--app=bench.apps.procrastinate_app.app", "worker", "--queues", QUEUE,
                     "--concurrency", str(CONCURRENCY)] for _ in range(2)]
        if name == "pgqueuer":
            return [[f"{b}/python", "-m", "bench.apps.pgqueuer_app"] for _ in range(2)]
        if self.tqueues:
            return [[f"{b}/tqueues_worker", "--endpoint_url", ctx.tq_url or "", "--queue", QUEUE,
                     "--import", "bench.apps.tqueues_app", "--concurrency", str(CONCURRENCY),
                     "--prefetch", str(TQ_PREFETCH), "--loglevel", "WARNING"]
                    for _ in range(2)]
        raise ValueError(name)

    # ------------------------------------------------------------ producer side

    async def open(self) -> None:
        """Connect the producer (not timed)."""
        env = os.environ
        url = env["BENCH_BROKER_URL"]
        name = self.name
        if name == "celery":
            from bench.apps.celery_app import app, job

            app.connection_for_write().ensure_connection(max_retries=3)
            self.extra["job"] = job
        elif name == "rq":
            import redis
            from rq import Queue

            self.extra["queue"] = Queue(QUEUE, connection=redis.Redis.from_url(url))
        elif name == "arq":
            from arq import create_pool
            from arq.connections import RedisSettings

            self.extra["pool"] = await create_pool(RedisSettings.from_dsn(url))
        elif name == "saq":
            from bench.apps.saq_app import queue

            await queue.connect()
            self.extra["queue"] = queue
        elif name == "dramatiq":
            from bench.apps.dramatiq_app import job

            self.extra["job"] = job
        elif name == "huey":
            from bench.apps.huey_app import job

            self.extra["job"] = job
        elif name == "taskiq":
            from bench.apps.taskiq_app import broker, job

            await broker.startup()
            self.extra["broker"], self.extra["job"] = broker, job
        elif name == "procrastinate":
            from bench.apps.procrastinate_app import app, job

            await app.open_async()
            self.extra["app"], self.extra["job"] = app, job
        elif name == "pgqueuer":
            import asyncpg
            from pgqueuer import AsyncpgDriver, Queries

            self.extra["conn"] = conn = await asyncpg.connect(url)
            self.extra["queries"] = Queries(AsyncpgDriver(conn))
        elif self.tqueues:
            import tqueues

            client = tqueues.Client(env["BENCH_TQ_URL"], timeout=120)
            await client.health()
            self.extra["client"] = client
        else:
            raise ValueError(name)

    async def enqueue_one(self, n: int) -> None:
        """One job, with the system's usual one-job call."""
        name, x = self.name, self.extra
        if name == "celery":
            x["job"].delay(n)
        elif name == "rq":
            x["queue"].enqueue("bench.apps.rq_app.job", n)
        elif name == "arq":
            await x["pool"].enqueue_job("job", n)
        elif name == "saq":
            await x["queue"].enqueue("job", n=n)
        elif name == "dramatiq":
            x["job"].send(n)
        elif name == "huey":
            x["job"](n)
        elif name == "taskiq":
            await x["job"].kiq(n)
        elif name == "procrastinate":
            await x["job"].defer_async(n=n)
        elif name == "pgqueuer":
            await x["queries"].enqueue("bench_job", str(n).encode())
        else:
            await x["client"].enqueue("bench.apps.tqueues_app:job", n, queue=QUEUE)

    async def enqueue_batch(self, ns: Sequence[int]) -> None:
        """Many jobs in one call of the system's batch API (only when ``has_batch``)."""
        name, x = self.name, self.extra
        if name == "rq":
            from rq import Queue

            x["queue"].enqueue_many([Queue.prepare_data("bench.apps.rq_app.job", (n,)) for n in ns])
        elif name == "procrastinate":
            await x["job"].batch_defer_async(*({"n": n} for n in ns))
        elif name == "pgqueuer":
            await x["queries"].enqueue(["bench_job"] * len(ns), [str(n).encode() for n in ns], [0] * len(ns))
        elif self.tqueues:
            await x["client"].enqueue_many([{"queue": QUEUE, "method": "bench.apps.tqueues_app:job", "args": [n]}
                                            for n in ns], chunk=len(ns), documents=False)
        else:
            raise NotImplementedError(name)

    async def close(self) -> None:
        name, x = self.name, self.extra
        if name == "arq":
            await x["pool"].aclose()
        elif name == "saq":
            await x["queue"].disconnect()
        elif name == "taskiq":
            await x["broker"].shutdown()
        elif name == "procrastinate":
            await x["app"].close_async()
        elif name == "pgqueuer":
            await x["conn"].close()
        elif self.tqueues:
            await x["client"].close()


def tq_health(url: str) -> bool:
    """True when a dispatcher answers its health check."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/api/v1/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


PEERS: list[Peer] = [
    Peer("tqueues-sqlite", "tqueues (this repository)", "sqlite",
         f"dispatcher on SQLite (WAL) + 2 × `tqueues_worker --concurrency 16 --prefetch {TQ_PREFETCH}` (coroutine job on the "
         "worker loop; the prefetch docs/workers.md recommends for jobs under a millisecond); "
         "producer → dispatcher → workers over real connections: `Client.enqueue` over its enqueue websocket "
         "(the client's default), batches (`enqueue_many(documents=False)`: answered with ids, as PgQueuer's are) "
         "and claims over HTTP; installed from this repository as a regular package (`pip install .`), as the peers are",
         has_batch=True, tqueues=True),
    Peer("tqueues-postgres", "tqueues (this repository)", "postgres",
         f"dispatcher on PostgreSQL (`--pool-size 10`) + 2 × `tqueues_worker --concurrency 16 --prefetch {TQ_PREFETCH}`; "
         "connections as above",
         has_batch=True, tqueues=True),
    Peer("celery", "celery[redis]", "redis",
         "`celery worker -P prefork -c 2 --prefetch-multiplier 64 --without-gossip --without-mingle "
         "--without-heartbeat`, Redis broker, no result backend", redis_db=1),
    Peer("rq", "rq", "redis",
         "`rq worker-pool -n 2 -w rq.worker.SimpleWorker` (no fork per job); `enqueue_many` (pipelined) for batches",
         redis_db=2, has_batch=True),
    Peer("arq", "arq", "redis",
         "2 × `arq` worker processes, `max_jobs=16`, `poll_delay=0.05` (default 0.5 s); own venv (arq pins redis<6)",
         redis_db=3, venv="arq"),
    Peer("saq", "saq[redis]", "redis", "`saq --workers 2`, `concurrency=16`", redis_db=4),
    Peer("dramatiq", "dramatiq[redis]", "redis",
         "`dramatiq --processes 2 --threads 8` (its defaults on 2 cores), Redis broker, `max_retries=0`; "
         "an idle consumer polls with a backoff up to its 1 s default worker timeout", redis_db=5),
    Peer("huey", "huey", "redis", "`huey_consumer -k thread -w 4` (one process), RedisHuey with blocking pop",
         redis_db=6),
    Peer("taskiq", "taskiq + taskiq-redis", "redis",
         "`taskiq worker --workers 2 --max-async-tasks 16`, taskiq-redis `ListQueueBroker`; own venv "
         "(taskiq-redis needs a newer redis than Celery allows)", redis_db=7, venv="taskiq"),
    Peer("procrastinate", "procrastinate (psycopg 3)", "postgres",
         "2 × `procrastinate worker --concurrency 16` (LISTEN/NOTIFY); `batch_defer_async` for batches",
         has_batch=True),
    Peer("pgqueuer", "pgqueuer (asyncpg)", "postgres",
         "2 worker processes running `pgqueuer.run(factory)` as `pgq run` does (batch size 10, LISTEN/NOTIFY); `Queries.enqueue` with lists for batches", has_batch=True),
]


def by_name(names: Sequence[str]) -> list[Peer]:
    known = {p.name: p for p in PEERS}
    aliases = {"tqueues": ["tqueues-sqlite", "tqueues-postgres"]}
    chosen: list[Peer] = []
    for name in names:
        for real in aliases.get(name, [name]):
            if real not in known:
                raise SystemExit(f"unknown system {real!r}; known: {', '.join(known)} (and 'tqueues' for both stores)")
            if known[real] not in chosen:
                chosen.append(known[real])
    return chosen

