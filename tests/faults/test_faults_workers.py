"""Worker processes killed with SIGKILL at random under load and replaced, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest
from faults.harness import RECORD, RECORD_PLAIN, Rig, Size, wait_for

pytestmark = pytest.mark.faults


async def test_given_workers_killed_at_random_under_load_then_no_job_is_lost_and_each_rerun_is_a_recorded_attempt(
        rig: Rig, size: Size) -> None:
    seed = random.randrange(1 << 30)
    print(f"random seed {seed}")
    rng = random.Random(seed)
    total, kills_wanted = size(400), size(8)
    rig.start_dispatcher("--lease", "2")
    workers = [rig.worker("kill", concurrency=4) for _ in range(3)]
    producer = rig.producer()
    # Given a stream of short jobs, coroutines and plain functions, each allowed many attempts
    specs = [producer.job(f"w{i}", queue="kill", method=RECORD_PLAIN if i % 4 == 0 else RECORD,
                          seconds=round(rng.uniform(0.05, 0.3), 3), max_attempts=50, backoff=0.05)
             for i in range(total)]
    kills = 0
    async with aiohttp.ClientSession() as session:
        producing = asyncio.ensure_future(producer.enqueue_all(session, specs, batch=20, streams=2, gap=0.1))
        try:
            await wait_for(lambda: rig.ledger.count("run") >= 10, 90, "the workers ran nothing")
            # When every 0.3-1 s a random worker is killed with SIGKILL and a new one started
            while kills < kills_wanted:
                await asyncio.sleep(rng.uniform(0.3, 1.0))
                victim = rng.choice(workers)
                victim.kill9()
                kills += 1
                workers.remove(victim)
                workers.append(rig.worker("kill", concurrency=4))
        finally:
            await producing
    # Then after the drain every acknowledged job finished, none was lost or appeared unasked
    report = await rig.check("workers killed at random", [producer], faults=kills, fault_kind="worker kill -9",
                             timeout=size(180, 900))
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected) == (total, total, 0, 0)
    # And the kills did cut attempts short, each re-run being a new recorded attempt
    assert report.faults == kills_wanted
    assert report.retried > 0, f"no attempt was cut short by {kills} kills: {report}"
    assert report.unexplained == 0
    assert all(w.alive() for w in workers)
