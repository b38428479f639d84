"""The rule by which a worker with ``prefetch="auto"`` resizes its buffer after each claim."""

from __future__ import annotations

import pytest

from tqueues import Worker, models
from tqueues.errors import ConfigurationError
from tqueues.worker.worker import AMPLE_CLAIMS


def answer(worker: Worker, *, asked: int, runway: int, got: int, ready: int, running: int) -> None:
    """A claim that asked for ``asked`` jobs with ``runway`` buffered comes back with ``got``
    while ``ready`` are still buffered and ``running`` run."""
    worker._claim_asked, worker._claim_runway = asked, runway
    worker._ready.clear()
    worker._ready.extend([object()] * ready)   # type: ignore[list-item]
    worker._running = set(range(running))     # type: ignore[arg-type]
    worker._adapt_prefetch(got)


async def test_a_claim_answered_after_the_buffer_ran_dry_doubles_the_prefetch_up_to_the_claim_limit() -> None:
    worker = Worker("http://127.0.0.1:1/", "q", concurrency=4, prefetch="auto")
    assert worker.auto_prefetch and worker.prefetch == 4
    # The first full answer (at start, or after the queue ran out) tells nothing yet
    answer(worker, asked=6, runway=0, got=6, ready=0, running=0)
    assert worker.prefetch == 4
    sizes = []
    for _ in range(12):
        answer(worker, asked=worker.prefetch // 2, runway=2, got=worker.prefetch // 2, ready=0, running=3)
        sizes.append(worker.prefetch)
    assert sizes[:4] == [8, 16, 32, 64]
    assert max(sizes) == sizes[-1] == models.MAX_CLAIM - 4   # a full buffer still fits in one claim


async def test_answers_that_say_nothing_about_the_buffer_leave_the_prefetch_alone() -> None:
    worker = Worker("http://127.0.0.1:1/", "q", concurrency=4, prefetch="auto")
    # The first claim: nothing to go by
    answer(worker, asked=8, runway=0, got=8, ready=0, running=0)
    # A short answer: the queue ran out, not the buffer
    answer(worker, asked=4, runway=2, got=3, ready=0, running=0)
    # A full answer after a short one (a burst after an idle spell): not a backlog yet
    answer(worker, asked=8, runway=0, got=8, ready=0, running=0)
    assert worker.prefetch == 4
    # Every slot busy when the answer came: the worker did not wait for it
    answer(worker, asked=4, runway=2, got=4, ready=0, running=4)
    # Nothing buffered when the claim went out, nothing at its answer, every slot busy
    answer(worker, asked=4, runway=0, got=4, ready=0, running=4)
    assert worker.prefetch == 4
    # A backlog, and the answer finds a slot free with nothing buffered: it grows
    answer(worker, asked=4, runway=0, got=4, ready=0, running=3)
    assert worker.prefetch == 8


async def test_a_buffer_that_outlasts_the_claims_is_halved_back_but_never_below_where_it_began() -> None:
    worker = Worker("http://127.0.0.1:1/", "q", concurrency=4, prefetch="auto")
    for _ in range(4):
        answer(worker, asked=2, runway=2, got=2, ready=0, running=1)
    assert worker.prefetch == 32
    for _ in range(AMPLE_CLAIMS - 1):   # more than half the runway still buffered at each answer
        answer(worker, asked=16, runway=16, got=16, ready=9, running=4)
    assert worker.prefetch == 32
    answer(worker, asked=16, runway=16, got=16, ready=9, running=4)
    assert worker.prefetch == 16
    # An answer in between that used most of the runway starts the count again
    for _ in range(AMPLE_CLAIMS - 1):
        answer(worker, asked=8, runway=8, got=8, ready=5, running=4)
    answer(worker, asked=8, runway=8, got=8, ready=2, running=4)
    for _ in range(AMPLE_CLAIMS - 1):
        answer(worker, asked=8, runway=8, got=8, ready=5, running=4)
    assert worker.prefetch == 16
    for _ in range(4 * AMPLE_CLAIMS):
        answer(worker, asked=8, runway=8, got=8, ready=5, running=4)
    assert worker.prefetch == 4


async def test_a_fixed_prefetch_never_changes_and_a_bad_one_is_refused() -> None:
    worker = Worker("http://127.0.0.1:1/", "q", concurrency=4, prefetch=6)
    assert not worker.auto_prefetch
    # run_forever only adapts an automatic prefetch (_take checks auto_prefetch)
    worker._take([])
    assert worker.prefetch == 6
    for bad in (-1, "many"):
        with pytest.raises(ConfigurationError, match="prefetch"):
            Worker("http://127.0.0.1:1/", "q", prefetch=bad)  # type: ignore[arg-type]
