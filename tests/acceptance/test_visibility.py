"""Seeing and steering jobs: resumable feeds, captured output, aborts, pauses, workers, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time

import aiohttp
from acceptance.conftest import Cluster, wait_for
from support.procs import env
from support.server import Server

from tqueues import Client


async def test_given_a_feed_disconnected_while_1000_events_happen_then_since_resumes_each_exactly_once(server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        # Given a websocket feed that saw the first event, then disconnected
        ws = await session.ws_connect(server.url + "api/v1/events?queue=feed")
        await server.call("POST", "/api/v1/jobs", json={"queue": "feed", "method": "m:f"})
        first = json.loads((await ws.receive(timeout=5)).data)
        await ws.close()
        # When 1,000 events happen meanwhile (creations, claims, completions, other queues too)
        await server.call("POST", "/api/v1/jobs", json=[{"queue": "feed", "method": "m:f"} for _ in range(600)])
        await server.call("POST", "/api/v1/jobs", json=[{"queue": "other", "method": "m:f"} for _ in range(50)])
        status, body = await server.call("POST", "/api/v1/claim", json={"queue": "feed", "limit": 200})
        outcomes = [{"id": j["id"], "lease": j["lease"], "status": "finished"} for j in body["jobs"]]
        await server.call("POST", "/api/v1/complete", json={"outcomes": outcomes})
        expected = [e["seq"] for e in await server.store.events_since(first["seq"], 10_000, queue="feed")]
        assert len(expected) == 1000
        # Then a reconnect with since= receives each of them exactly once, in order, then live ones
        ws = await session.ws_connect(server.url + f"api/v1/events?queue=feed&since={first['seq']}")
        got = [json.loads((await ws.receive(timeout=5)).data)["seq"] for _ in range(1000)]
        assert got == expected
        await server.call("POST", "/api/v1/jobs", json={"queue": "feed", "method": "m:f"})
        live = json.loads((await ws.receive(timeout=5)).data)
        assert live["seq"] > got[-1] and live["kind"] == "job.created"
        await ws.close()


async def test_given_two_concurrent_jobs_that_print_then_each_line_lands_on_its_job_in_order(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("logs", concurrency=4)
    async with Client(url) as client:
        jobs = {tag: await client.enqueue(method, tag, 20, queue="logs")
                for tag, method in (("A", "support.jobs:chatty"), ("B", "support.jobs:chatty"),
                                    ("P", "support.jobs:chatty_plain"), ("Q", "support.jobs:chatty_plain"))}
        for job in jobs.values():
            assert (await client.wait(job["id"], timeout=30))["status"] == "finished"
        for tag, job in jobs.items():
            # the last lines may still be on their way (they are sent before the outcome, but check)
            lines = await client.logs(job["id"])
            by_stream = {stream: [l["line"] for l in lines if l["stream"] == stream] for stream in ("stdout", "stderr", "log")}
            assert by_stream["stdout"] == [f"{tag} out {i}" for i in range(20)], (tag, lines[:5])
            assert by_stream["stderr"] == [f"{tag} err"]
            assert [l.split(": ", 1)[1] for l in by_stream["log"]] == [f"{tag} log {i}" for i in range(20)]
            assert all(l["attempt"] == 1 for l in lines)
            assert [l["id"] for l in lines] == sorted(l["id"] for l in lines)
            (execution,) = await client.request("GET", f"api/v1/jobs/{job['id']}/executions", params={"logs": "true"})
            assert execution["status"] == "finished" and execution["logs"] == lines


async def test_given_a_plain_function_ignoring_cancellation_when_aborted_then_it_ends_within_the_grace(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("stubborn", "--stop-grace", "1", concurrency=1)
    async with Client(url) as client:
        job = await client.enqueue("support.jobs:stubborn", cluster.ledger, queue="stubborn")
        wait_for(lambda: any(l[0] == "start" for l in cluster.ledger_lines()), 20, "job never started")
        child = int(next(l[1] for l in cluster.ledger_lines() if l[0] == "start"))
        # When it is aborted
        started = time.monotonic()
        assert (await client.abort(job["id"]))["status"] == "aborted"
        # Then its process is gone within the grace period (it ignored the polite request)
        wait_for(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child), 8, "the stubborn child still runs")
        assert time.monotonic() - started < 6
        assert any(l[0] == "ignored" for l in cluster.ledger_lines()), "it was asked to stop first"
        # And the single-slot worker serves the next job
        nxt = await client.enqueue("support.jobs:add_plain", 1, 2, queue="stubborn")
        assert (await client.wait(nxt["id"], timeout=20))["result"] == 3
        assert (await client.get(job["id"]))["status"] == "aborted"


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] == "Z"
    except OSError:
        return True


async def test_given_a_paused_queue_then_nothing_is_claimed_until_it_resumes(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    async with Client(url) as client:
        await client.pause("held")
        jobs = [await client.enqueue("support.jobs:add_plain", i, i, queue="held") for i in range(5)]
        cluster.worker("held", concurrency=2)
        await asyncio.sleep(1.5)
        assert {(await client.get(j["id"]))["status"] for j in jobs} == {"pending"}
        assert [q["paused"] for q in await client.queues() if q["name"] == "held"] == [True]
        # When resumed, the waiting worker takes them at once
        await client.resume("held")
        done = await asyncio.gather(*(client.wait(j["id"], timeout=20) for j in jobs))
        assert [d["result"] for d in done] == [0, 2, 4, 6, 8]


async def test_given_a_worker_then_the_registry_shows_its_load_and_a_remote_stop_drains_it(cluster: Cluster) -> None:
    url = cluster.start_dispatcher("--lease", "1.5")
    worker = cluster.worker("reg", concurrency=3)
    async with Client(url) as client:
        job = await client.enqueue("support.jobs:slow_record", cluster.ledger, 4.0, queue="reg")
        wait_for(lambda: any(l[0] == "start" for l in cluster.ledger_lines()), 20, "job never started")
        # a heartbeat (every lease/3) carries the load; on a busy machine it may take a while
        deadline = time.monotonic() + 3.5
        while True:
            (entry,) = await client.workers()
            if job["id"] in entry.get("current", []) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert entry["status"] == "alive" and entry["queues"] == ["reg"] and entry["concurrency"] == 3
        assert entry["pid"] == worker.pid and job["id"] in entry["current"]
        assert entry["rss_bytes"] > 1_000_000 and entry["cpu_seconds"] >= 0
        assert "support.jobs:slow_record" in entry["functions"]
        # When the worker is asked to stop remotely, it finishes its job and exits
        await client.stop_worker(entry["id"])
        assert worker.popen.wait(20) == 0
        assert (await client.get(job["id"]))["status"] == "finished"
        (entry,) = await client.workers()
        assert entry["status"] == "stopped"


async def test_the_client_watches_events_and_waits_on_the_feed(server: Server) -> None:
    async with Client(server.url) as client:
        async with client.watch(queue="w") as events:
            job = await client.enqueue("m:f", queue="w")
            event = await asyncio.wait_for(events.__anext__(), 5)
            assert (event["kind"], event["job_id"]) == ("job.created", job["id"])
        waiter = asyncio.ensure_future(client.wait(job["id"], timeout=10))
        await asyncio.sleep(0.2)
        claimed = (await client.request("POST", "api/v1/claim", json={"queue": "w"}))["jobs"][0]
        await client.request("POST", f"api/v1/jobs/{job['id']}/complete", json={"lease": claimed["lease"], "result": 7})
        done = await waiter
        assert done["status"] == "finished" and done["result"] == 7


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tqueues.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env())


async def test_cli_logs_follow_prints_lines_as_they_happen(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("follow")
    async with Client(url) as client:
        job = await client.enqueue("support.jobs:ticker", 20, 0.4, queue="follow")
        proc = subprocess.Popen([sys.executable, "-m", "tqueues.cli.main", "--endpoint_url", url, "logs", job["id"], "--follow"],
                                stdout=subprocess.PIPE, text=True, env=env())
        try:
            assert proc.stdout is not None
            first = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            # The first line arrives while the job still runs (it runs for 8 s)
            assert "tick 0" in first
            assert (await client.get(job["id"]))["status"] == "started"
            rest, _ = await asyncio.get_running_loop().run_in_executor(None, proc.communicate)
            assert proc.returncode == 0
            assert [line.split()[-1] for line in [first, *rest.splitlines()]] == [str(i) for i in range(20)]
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
    # and the non-follow form prints the stored lines
    result = run_cli("logs", job["id"], "--endpoint_url", url, "--json")
    assert [json.loads(l)["line"] for l in result.stdout.splitlines()] == [f"tick {i}" for i in range(20)]


async def test_cli_watch_redraws_a_live_table_in_a_terminal(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tqueues.cli.main", "watch", "--endpoint_url", url],
                            stdin=slave, stdout=slave, stderr=slave, env={**env(), "COLUMNS": "160", "LINES": "40"})
    os.close(slave)
    try:
        screen = b""

        def read_until(needle: bytes, timeout: float) -> bytes:
            nonlocal screen
            deadline = time.monotonic() + timeout
            while needle not in screen and time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    screen += os.read(master, 65536)
            return screen

        assert b"tqueues watch" in read_until(b"tqueues watch", 15)
        async with Client(url) as client:
            job = await client.enqueue("support.jobs:echo", queue="watched")
        screen = read_until(job["id"][-12:].encode(), 10)
        assert job["id"][-12:].encode() in screen and b"\x1b[2J" in screen
        assert b"pending 1" in screen.split(job["id"][-12:].encode())[0].rsplit(b"\x1b[2J", 1)[-1]
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(master)


async def test_cli_commands_steer_jobs_and_queues(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    loop = asyncio.get_running_loop()

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await loop.run_in_executor(None, lambda: run_cli("--endpoint_url", url, *args))

    enq = await cli("enqueue", "support.jobs:fail_always", "x", "--queue", "cli", "--max-attempts", "1")
    job_id = enq.stdout.strip()
    assert (await cli("pause", "cli")).stdout.strip() == "cli paused"
    queues = json.loads((await cli("queues", "--json")).stdout)
    assert [q["paused"] for q in queues if q["name"] == "cli"] == [True]
    assert (await cli("abort", job_id)).stdout.split() == [job_id, "aborted"]
    assert (await cli("retry", job_id)).stdout.split() == [job_id, "pending"]
    assert (await cli("resume", "cli")).returncode == 0
    jobs = json.loads((await cli("jobs", "--queue", "cli", "--json")).stdout)
    assert [j["id"] for j in jobs] == [job_id]
    shown = json.loads((await cli("show", job_id, "--json")).stdout)
    assert shown["status"] == "pending" and shown["max_attempts"] == 1
    stats = json.loads((await cli("stats", "--json")).stdout)
    assert stats["counts"]["pending"] == 1
    assert (await cli("prune", "--older-than", "1d")).stdout.strip() == "0 job(s) deleted"
    bad = await cli("prune", "--older-than", "soon")
    assert bad.returncode == 2 and "--older-than" in bad.stderr
    missing = await cli("abort", "nope")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nope" in missing.stderr
