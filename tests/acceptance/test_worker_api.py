"""The Worker and Job Python API against a dispatcher on a real port."""

from __future__ import annotations

import asyncio
import sys

import pytest
from support import jobs as testjobs
from support.server import Server

import tqueues
from tqueues import Client, Registry, Worker


@tqueues.task(name="tests.double")
async def double(x: int) -> int:
    return 2 * x


async def test_given_a_worker_iterated_by_hand_then_job_exit_reports_finished_or_failed(server: Server) -> None:
    async with Client(server.url) as client:
        ok = await client.enqueue("support.jobs:echo", 1, queue="iter")
        bad = await client.enqueue("support.jobs:fail_always", "nope", queue="iter", max_attempts=1)
        worker = Worker(server.url, "iter", modules=["support.jobs"], wait=1)
        seen = 0
        async with worker:
            async for job in worker:
                async with job:
                    await job.run()
                seen += 1
                if seen == 2:
                    break
        # An exception inside the block is recorded as failed, never finished
        assert (await client.wait(ok["id"], timeout=10))["status"] == "finished"
        failed = await client.wait(bad["id"], timeout=10)
        assert failed["status"] == "failed" and failed["error"]["message"] == "nope"


async def test_given_an_exception_in_the_job_block_itself_then_the_job_fails(server: Server) -> None:
    async with Client(server.url) as client:
        job = await client.enqueue("support.jobs:echo", queue="block")
        async with Worker(server.url, "block", modules=["support.jobs"], wait=1) as worker:
            leased = await worker.__anext__()
            async with leased:
                raise KeyError("raised by the caller, not the function")
        done = await client.get(job["id"])   # the worker reported it before closing
    assert done["status"] == "pending" and done["error"]["type"] == "KeyError"   # retried: attempts remain
    assert done["attempts"] == 1


@pytest.mark.parametrize("isolation", ["process", "thread"])
async def test_given_functions_of_each_kind_then_they_run_with_their_job_handle(server: Server, isolation: str) -> None:
    async with Client(server.url) as client:
        # Given an async and a plain function that report progress through tq_parent_job
        a = await client.enqueue("support.jobs:progress", 3, queue="kinds")
        p = await client.enqueue("support.jobs:progress_plain", 4, queue="kinds")
        d = await client.enqueue("tests.double", 21, queue="kinds")
        worker = Worker(server.url, "kinds", modules=["support.jobs"], concurrency=2, isolation=isolation, wait=1)
        runner = asyncio.ensure_future(worker.run_forever())
        try:
            done = [await client.wait(j["id"], timeout=20) for j in (a, p, d)]
        finally:
            worker.stop()
            await asyncio.wait_for(runner, 20)
    # Then both ran, returned, and their data holds the last progress step
    assert [j["status"] for j in done] == ["finished"] * 3
    assert (done[0]["result"], done[0]["data"]) == (3, {"step": 3})
    assert (done[1]["result"], done[1]["data"]) == (4, {"step": 4})
    assert done[2]["result"] == 42



@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout needs Python 3.11")
async def test_given_coroutine_jobs_then_each_runs_as_its_own_task_from_its_first_line(server: Server) -> None:
    async with Client(server.url) as client:
        # Given jobs that look at the task running them, and jobs that time themselves out with
        # asyncio.timeout, which cancels whichever task entered it
        mine = [await client.enqueue("support.jobs:own_task", queue="own") for _ in range(3)]
        timed = [await client.enqueue("support.jobs:own_timeout", 0.05, queue="own") for _ in range(3)]
        after = await client.enqueue("support.jobs:echo", "still claiming", queue="own")
        worker = Worker(server.url, "own", modules=["support.jobs"], concurrency=2, wait=1)
        runner = asyncio.ensure_future(worker.run_forever())
        try:
            done = [await client.wait(j["id"], timeout=20) for j in (*mine, *timed, after)]
        finally:
            worker.stop()
            await asyncio.wait_for(runner, 20)
    # Then each ran in its own task, even before its first wait (where Python 3.12+ starts it
    # at once), so each timeout cancelled its own job and never the worker's claims
    assert [j["result"] for j in done] == ["own_task"] * 3 + ["timed out"] * 3 + [{"args": ["still claiming"], "kwargs": {}}]
    assert not runner.cancelled() and runner.exception() is None


def test_a_registry_finds_marked_functions_and_resolves_dotted_names() -> None:
    registry = Registry()
    registry.discover()
    assert "tests.double" in registry
    registry.add_module(testjobs)
    assert registry.resolve("support.jobs.echo") is testjobs.echo
    with pytest.raises(tqueues.errors.NotRegistered):
        registry.resolve("os:system")


async def test_given_jobs_run_by_run_forever_then_each_job_is_freed_without_the_garbage_collector(
        server: Server) -> None:
    """A job that ended holds nothing that refers back to it (its task's context, the sink of
    its output): reference counting frees it, where a cycle of a dozen objects per job left
    them to collections of the oldest generations, a third of a busy worker's time."""
    import gc

    testjobs.JOB_REFS.clear()
    async with Client(server.url) as client:
        await client.enqueue_many([{"queue": "freed", "method": "support.jobs:keep_ref", "args": [i]} for i in range(200)],
                                  documents=False)
        worker = Worker(server.url, "freed", modules=["support.jobs"], concurrency=4, prefetch=64, wait=1)
        gc.collect()
        gc.disable()
        try:
            runner = asyncio.ensure_future(worker.run_forever())
            deadline = asyncio.get_running_loop().time() + 60
            while worker.jobs_done < 200:
                assert asyncio.get_running_loop().time() < deadline and not runner.done(), worker.jobs_done
                await asyncio.sleep(0.02)
            worker.stop()
            await asyncio.wait_for(runner, 30)
            # Every outcome is reported and every job released by the worker: none is left alive
            assert len(testjobs.JOB_REFS) == 200
            alive = [ref() for ref in testjobs.JOB_REFS if ref() is not None]
            assert alive == [], f"{len(alive)} of 200 jobs still alive, e.g. {alive[0]!r}: {gc.get_referrers(alive[0])!r:.600}"
        finally:
            gc.enable()
