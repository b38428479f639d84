"""What one harness run holds: servers, processes, virtual environments, the tqueues dispatcher."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .record import Recording
from .servers import Servers
from .util import BENCH_DIR, SCRATCH, BenchError, Procs, free_port, last_error_line, rss_bytes, wait_until

if TYPE_CHECKING:   # pragma: no cover
    import subprocess

    from .peers import Peer

VENVS = BENCH_DIR / ".venv-peers"


class Context:
    def __init__(self, servers: Servers, procs: Procs) -> None:
        self.servers = servers
        self.procs = procs
        self._redis: dict[int, Any] = {}
        self.record = Recording(SCRATCH / "record.bin")
        self.tq_url: str | None = None
        self.tq_proc: subprocess.Popen[bytes] | None = None
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.base_env.update({
            "PYTHONPATH": str(BENCH_DIR),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "BENCH_CONTROL_URL": servers.redis_url(15),
            "BENCH_RECORD_FILE": str(self.record.path),
            "NO_COLOR": "1",
        })

    # ------------------------------------------------------------ environments

    @staticmethod
    def bin_dir(venv: str) -> Path:
        return VENVS / venv / "bin"

    def python(self, venv: str) -> str:
        return str(self.bin_dir(venv) / "python")

    # ------------------------------------------------------------ Redis and PostgreSQL

    def redis(self, db: int) -> Any:
        import redis

        if db not in self._redis:
            self._redis[db] = redis.Redis(host="127.0.0.1", port=self.servers.redis_port, db=db,
                                          socket_timeout=30)
        return self._redis[db]

    @property
    def control(self) -> Any:
        """Redis database 15: coordination of helper processes (workload D)."""
        return self.redis(15)

    def recreate_database(self, name: str) -> None:
        """Drop and create a PostgreSQL database (as a fresh start for one measurement)."""
        asyncio.run(self._recreate(name))

    def drop_database(self, name: str) -> None:
        asyncio.run(self._recreate(name, create=False))

    async def _recreate(self, name: str, create: bool = True) -> None:
        import asyncpg

        if self.servers.pg_dsn is None:
            raise BenchError("no PostgreSQL server")
        conn = None
        for admin_db in ("postgres", "test", "template1"):
            try:
                conn = await asyncpg.connect(f"{self.servers.pg_dsn}/{admin_db}", timeout=10)
                break
            except Exception:   # noqa: BLE001 - try the next maintenance database
                continue
        if conn is None:
            raise BenchError(f"cannot connect to PostgreSQL at {self.servers.pg_dsn}")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', timeout=60)
            if create:
                await conn.execute(f'CREATE DATABASE "{name}"', timeout=60)
        finally:
            await conn.close()

    def run_cli(self, peer: "Peer", argv: Sequence[str], name: str, timeout: float = 120) -> None:
        """Run one of a peer's command lines to completion (schema installs)."""
        argv = [str(self.bin_dir(peer.venv) / argv[0]), *argv[1:]]
        proc = self.procs.start(argv, name=name, env=peer.env(self))
        try:
            proc.wait(timeout)
        except Exception:   # noqa: BLE001 - timeout: killed below
            pass
        code = proc.poll()
        self.procs.stop(proc, grace=1)
        if code != 0:
            raise BenchError(f"{' '.join(argv[:2])} failed: {last_error_line(SCRATCH / f'{name}.log')}")

    # ------------------------------------------------------------ the tqueues dispatcher

    def start_dispatcher(self, peer: "Peer", tag: str) -> str:
        """A dispatcher on a fresh store for ``peer`` (tqueues-sqlite or tqueues-postgres)."""
        self.stop_dispatcher()
        if peer.store == "sqlite":
            SCRATCH.mkdir(exist_ok=True)
            db_file = SCRATCH / "tqueues-bench.db"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_file}{suffix}").unlink(missing_ok=True)
            db_url = f"sqlite:///{db_file}"
        else:
            self.recreate_database(peer.pg_database)
            db_url = self.servers.pg_url(peer.pg_database)
        port = free_port()
        self.tq_url = f"http://127.0.0.1:{port}/"
        argv = [str(self.bin_dir("main") / "tqueues_dispatcher"), "--db", db_url, "--bind", f"127.0.0.1:{port}",
                "--loglevel", "WARNING"]
        self.tq_proc = self.procs.start(argv, name=f"{peer.name}-dispatcher", env=peer.env(self))
        from .peers import tq_health

        proc = self.tq_proc
        wait_until(lambda: proc.poll() is not None or tq_health(self.tq_url or ""), 60, "tqueues dispatcher start")
        if proc.poll() is not None:
            raise BenchError(f"tqueues dispatcher exited: {last_error_line(SCRATCH / f'{peer.name}-dispatcher.log')}")
        return self.tq_url

    def dispatcher_rss(self) -> int:
        return rss_bytes(self.tq_proc.pid) if self.tq_proc else 0

    def stop_dispatcher(self) -> None:
        if self.tq_proc is not None:
            self.procs.stop(self.tq_proc, grace=5)
            self.tq_proc = None
            self.tq_url = None

    # ------------------------------------------------------------ one measurement's start

    def prepare(self, peer: "Peer", tag: str) -> None:
        """Empty the recording file and give ``peer`` a clean queue."""
        self.record.reset()
        self.control.flushdb()
        if peer.tqueues:
            self.start_dispatcher(peer, tag)
        else:
            peer.reset(self)

    def finish(self, peer: "Peer") -> None:
        if peer.tqueues:
            self.stop_dispatcher()

    def producer(self, peer: "Peer", args: Sequence[str], name: str, timeout: float,
                 workers: Sequence["subprocess.Popen[bytes]"] = ()) -> Any:
        """Run ``bench.producer`` for ``peer`` in its own process; its JSON answer."""
        from .util import run_json

        return run_json(self.procs, [self.python(peer.venv), "-m", "bench.producer", peer.name, *args],
                        name=name, env=peer.env(self), timeout=timeout, watch=workers,
                        watch_log=SCRATCH / f"{peer.name}-worker0.log")


def python_ok() -> None:
    if sys.version_info < (3, 10):
        raise SystemExit("the benchmark needs Python 3.10 or newer")
