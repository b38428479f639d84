"""The event loop under the dispatcher, the workers and a SyncClient's thread: uvloop where it is
installed (a dependency on Linux and macOS), the standard library's when TQUEUES_LOOP=asyncio
asks for it."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from acceptance.conftest import Cluster
from support.procs import env

from tqueues import Client
from tqueues.client import SyncClient
from tqueues.errors import ConfigurationError
from tqueues.loops import loop_kind, new_event_loop

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def health(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url + "api/v1/health", timeout=5) as answer:
        return dict(json.loads(answer.read()))


async def loop_of_a_job(url: str) -> str:
    async with Client(url) as client:
        job = await client.enqueue("support.jobs:loop_name", queue="loops")
        done = await client.wait(job["id"], timeout=30)
    assert done["status"] == "finished", done
    return str(done["result"])


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed on this platform")
async def test_given_uvloop_installed_then_the_dispatcher_and_the_workers_run_on_it(cluster: Cluster) -> None:
    url = cluster.start_dispatcher()
    cluster.worker("loops")
    assert health(url)["loop"] == "uvloop"
    assert await loop_of_a_job(url) == "uvloop"


async def test_given_tqueues_loop_asyncio_then_both_run_on_the_standard_loop_and_jobs_flow(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQUEUES_LOOP", "asyncio")
    url = cluster.start_dispatcher()
    cluster.worker("loops")
    assert health(url)["loop"] == "asyncio"
    assert await loop_of_a_job(url) == "asyncio"


@pytest.mark.parametrize("module, extra", [
    ("tqueues.cli.dispatcher", ["--bind", "127.0.0.1:1"]),
    ("tqueues.cli.worker", ["--endpoint_url", "http://127.0.0.1:1/", "--queue", "q"]),
])
def test_given_an_unknown_tqueues_loop_then_the_process_says_so_in_one_line(
        module: str, extra: list[str], tmp_path: Path) -> None:
    environ = {**env(), "TQUEUES_LOOP": "tokio"}
    extra = [*extra, "--db", f"sqlite:///{tmp_path / 'x.db'}"] if module.endswith("dispatcher") else extra
    result = subprocess.run([sys.executable, "-m", module, *extra], capture_output=True, text=True,
                            timeout=60, env=environ)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"{module.rpartition('.')[2].join(['tqueues_', ''])}: error: TQUEUES_LOOP must be uvloop or asyncio, not 'tokio'"]


def test_new_event_loop_follows_tqueues_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQUEUES_LOOP", "asyncio")
    loop = new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio") and loop_kind(loop) == "asyncio"
    finally:
        loop.close()
    monkeypatch.delenv("TQUEUES_LOOP")
    loop = new_event_loop()
    try:
        assert loop_kind(loop) == ("uvloop" if HAS_UVLOOP else "asyncio")
        assert loop.run_until_complete(asyncio.sleep(0, "ran")) == "ran"
    finally:
        loop.close()
    monkeypatch.setenv("TQUEUES_LOOP", "Tokio ")
    with pytest.raises(ConfigurationError, match="TQUEUES_LOOP must be uvloop or asyncio, not 'tokio'"):
        new_event_loop()


def test_given_a_sync_client_then_its_thread_runs_the_same_loop_and_it_enqueues(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    url = cluster.start_dispatcher()
    for choice, expected in (("", "uvloop" if HAS_UVLOOP else "asyncio"), ("asyncio", "asyncio")):
        monkeypatch.setenv("TQUEUES_LOOP", choice)
        with SyncClient(url) as client:
            assert loop_kind(client._loop) == expected
            job = client.enqueue("support.jobs:echo", 7, queue="sync-loop")
            assert client.get(job["id"])["status"] == "pending"
    monkeypatch.setenv("TQUEUES_LOOP", "tokio")
    with pytest.raises(ConfigurationError, match="TQUEUES_LOOP"):
        SyncClient(url)
