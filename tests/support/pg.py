"""PostgreSQL for the tests: the server named by TQUEUES_TEST_POSTGRES, or a throw-away cluster.

The throw-away cluster is made with ``initdb`` and ``pg_ctl`` in a temporary directory on a
free loopback port (as the ``postgres`` user when the tests run as root), and removed after
the session. Each test gets a fresh database cloned from a template that already holds the
tqueues schema.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from support.procs import free_port

ENV = "TQUEUES_TEST_POSTGRES"


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class Cluster:
    """A PostgreSQL server the tests may use; ``own`` when the tests started it themselves."""

    def __init__(self, url: str, data: Path | None = None, tmp: Path | None = None, port: int | None = None) -> None:
        self.url = url
        self.data = data
        self.tmp = tmp
        self.port = port
        self.own = data is not None
        self._prefix: list[str] = []
        if self.own and os.geteuid() == 0:
            self._prefix = ["runuser", "-u", "postgres", "--"]

    # ------------------------------------------------------------------ own cluster

    @classmethod
    def start(cls) -> "Cluster":
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found: install PostgreSQL "
                               "(scripts/test.sh does) or set TQUEUES_TEST_POSTGRES=postgresql://…")
        tmp = Path(tempfile.mkdtemp(prefix="tqueues-pg-"))
        port = free_port()
        cluster = cls(f"postgresql://postgres@127.0.0.1:{port}/postgres", tmp / "data", tmp, port)
        if cluster._prefix:
            shutil.chown(tmp, "postgres", "postgres")
        cluster._run([initdb, "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        cluster.pg_ctl("start")
        return cluster

    def _run(self, args: list[str]) -> None:
        result = subprocess.run(self._prefix + args, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")

    def pg_ctl(self, action: str, *extra: str) -> None:
        """``pg_ctl start|stop|restart`` of the throw-away cluster (``extra``: e.g. ``-m immediate``)."""
        assert self.own and self.tmp is not None
        options = (f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c max_connections=300 -c shared_buffers=128MB")
        args = [find_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-l", str(self.tmp / "server.log"), "-w", "-t", "60"]
        if action in ("start", "restart"):
            args += ["-o", options]
        self._run(args + [*extra, action])

    def stop(self) -> None:
        if self.own:
            try:
                self.pg_ctl("stop", "-m", "fast")
            finally:
                shutil.rmtree(self.tmp, ignore_errors=True)  # type: ignore[arg-type]


async def create_template(cluster: Cluster) -> str:
    """A template database holding the current tqueues schema; its name."""
    import asyncpg

    from tqueues.store.postgres import migrate

    name = f"tqueues_tmpl_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(cluster.url, name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return name


async def fresh_database(cluster: Cluster, template: str) -> str:
    import asyncpg

    name = f"tqueues_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return with_database(cluster.url, name)


async def drop_database(cluster: Cluster, url: str) -> None:
    import asyncpg

    name = urlsplit(url).path.lstrip("/")
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
