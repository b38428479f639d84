"""The dispatcher killed with SIGKILL under load and restarted, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest
from faults.harness import UNKNOWN, Rig, Size, wait_for

pytestmark = pytest.mark.faults


async def test_given_producers_retrying_with_keys_when_the_dispatcher_is_killed_then_every_acknowledged_job_runs_once_as_one_job(
        rig: Rig, size: Size) -> None:
    total, kills_wanted = size(300), size(2, 10)
    rig.start_dispatcher("--lease", "2")
    workers = [rig.worker("crash", concurrency=4) for _ in range(2)]
    producer = rig.producer()
    specs = [producer.job(f"k{i}", queue="crash") for i in range(total)]
    kills = 0
    async with producer.session() as session:
        # Given three producers, each retrying every enqueue with its key until acknowledged
        producing = asyncio.ensure_future(producer.enqueue_all(session, specs, batch=3, streams=3, gap=0.005))
        try:
            for n in range(1, kills_wanted + 1):
                target = total * n // (kills_wanted + 1)
                await wait_for(lambda: len(producer.acknowledged()) >= target or producing.done(), 120,
                               f"fewer than {target} jobs acknowledged")
                await wait_for(lambda: producer.awaiting > 0 or producing.done(), 30, "no request in flight",
                               interval=0.001)
                # When the dispatcher is killed mid-stream and started again on the same database
                rig.kill_dispatcher()
                kills += 1
                await asyncio.sleep(0.5)
                rig.restart_dispatcher()
        finally:
            await producing
    report = await rig.check("dispatcher killed mid-stream", [producer], faults=kills,
                             fault_kind="dispatcher kill -9", timeout=size(120, 600))
    # Then the kills cut requests whose outcome the producers could not know
    assert report.enqueues.get(UNKNOWN, 0) > 0, f"the kills hit no request: {report}"
    # And each key was acknowledged as one job, every job finished, and a job that ran twice did so
    # only as recorded attempts
    assert all(len(found) == 1 for found in producer.acknowledged().values())
    assert report.ok, str(report)
    assert (report.jobs, report.done, report.lost, report.unexpected, report.unexplained) == (total, total, 0, 0, 0)
    assert report.faults == kills_wanted
    # And the workers rode out the dispatcher's deaths
    assert all(w.alive() for w in workers)
