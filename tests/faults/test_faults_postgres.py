"""PostgreSQL restarted with ``pg_ctl restart -m immediate`` under load (the throw-away server
the tests start; skipped when TQUEUES_TEST_POSTGRES names an external one)."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from faults.harness import Rig, Size, wait_for
from support import pg

pytestmark = pytest.mark.faults


async def test_given_load_when_postgresql_restarts_immediately_then_503s_with_retry_after_and_recovery_without_restarts_and_nothing_lost(
        pg_rig: Rig, pg_cluster: pg.Cluster, size: Size) -> None:
    rig = pg_rig
    restarts, phase = size(1, 5), size(100, 300)   # restarts; jobs to run before, between and after them
    rig.start_dispatcher("--lease", "5")
    workers = [rig.worker("pgr", concurrency=4) for _ in range(2)]
    pids = {p.pid for p in rig.procs}
    producer = rig.producer()
    stop = asyncio.Event()

    async def stream(session: aiohttp.ClientSession, name: str) -> None:
        n = 0
        while not stop.is_set():
            # each enqueue is retried with its key until acknowledged, through 503s and all
            await producer.enqueue(session, [producer.job(f"{name}-{n}", queue="pgr", seconds=0.05)])
            n += 1
            await asyncio.sleep(0.05)

    async with producer.session() as session:
        streams = [asyncio.ensure_future(stream(session, f"s{i}")) for i in range(4)]
        try:
            await wait_for(lambda: rig.ledger.count("run") >= phase, 60, "no job ran before the restart")
            loop = asyncio.get_running_loop()
            for _ in range(restarts):
                # When PostgreSQL is restarted with -m immediate while producers and workers are busy
                before = producer.statuses[503]
                await loop.run_in_executor(None, pg_cluster.pg_ctl, "restart", "-m", "immediate")
                ran = rig.ledger.count("run")
                # Then the dispatcher recovers by itself: enqueues are acknowledged and jobs run again
                acknowledged = len(producer.ids())
                await wait_for(lambda: len(producer.ids()) > acknowledged + phase
                               and rig.ledger.count("run") > ran + phase, 60, "no recovery after the restart")
                assert producer.statuses[503] > before, f"no 503 during the restart: {producer.statuses}"
        finally:
            stop.set()
            await asyncio.gather(*streams)
    report = await rig.check("PostgreSQL restarted (-m immediate)", [producer], faults=restarts,
                             fault_kind="pg_ctl restart -m immediate", timeout=size(120, 600))
    # And the outage was answered 503 with Retry-After, never another 5xx
    assert {status for status in producer.statuses if status >= 500} == {503}, producer.statuses
    assert producer.retry_after_missing == 0
    # And nothing was lost, no job appeared twice, with no tqueues process restarted
    assert report.ok, str(report)
    assert (report.done, report.lost, report.unexpected, report.unexplained) == (report.jobs, 0, 0, 0)
    assert {p.pid for p in rig.procs} == pids and all(p.alive() for p in rig.procs)
    assert all(w.alive() for w in workers)
