"""The benchmark job's recording: every run counted once, with its start time, across processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench import record  # noqa: E402


@pytest.fixture
def recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> record.Recording:
    path = tmp_path / "record.bin"
    monkeypatch.setenv("BENCH_RECORD_FILE", str(path))
    rec = record.Recording(path)
    rec.reset()
    return rec


def _run_jobs(low: int, high: int) -> None:
    for n in range(low, high):
        record.record_sync(n)


def test_given_jobs_in_processes_and_threads_when_recorded_then_each_is_counted_once_with_its_start(
        recording: record.Recording) -> None:
    before = time.time()
    # Four processes and four threads append at the same time, as a prefork or threaded worker does
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_run_jobs, args=(k * 1000, k * 1000 + 1000)) for k in range(4)]
    threads = [threading.Thread(target=_run_jobs, args=(k * 1000, k * 1000 + 1000)) for k in range(4, 8)]
    for worker in [*procs, *threads]:
        worker.start()
    for worker in [*procs, *threads]:
        worker.join(timeout=60)
    assert all(proc.exitcode == 0 for proc in procs)
    # Then the count is exact and every job's record is whole: its int and a start time in range
    assert recording.done() == 8000
    starts = recording.starts()
    assert sorted(starts) == list(range(8000))
    assert all(before <= ts <= time.time() for ts in starts.values())


def test_given_a_coroutine_job_when_awaited_then_it_returns_its_int_and_is_counted(
        recording: record.Recording) -> None:
    assert asyncio.run(record.record_async(7)) == 7
    assert record.record_sync(8) == 8
    assert recording.done() == 2
    assert set(recording.starts()) == {7, 8}


def test_given_a_record_being_written_when_counted_then_only_whole_records_count(
        recording: record.Recording) -> None:
    record.record_sync(1)
    with open(recording.path, "ab") as handle:
        handle.write(b"\x00" * (record.RECORD.size // 2))   # half a record, as a write in progress
    assert recording.done() == 1
    assert recording.starts().keys() == {1}


def test_given_a_reset_when_jobs_run_again_then_only_the_new_runs_count(recording: record.Recording) -> None:
    record.record_sync(1)
    recording.reset()
    # The job's descriptor is open with O_APPEND: its next record lands at the new start
    record.record_sync(2)
    assert recording.done() == 1
    assert recording.starts() == {2: pytest.approx(time.time(), abs=60)}
