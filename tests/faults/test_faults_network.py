"""Network faults between a worker and its dispatcher, on SQLite and PostgreSQL:
a claim answer lost on the wire, and a partition longer than the lease."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import pytest
from faults.proxy import FaultProxy
from support.procs import Proc, start_dispatcher, start_worker

from tqueues import Client

pytestmark = pytest.mark.faults


async def wait_for(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    """Poll without blocking the loop: the proxy runs on it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(0.05)


def ledger(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def test_given_a_claim_answer_lost_on_the_wire_then_the_job_is_released_by_its_lease_and_finished(
        tmp_path: Path, db_url: str) -> None:
    dispatcher, url = start_dispatcher(tmp_path, db_url, "--lease", "1")
    proxy = await FaultProxy(int(url.rsplit(":", 1)[1].strip("/"))).start()
    worker: Proc | None = None
    try:
        # Given a worker whose next claim answer will be lost after the claim committed
        proxy.drop_next_claim_answer()
        worker = start_worker(tmp_path, proxy.url, "lost", "--wait", "2")
        async with Client(url) as client:
            ledger_path = tmp_path / "ledger.txt"
            job = await client.enqueue("support.jobs:record", str(ledger_path), "v", queue="lost", max_attempts=3)
            # When the job has been handed out and the answer dropped
            done = await client.wait(job["id"], timeout=60)
            executions = await client.executions(job["id"])
        # Then the lease expired, the job came back and was finished on the next attempt
        assert proxy.dropped == 1
        assert done["status"] == "finished" and done["attempts"] == 2
        assert [e["status"] for e in executions] == ["lost", "finished"]
        assert [line[1] for line in ledger(ledger_path)] == ["2"], "the lost attempt never ran"
    finally:
        if worker is not None:
            worker.close()
        await proxy.close()
        dispatcher.close()


async def test_given_a_partition_longer_than_the_lease_then_the_job_is_re_leased_and_the_old_worker_overwrites_nothing(
        tmp_path: Path, db_url: str) -> None:
    dispatcher, url = start_dispatcher(tmp_path, db_url, "--lease", "1")
    proxy = await FaultProxy(int(url.rsplit(":", 1)[1].strip("/"))).start()
    ledger_path = tmp_path / "ledger.txt"
    cut_off = start_worker(tmp_path, proxy.url, "split", name="cutoff")
    rescuer: Proc | None = None
    try:
        async with Client(url) as client:
            job = await client.enqueue("support.jobs:slow_record", str(ledger_path), 2.5, queue="split", max_attempts=3)
            await wait_for(lambda: any(l[0] == "start" for l in ledger(ledger_path)), 20, "the job never started")
            # When the worker running it is cut off for longer than the lease
            proxy.partition()
            rescuer = start_worker(tmp_path, url, "split", name="rescuer")
            done = await client.wait(job["id"], timeout=60)
            # Then another worker finished it on a new attempt
            assert rescuer is not None
            assert done["status"] == "finished" and done["attempts"] == 2 and f":{rescuer.pid}:" in done["worker"]
            executions = await client.executions(job["id"])
            assert [e["status"] for e in executions] == ["lost", "finished"]
            assert f":{cut_off.pid}:" in executions[0]["worker"]
            # And when the partition heals, the old worker's late heartbeat and completion change nothing
            proxy.heal()
            await wait_for(lambda: "not recorded" in cut_off.output() or "lease lost" in cut_off.output(), 30,
                     "the cut-off worker never heard back")
            await asyncio.sleep(0.5)
            after = await client.get(job["id"])
            assert (after["status"], after["attempts"], after["finished_at"]) == ("finished", 2, done["finished_at"])
            assert [e["status"] for e in await client.executions(job["id"])] == ["lost", "finished"]
    finally:
        for proc in (cut_off, rescuer):
            if proc is not None:
                proc.close()
        await proxy.close()
        dispatcher.close()
