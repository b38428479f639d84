"""The dispatcher killed with SIGKILL under load and restarted, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp
import pytest
from support.procs import Proc, free_port, start_dispatcher, start_worker

from tqueues import Client

pytestmark = pytest.mark.faults

JOBS = 300


async def test_given_producers_retrying_with_keys_when_the_dispatcher_is_killed_then_every_acknowledged_job_runs_once_as_one_job(
        tmp_path: Path, db_url: str) -> None:
    port = free_port()
    ledger = tmp_path / "ledger.txt"
    dispatcher, url = start_dispatcher(tmp_path, db_url, "--lease", "2", port=port, name="first")
    workers = [start_worker(tmp_path, url, "crash", concurrency=4) for _ in range(2)]
    procs: list[Proc] = [dispatcher, *workers]
    acknowledged: dict[str, set[str]] = collections.defaultdict(set)
    outcomes: collections.Counter[str] = collections.Counter()

    async def produce(session: aiohttp.ClientSession, keys: list[str]) -> None:
        for key in keys:
            while True:   # retry with the same key until the dispatcher acknowledges
                try:
                    async with session.post(url + "api/v1/jobs", json={
                            "queue": "crash", "method": "support.jobs:record", "args": [str(ledger), key], "key": key},
                            timeout=aiohttp.ClientTimeout(total=5)) as response:
                        if response.status in (200, 201):
                            acknowledged[key].add((await response.json())["id"])
                            outcomes["ok"] += 1
                            break
                        outcomes[f"http {response.status}"] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    outcomes["unknown"] += 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.005)

    try:
        async with aiohttp.ClientSession() as session:
            keys = [f"k{i}" for i in range(JOBS)]
            producers = [asyncio.ensure_future(produce(session, keys[i::3])) for i in range(3)]
            while outcomes["ok"] < JOBS // 3:
                await asyncio.sleep(0.02)
            # When the dispatcher is killed mid-stream and started again on the same database
            dispatcher.kill9()
            await asyncio.sleep(0.5)
            restarted, _ = start_dispatcher(tmp_path, db_url, "--lease", "2", port=port, name="second")
            procs.append(restarted)
            await asyncio.gather(*producers)
        async with Client(url) as client:
            ids = {key: next(iter(found)) for key, found in acknowledged.items()}
            done = await asyncio.gather(*(client.wait(i, timeout=90) for i in ids.values()))
            listed = []
            before = None
            while True:
                page = await client.jobs(queue="crash", limit=1000, **({"before": before} if before else {}))
                if not page:
                    break
                listed.extend(page)
                before = page[-1]["id"]
        # Then each key was acknowledged as one job only, every one finished, none exists twice
        assert outcomes["unknown"] > 0, "the kill did not hit any request"
        assert len(acknowledged) == JOBS and all(len(found) == 1 for found in acknowledged.values())
        assert {d["status"] for d in done} == {"finished"}
        assert sorted(j["key"] for j in listed) == sorted(ids) and len(listed) == JOBS
        # And a job that ran twice did so as two recorded attempts, never twice in one attempt
        runs = collections.Counter((line.split()[0], line.split()[1]) for line in ledger.read_text().splitlines())
        assert max(runs.values()) == 1
        attempts = {d["id"]: d["attempts"] for d in done}
        assert all(int(attempt) <= attempts[job_id] for job_id, attempt in runs)
        assert {job_id for job_id, _ in runs} == set(attempts)
    finally:
        for proc in procs:
            proc.close()
