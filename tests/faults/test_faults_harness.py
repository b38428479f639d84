"""The checker of the fault harness itself: it passes a clean run and catches each kind of
failure it is there to catch (on SQLite; the checker reads through the API, whatever the store)."""

from __future__ import annotations

import time

import aiohttp
import pytest
from faults.harness import FAILED, OK, RECORD, UNKNOWN, Attempt, Ledger, Rig
from support.jobs import append

from tqueues import Client

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_checker_passes_a_clean_run_and_counts_lost_unexpected_and_unexplained_runs(rig: Rig) -> None:
    rig.start_dispatcher()
    rig.worker("check")
    producer = rig.producer()
    specs = [producer.job(f"c{i}", queue="check") for i in range(4)]
    async with aiohttp.ClientSession() as session:
        await producer.enqueue_all(session, specs)

    async def check() -> object:
        return await rig.check("checker self-test", [producer], faults=0, fault_kind="none", publish=False)

    clean = await check()
    assert clean.ok and (clean.jobs, clean.done, clean.lost, clean.duplicates, clean.unexpected) == (4, 4, 0, 0, 0), str(clean)
    first = next(e for e in rig.ledger.entries() if e.tag == "c0")

    # An acknowledged job the dispatcher does not have is lost
    producer.expect["ghost"] = producer.expect["c0"]
    producer.specs["ghost"] = dict(specs[0], key="ghost")
    producer.attempts.append(Attempt("ghost", OK, 201, "0" * 26, time.time()))
    report = await check()
    assert (report.lost, report.unexpected, report.unexplained, report.ok) == (1, 0, 0, False), str(report)

    # A job whose every enqueue was refused, yet exists, is unexpected; after an unknown one it is not
    async with Client(rig.url) as client:
        for key, outcome in (("refused", FAILED), ("maybe", UNKNOWN)):
            producer.job(key, queue="check")
            producer.attempts.append(Attempt(key, outcome, 0, None, time.time()))
            await client.enqueue(RECORD, str(rig.ledger), key, queue="check", key=key)
    report = await check()
    assert (report.lost, report.unexpected, report.unexplained) == (1, 1, 0), str(report)

    # A ledger run of a job nobody enqueued is unexpected
    append(str(rig.ledger), f"run 0123456789ABCDEFGHJKMNPQRS 1 - 1 {time.time()} {time.time()} stranger")
    report = await check()
    assert (report.lost, report.unexpected, report.unexplained) == (1, 2, 0), str(report)

    # The same attempt run twice is a duplicate no recorded retry explains
    append(str(rig.ledger), f"run {first.job} {first.attempt} {first.lease} 1 {time.time()} {time.time()} c0")
    report = await check()
    assert (report.duplicates, report.unexplained) == (1, 1), str(report)
    assert any("attempt 1 ran 2 times" in p for p in report.problems)

    # So is a run of an attempt the dispatcher never recorded, after a finished one
    append(str(rig.ledger), f"run {first.job} 2 - 1 {time.time()} {time.time()} c0")
    report = await check()
    assert (report.duplicates, report.unexplained) == (2, 2), str(report)
    assert any("attempt 2 ran but no execution" in p for p in report.problems)
    assert any("recorded 'finished', not lost or failed" in p for p in report.problems)


def test_a_ledger_line_still_being_written_is_left_for_the_next_read_until_the_ledger_is_settled(tmp_path) -> None:
    # what a reader may see of a write that crosses a page boundary: the part before it
    path = tmp_path / "ledger"
    whole = "run j1 1 lease 42 1.000000 2.000000 k1"
    path.write_text(whole + "\n" + whole[:17])
    ledger = Ledger(path)
    assert [e.job for e in ledger.entries()] == ["j1"]
    assert ledger.count("run") == 1
    with pytest.raises(AssertionError, match="torn or malformed ledger line: 'run j1 1 lease 42'"):
        ledger.entries(settled=True)
    with path.open("a") as f:
        f.write(whole[17:] + "\n")
    assert ledger.count("run") == 2 and len(ledger.entries(settled=True)) == 2
    path.write_text(whole[:17] + "\n" + whole + "\n")   # a torn line followed by others is torn whoever reads
    with pytest.raises(AssertionError, match="torn or malformed"):
        ledger.entries()
