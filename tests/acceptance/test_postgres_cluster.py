"""Several dispatchers on one PostgreSQL database: wake-ups, feeds, load, kills and restarts."""

from __future__ import annotations

import asyncio
import collections
import json
import random
import time
from pathlib import Path

import aiohttp
import pytest
from acceptance.conftest import wait_for
from support import pg
from support.jobs import ledger_lines
from support.procs import Proc, start_dispatcher, start_worker

from tqueues import Client

RECORD = "support.jobs:record"


class Fleet:
    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.db = tmp, url
        self.procs: list[Proc] = []
        self.ledger = str(tmp / "ledger.txt")

    def dispatcher(self, *extra: str) -> str:
        proc, url = start_dispatcher(self.tmp, self.db, "--loglevel", "WARNING", *extra)
        self.procs.append(proc)
        return url

    def worker(self, url: str, queue: str, concurrency: int = 8) -> Proc:
        proc = start_worker(self.tmp, url, queue, "--loglevel", "WARNING", concurrency=concurrency)
        self.procs.append(proc)
        return proc

    def ledger_pairs(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter((l.split()[0], l.split()[1]) for l in ledger_lines(self.ledger) if l.strip())

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.close()


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> object:
    f = Fleet(tmp_path, pg_url)
    yield f
    f.close()


async def drain(client: Client, queue: str, total: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = {q["name"]: q["counts"] for q in await client.queues()}.get(queue, {})
        if counts.get("finished", 0) + counts.get("failed", 0) >= total or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.2)


async def test_given_two_dispatchers_when_a_job_is_enqueued_through_one_then_a_claim_waiting_on_the_other_gets_it(fleet: Fleet) -> None:
    a, b = fleet.dispatcher(), fleet.dispatcher()
    async with aiohttp.ClientSession() as session:
        # Given a websocket feed and a long-polling claim on dispatcher B
        ws = await session.ws_connect(b + "api/v1/events?queue=wake")
        claim = asyncio.ensure_future(session.post(b + "api/v1/claim", json={"queue": "wake", "wait": 10}))
        await asyncio.sleep(0.3)
        # When a job is enqueued through dispatcher A
        started = time.monotonic()
        async with session.post(a + "api/v1/jobs", json={"queue": "wake", "method": "m:f"}) as response:
            job = await response.json()
        response = await claim
        elapsed = time.monotonic() - started
        claimed = (await response.json())["jobs"]
        # Then B hands it to its waiting worker at once (well before the wait or any poll interval)
        assert [j["id"] for j in claimed] == [job["id"]]
        assert elapsed < 0.5, f"cross-dispatcher wake-up took {elapsed:.3f} s"
        # And B's websocket saw the events written through A and B, in seq order
        kinds, seqs = [], []
        while len(kinds) < 2:
            message = await asyncio.wait_for(ws.receive(), 5)
            event = json.loads(message.data)
            kinds.append(event["kind"])
            seqs.append(event["seq"])
        assert kinds == ["job.created", "job.started"] and seqs == sorted(seqs)
        await ws.close()


async def test_given_two_dispatchers_and_four_workers_when_20000_jobs_flow_with_kills_then_none_is_lost(fleet: Fleet) -> None:
    a, b = fleet.dispatcher("--lease", "3"), fleet.dispatcher("--lease", "3")
    workers = [fleet.worker(url, "load") for url in (a, b, a, b)]
    total = 20_000
    async with Client(a) as ca, Client(b) as cb:
        # Given 20,000 jobs enqueued through both dispatchers
        specs = [{"queue": "load", "method": RECORD, "args": [fleet.ledger, i]} for i in range(total)]
        await asyncio.gather(ca.enqueue_many(specs[: total // 2], chunk=2000), cb.enqueue_many(specs[total // 2:], chunk=2000))
        # When two workers are killed with SIGKILL mid-run and replaced
        wait_for(lambda: sum(fleet.ledger_pairs().values()) > total // 4, 120, "workers made no progress")
        for victim in random.sample(workers, 2):
            victim.kill9()
            fleet.worker(a if random.random() < 0.5 else b, "load")
        counts = await drain(ca, "load", total, timeout=240)
        # Then every job finished
        assert counts.get("finished") == total, counts
        jobs = []
        before = None
        while True:
            page = await ca.jobs(queue="load", limit=1000, **({"before": before} if before else {}))
            if not page:
                break
            jobs.extend(page)
            before = page[-1]["id"]
    assert len(jobs) == total and {j["status"] for j in jobs} == {"finished"}
    # And no (job, attempt) ran twice; a job that ran more than once did so as recorded re-attempts
    pairs = fleet.ledger_pairs()
    assert max(pairs.values()) == 1
    attempts = {j["id"]: j["attempts"] for j in jobs}
    assert {job_id for job_id, _ in pairs} == set(attempts)
    assert all(1 <= int(attempt) <= attempts[job_id] for job_id, attempt in pairs)


async def test_given_load_when_postgresql_restarts_immediately_then_503s_then_recovery_and_nothing_lost(
        fleet: Fleet, pg_cluster: pg.Cluster) -> None:
    if not pg_cluster.own:
        pytest.skip("restart test skipped: TQUEUES_TEST_POSTGRES names a server these tests must not restart")
    a = fleet.dispatcher()
    fleet.worker(a, "restart")
    statuses: collections.Counter[int] = collections.Counter()
    acknowledged: set[str] = set()
    stop = asyncio.Event()

    async def producer(session: aiohttp.ClientSession, worker: int) -> None:
        n = 0
        while not stop.is_set():
            key = f"p{worker}-{n}"
            try:
                async with session.post(a + "api/v1/jobs", json={"queue": "restart", "method": RECORD,
                                                                  "args": [fleet.ledger, key], "key": key}) as response:
                    statuses[response.status] += 1
                    if response.status in (200, 201):
                        acknowledged.add((await response.json())["id"])
                        n += 1
                    elif response.status == 503:
                        assert response.headers.get("Retry-After")
                        await asyncio.sleep(0.05)
            except aiohttp.ClientError:
                statuses[0] += 1
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.ensure_future(producer(session, i)) for i in range(4)]
        await asyncio.sleep(1.0)
        # When PostgreSQL is restarted with -m immediate under load
        await asyncio.get_running_loop().run_in_executor(None, pg_cluster.pg_ctl, "restart", "-m", "immediate")
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*tasks)
    # Then the outage was answered 503 (never 500) and service resumed by itself
    assert statuses[500] == 0, statuses
    assert statuses[503] > 0, f"no 503 seen during the restart: {statuses}"
    assert statuses[201] > 0
    async with Client(a) as client:
        after = await client.enqueue(RECORD, fleet.ledger, "after", queue="restart")
        acknowledged.add(after["id"])
        done = await asyncio.gather(*(client.wait(i, timeout=120) for i in acknowledged))
    # And every acknowledged enqueue finished
    assert collections.Counter(j["status"] for j in done) == {"finished": len(acknowledged)}


async def test_given_a_client_waiting_on_a_job_when_postgresql_is_down_then_the_wait_rides_out_the_503s(
        fleet: Fleet, pg_cluster: pg.Cluster) -> None:
    if not pg_cluster.own:
        pytest.skip("outage test skipped: TQUEUES_TEST_POSTGRES names a server these tests must not stop")
    a = fleet.dispatcher()
    async with Client(a) as client:
        job = await client.enqueue(RECORD, fleet.ledger, "outage", queue="outage")
        # Given PostgreSQL is down, so the dispatcher answers 503 with Retry-After
        await asyncio.get_running_loop().run_in_executor(None, pg_cluster.pg_ctl, "stop", "-m", "immediate")
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(a + "api/v1/events") as response:
                    assert response.status == 503 and response.headers.get("Retry-After")
            # When a client starts waiting on the job during the outage
            waiting = asyncio.ensure_future(client.wait(job["id"], timeout=120))
            await asyncio.sleep(1.5)
            # Then it keeps trying instead of failing
            assert not waiting.done(), waiting.exception() if waiting.done() else None
        finally:
            await asyncio.get_running_loop().run_in_executor(None, pg_cluster.pg_ctl, "start")
        # And once the database is back and a worker runs the job, the wait returns it finished
        fleet.worker(a, "outage")
        done = await waiting
    assert done["status"] == "finished" and done["id"] == job["id"]
