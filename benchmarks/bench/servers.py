"""Redis and PostgreSQL on loopback: reuse running ones, else start throw-away ones.

A server already listening on the usual port is used as it is (each system then gets a Redis
database number or a PostgreSQL database of its own, emptied or created fresh before each
measurement). Without one the harness starts its own in a temporary directory and removes it
at the end, so the benchmark needs no setup beyond the binaries.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .util import BenchError, Procs, free_port, port_open, wait_until

HOST = "127.0.0.1"


@dataclass
class Servers:
    redis_port: int
    pg_dsn: str | None                      # postgresql://user@127.0.0.1:PORT (no database)
    notes: list[str] = field(default_factory=list)
    cleanups: list[tuple[str, list[str]]] = field(default_factory=list)
    tmpdirs: list[str] = field(default_factory=list)

    def redis_url(self, db: int) -> str:
        return f"redis://{HOST}:{self.redis_port}/{db}"

    def pg_url(self, database: str) -> str:
        if self.pg_dsn is None:
            raise BenchError("no PostgreSQL server")
        return f"{self.pg_dsn}/{database}"

    def close(self) -> None:
        for _, argv in self.cleanups:
            subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
        for path in self.tmpdirs:
            shutil.rmtree(path, ignore_errors=True)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def _pg_answers(dsn: str) -> bool:
    """True when ``dsn`` accepts a trusted connection to the database ``postgres`` or ``test``."""
    psql = shutil.which("psql")
    for database in ("postgres", "test"):
        if psql:
            done = subprocess.run([psql, f"{dsn}/{database}", "-Atc", "select 1"], capture_output=True, timeout=10,
                                  check=False)
            if done.returncode == 0:
                return True
        else:
            return True   # the port is open; asyncpg will tell later if it is not PostgreSQL
    return False


def _pg_settings(dsn: str) -> str:
    """The settings that move queue figures most: a server without autovacuum keeps every dead
    row of a drained queue (and never re-analyses, so cached plans keep their first shape)."""
    psql = shutil.which("psql")
    if not psql:
        return "settings unknown (no psql)"
    names = ("autovacuum", "fsync", "synchronous_commit", "shared_buffers")
    query = "select string_agg(name || ' ' || setting, ', ' order by name) from pg_settings where name in (%s)" % (
        ", ".join(f"'{n}'" for n in names))
    for database in ("postgres", "test"):
        done = subprocess.run([psql, f"{dsn}/{database}", "-Atc", query], capture_output=True, text=True, timeout=10,
                              check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().replace("shared_buffers ", "shared_buffers (8 kB pages) ")
    return "settings unknown"


def start(procs: Procs, need_postgres: bool) -> Servers:
    """Find or start the servers; BenchError with one line when Redis cannot be had."""
    notes: list[str] = []
    cleanups: list[tuple[str, list[str]]] = []
    tmpdirs: list[str] = []
    if port_open(HOST, 6379):
        redis_port = 6379
        notes.append(f"Redis: the server running on {HOST}:6379")
    else:
        server = shutil.which("redis-server")
        if not server:
            raise BenchError("no Redis on 127.0.0.1:6379 and no redis-server to start one (apt-get install redis-server)")
        redis_port = free_port()
        procs.start([server, "--bind", HOST, "--port", str(redis_port), "--save", "", "--appendonly", "no",
                     "--databases", "16"], name="redis-server", env=dict(os.environ))
        wait_until(lambda: port_open(HOST, redis_port), 15, "redis-server start")
        notes.append(f"Redis: a throw-away redis-server on {HOST}:{redis_port} (--save '')")

    pg_dsn: str | None = None
    if need_postgres:
        user = os.environ.get("BENCH_PG_USER", "postgres")
        if port_open(HOST, 5432) and _pg_answers(f"postgresql://{user}@{HOST}:5432"):
            pg_dsn = f"postgresql://{user}@{HOST}:5432"
            notes.append(f"PostgreSQL: the server running on {HOST}:5432 (user {user}); {_pg_settings(pg_dsn)}")
        else:
            pg_dsn = _start_postgres(procs, notes, cleanups, tmpdirs)
    return Servers(redis_port, pg_dsn, notes, cleanups, tmpdirs)


def _start_postgres(procs: Procs, notes: list[str], cleanups: list[tuple[str, list[str]]],
                    tmpdirs: list[str]) -> str:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        raise BenchError("no PostgreSQL on 127.0.0.1:5432 and no initdb/pg_ctl to start one (apt-get install postgresql)")
    if os.geteuid() == 0:
        raise BenchError("no PostgreSQL on 127.0.0.1:5432, and initdb refuses to run as root; start one or run as a user")
    tmp = tempfile.mkdtemp(prefix="bench-pg-")
    tmpdirs.append(tmp)
    data = os.path.join(tmp, "data")
    port = free_port()
    user = getpass.getuser()
    done = subprocess.run([initdb, "-D", data, "-A", "trust", "-U", user], capture_output=True, timeout=120, check=False)
    if done.returncode != 0:
        raise BenchError(f"initdb failed: {done.stderr.decode(errors='replace').strip().splitlines()[-1:]}")
    done = subprocess.run([pg_ctl, "-D", data, "-l", os.path.join(tmp, "log"), "-w", "-o",
                           f"-h {HOST} -p {port} -k {tmp} -c max_connections=200", "start"],
                          capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise BenchError("pg_ctl start failed; see its log")
    cleanups.append(("pg_ctl stop", [pg_ctl, "-D", data, "-m", "immediate", "stop"]))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not port_open(HOST, port):
        time.sleep(0.1)
    notes.append(f"PostgreSQL: a throw-away cluster on {HOST}:{port} (initdb in a temporary directory)")
    return f"postgresql://{user}@{HOST}:{port}"
