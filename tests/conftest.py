"""Shared fixtures: fresh stores per test, in-process dispatchers on real sockets, real HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Iterator, TypeVar

import aiohttp
# Imported early: otherwise hypothesis's pytest plugin imports it in the run's summary, where
# CPython 3.11.7 failed to compile it ("AST constructor recursion depth mismatch") after runs of
# only some test files.
import hypothesis  # noqa: F401
import pytest
from aiohttp import web

from support import pg
from support.server import Server

from tqueues.dispatcher import Settings, create_app
from tqueues.store import Store, open_store

T = TypeVar("T")

# Every backend the contract suite runs on; a backend is added here once it exists.
# RethinkDB runs when TQUEUES_TEST_RETHINKDB names a server (rethinkdb://[user:password@]host:port)
# and is reported as skipped otherwise. "rethinkdb-fake" (never a default) runs the tests on the
# in-memory double of tests/support/fake_rethinkdb.py, reached over the wire protocol.
RETHINKDB_ENV = "TQUEUES_TEST_RETHINKDB"
RETHINKDB_SKIP = "RethinkDB tests skipped: set TQUEUES_TEST_RETHINKDB=rethinkdb://host:port to run them"
BACKENDS = os.environ.get("TQUEUES_TEST_BACKENDS", "sqlite,postgresql,rethinkdb").split(",")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in a thread (safe inside any test)."""
    out: list[Any] = []

    def target() -> None:
        out.append(asyncio.run(coro))

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if not out:
        raise RuntimeError("coroutine failed; see the log above")
    return out[0]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg.Cluster]:
    """The PostgreSQL server of this test session (TQUEUES_TEST_POSTGRES, or a throw-away one)."""
    url = os.environ.get(pg.ENV)
    cluster = pg.Cluster(url) if url else pg.Cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_template(pg_cluster: pg.Cluster) -> str:
    return run_sync(pg.create_template(pg_cluster))


@pytest.fixture(scope="session")
def fake_rethinkdb() -> Iterator[str]:
    """The URL of an in-memory RethinkDB double speaking the wire protocol (tests/support/fake_rethinkdb.py)."""
    from support.fake_rethinkdb import FakeWireServer

    server = FakeWireServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "rethinkdb" and not os.environ.get(RETHINKDB_ENV):
        pytest.skip(RETHINKDB_SKIP)
    return request.param


def rethinkdb_test_url(server: str) -> str:
    """``server`` (a rethinkdb:// URL, any database in it ignored) with a new random database."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(server)._replace(path=f"/tqueues_test_{uuid.uuid4().hex[:12]}", query=""))


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database of ``backend`` for this test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'tqueues.db'}"
        return
    if backend == "rethinkdb":
        from tqueues.store.rethinkdb import drop_database

        url = rethinkdb_test_url(os.environ[RETHINKDB_ENV])   # the store creates it when it opens
        try:
            yield url
        finally:
            run_sync(drop_database(url))
        return
    if backend == "rethinkdb-fake":
        from tqueues.store.rethinkdb import drop_database

        url = rethinkdb_test_url(request.getfixturevalue("fake_rethinkdb"))
        try:
            yield url
        finally:
            run_sync(drop_database(url))
        return
    cluster: pg.Cluster = request.getfixturevalue("pg_cluster")
    template: str = request.getfixturevalue("pg_template")
    url = run_sync(pg.fresh_database(cluster, template))
    try:
        yield url
    finally:
        run_sync(pg.drop_database(cluster, url))


@pytest.fixture
def pg_url(pg_cluster: pg.Cluster, pg_template: str) -> Iterator[str]:
    """A fresh PostgreSQL database for a test that needs PostgreSQL whatever the backend."""
    url = run_sync(pg.fresh_database(pg_cluster, pg_template))
    try:
        yield url
    finally:
        run_sync(pg.drop_database(pg_cluster, url))


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = open_store(db_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Serve aiohttp applications on free loopback ports until the test ends: ``await
    serve_app(app, **runner_args)`` is the port of ``app``."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application, **runner_args: Any) -> int:
        runner = web.AppRunner(app, **{"access_log": None, **runner_args})
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def start_server(store: Store, serve_app: Callable[..., Awaitable[int]]
                       ) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    sessions: list[aiohttp.ClientSession] = []

    async def start(**settings: Any) -> Server:
        app = create_app(store, Settings(open_store=False, **settings))
        port = await serve_app(app)
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Server(f"http://127.0.0.1:{port}/", app, store, session)

    yield start
    for session in sessions:
        await session.close()


@pytest.fixture
async def server(start_server: Callable[..., Awaitable[Server]]) -> Server:
    return await start_server()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the fault tests (tests/faults) at soak size: about ten times the jobs and faults, "
                          "for longer")


# Each test's report per phase, as item.rep_setup/rep_call/rep_teardown, so fixtures can print
# the logs of the processes they started when (and only when) the test failed.
@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
