"""The command lines as subprocesses: clean one-line errors, and the demo end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import env


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, env=env())


@pytest.mark.parametrize("args, needle", [
    # TQueues flags: --db NAME on --host/--port is a RethinkDB store (port 1: nothing listens)
    (["tqueues.cli.dispatcher", "--db", "tqueues_db", "--host", "127.0.0.1", "--port", "1"],
     "cannot open RethinkDB store rethinkdb://127.0.0.1:1/tqueues_db"),
    (["tqueues.cli.dispatcher", "--db", "tqueues_db", "--host", "127.0.0.1", "--port", "1", "--user", "bob",
      "--password", "s3cret"], "RethinkDB at 127.0.0.1:1 is unreachable"),
    (["tqueues.cli.dispatcher", "--db", "tqueues_db", "--port", "many"], "--port"),
    (["tqueues.cli.dispatcher", "--db", "not a name"], "RethinkDB database name"),
    (["tqueues.cli.dispatcher", "--db", "sqlite:///x.db", "--host", "127.0.0.1"], "--host applies"),
    (["tqueues.cli.dispatcher", "--db", "mysql://x/y"], "unknown store scheme"),
    (["tqueues.cli.dispatcher", "--bind", "nonsense"], "--bind"),
    (["tqueues.cli.dispatcher", "--lease", "soon"], "--lease"),
    (["tqueues.cli.dispatcher", "--loglevel", "LOUD"], "--loglevel"),
    (["tqueues.cli.dispatcher", "--db", "sqlite:////nonexistent-dir/x.db"], "does not exist"),
    (["tqueues.cli.dispatcher", "--frobnicate"], "invalid arguments"),
    (["tqueues.cli.worker"], "invalid arguments"),
    (["tqueues.cli.worker", "--endpoint_url", "ftp://x/", "--queue", "q"], "--endpoint_url"),
    (["tqueues.cli.worker", "--endpoint_url", "http://127.0.0.1:1/", "--queue", "bad queue"], "queue"),
    (["tqueues.cli.worker", "--endpoint_url", "http://127.0.0.1:1/", "--queue", "q", "--import", "no.such.module"], "no.such.module"),
    (["tqueues.cli.worker", "--endpoint_url", "http://127.0.0.1:1/", "--queue", "q", "--concurrency", "0"], "--concurrency"),
    (["tqueues.cli.worker", "--endpoint_url", "http://127.0.0.1:1/", "--queue", "q", "--prefetch", "-1"], "--prefetch"),
    (["tqueues.cli.worker", "--endpoint_url", "http://127.0.0.1:1/", "--queue", "q", "--prefetch", "two"], "--prefetch"),
    (["tqueues.cli.main", "show", "abc", "--endpoint_url", "http://127.0.0.1:1/"], "127.0.0.1:1"),
    (["tqueues.cli.main", "enqueue", "m:f", "--kwargs", "[1]", "--endpoint_url", "http://127.0.0.1:1/"], "--kwargs"),
])
def test_given_bad_input_then_the_cli_prints_one_line_and_exits_non_zero(args: list[str], needle: str) -> None:
    result = run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize("argv, url", [
    (["--db", "tqueues_db"], "rethinkdb://admin@localhost:28015/tqueues_db"),
    (["--db", "jobs", "--host", "db.internal", "--port", "28016", "--user", "tq", "--password", "p@ss:w/rd"],
     "rethinkdb://tq:p%40ss%3Aw%2Frd@db.internal:28016/jobs"),
    (["--db", "jobs", "--host", "::1"], "rethinkdb://admin@[::1]:28015/jobs"),
    (["--db", "sqlite:///x.db"], "sqlite:///x.db"),
    (["--db", "postgresql://u@h/d"], "postgresql://u@h/d"),
    (["--db", "rethinkdb://h:1/d"], "rethinkdb://h:1/d"),
])
def test_given_tqueues_db_flags_then_the_store_url_names_that_rethinkdb_database(argv: list[str], url: str) -> None:
    from tqueues.cli import dispatcher
    from tqueues.cli.common import parse
    from tqueues.store.rethinkdb import parse_url

    built = dispatcher.store_url(parse(dispatcher.__doc__ or "", argv, "tqueues_dispatcher"))
    assert built == url
    if built.startswith("rethinkdb://") and "--password" in argv:
        assert parse_url(built)["password"] == "p@ss:w/rd"


def test_given_a_dispatcher_when_the_cli_asks_for_an_unknown_job_then_it_says_so(tmp_path: Path) -> None:
    from support.procs import start_dispatcher

    proc, url = start_dispatcher(tmp_path, f"sqlite:///{tmp_path / 'cli.db'}")
    try:
        result = run("tqueues.cli.main", "show", "nope", "--endpoint_url", url)
        assert result.returncode == 1
        assert "no job has id 'nope'" in result.stderr
        enqueued = run("tqueues.cli.main", "enqueue", "support.jobs:echo", "1", "x", "--queue", "cli", "--endpoint_url", url)
        assert enqueued.returncode == 0, enqueued.stderr
        job_id = enqueued.stdout.strip()
        shown = run("tqueues.cli.main", "show", job_id, "--endpoint_url", url)
        assert shown.returncode == 0 and "pending" in shown.stdout and '[1,"x"]' in shown.stdout
        listed = run("tqueues.cli.main", "queues", "--endpoint_url", url)
        assert "cli" in listed.stdout
    finally:
        proc.terminate()
        proc.close()


def test_given_a_busy_port_then_the_dispatcher_fails_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run("tqueues.cli.dispatcher", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_demo_runs_jobs_end_to_end_and_exits_cleanly() -> None:
    result = run("tqueues.cli.main", "demo", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 finished, 3 failed on purpose" in result.stdout
    assert "NotRegistered" in result.stdout and "JobTimeout" in result.stdout
