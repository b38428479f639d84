"""Validation of job specs and the backoff rule."""

from __future__ import annotations

import os

import pytest

from tqueues import models
from tqueues.errors import InvalidRequest


def test_given_a_minimal_job_when_parsed_then_defaults_apply() -> None:
    job = models.NewJob.from_json({"queue": "q", "method": "pkg.mod:fn"})
    assert (job.args, job.kwargs, job.priority, job.max_attempts, job.timeout) == ([], {}, 0, 3, None)


@pytest.mark.parametrize("body, field", [
    ({"method": "m:f"}, "queue"),
    ({"queue": "bad queue!", "method": "m:f"}, "queue"),
    ({"queue": "q"}, "method"),
    ({"queue": "q", "method": "not a method"}, "method"),
    ({"queue": "q", "method": "m:f", "args": {"a": 1}}, "args"),
    ({"queue": "q", "method": "m:f", "kwargs": [1]}, "kwargs"),
    ({"queue": "q", "method": "m:f", "priority": "high"}, "priority"),
    ({"queue": "q", "method": "m:f", "priority": True}, "priority"),
    ({"queue": "q", "method": "m:f", "max_attempts": 0}, "max_attempts"),
    ({"queue": "q", "method": "m:f", "timeout": -1}, "timeout"),
    ({"queue": "q", "method": "m:f", "delay": "soon"}, "delay"),
    ({"queue": "q", "method": "m:f", "run_at": "yesterday"}, "run_at"),
    ({"queue": "q", "method": "m:f", "key": ""}, "key"),
    ({"queue": "q", "method": "m:f", "colour": "red"}, "colour"),
    ({"queue": "q", "method": "m:f", "kwargs": {"tq_parent_job": 1}}, "kwargs"),
    ({"queue": "q", "method": "m:f", "args": None}, "args"),
    ({"queue": "q", "method": "m:f", "args": "1, 2"}, "args"),
    ({"queue": "q", "method": "m:f", "kwargs": {1: "a"}}, "kwargs"),
    ({"queue": "q", "method": "m:f", "kwargs": "a=1"}, "kwargs"),
    ({"queue": "q", "method": "m:f", "data": [1]}, "data"),
    ({"queue": "q", "method": "m:f", "secrets": "token"}, "secrets"),
    ({"queue": "q", "method": "m:f", "run_at": 1, "delay": 1}, "delay"),
    ({"queue": 7, "method": "m:f"}, "queue"),
    ({"queue": "q", "method": None}, "method"),
])
def test_given_a_bad_field_when_parsed_then_the_error_names_it(body: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        models.NewJob.from_json(body)
    assert caught.value.details.get("field") == field


def test_given_other_shapes_of_a_job_then_they_parse_as_the_json_object_would() -> None:
    # A tuple of arguments, null kwargs, and any mapping (not only a dict) are accepted.
    from collections import OrderedDict
    job = models.NewJob.from_json(OrderedDict(queue="q", method="m:f", args=(1, 2), kwargs=None))
    assert (job.queue, job.method, job.args, job.kwargs) == ("q", "m:f", [1, 2], {})
    job = models.NewJob.from_json({"method": "m:f", "kwargs": {"a": 1}, "priority": None, "data": {"d": 1},
                                   "secrets": ["a", "a"]}, default_queue="dq")
    assert (job.queue, job.kwargs, job.priority, job.data, job.secrets) == ("dq", {"a": 1}, 0, {"d": 1}, ["a"])
    with pytest.raises(InvalidRequest, match="a job must be a JSON object"):
        models.NewJob.from_json([("queue", "q")])
    # Jobs parsed alike never share their default containers.
    first, second = models.parse_jobs([{"queue": "q", "method": "m:f"}, {"queue": "q", "method": "m:f"}])[0]
    assert first.args is not second.args and first.kwargs is not second.kwargs and first.data is not second.data


def test_given_a_batch_with_one_bad_job_then_the_error_names_its_index() -> None:
    with pytest.raises(InvalidRequest, match=r"jobs\[1\]"):
        models.parse_jobs([{"queue": "q", "method": "m:f"}, {"queue": "q"}])


def test_given_an_iso_run_at_then_it_becomes_epoch_seconds() -> None:
    job = models.NewJob.from_json({"queue": "q", "method": "m:f", "run_at": "2030-01-01T00:00:00Z"})
    assert job.run_at == 1893456000.0


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    assert models.backoff_delay(1.0, 1, 0.5) == 1.0
    assert models.backoff_delay(1.0, 3, 0.5) == 4.0
    assert models.backoff_delay(1.0, 3, 0.0) == 2.0
    assert models.backoff_delay(1.0, 60, 0.99) == models.MAX_BACKOFF
    assert models.backoff_delay(0.0, 5, 0.5) == 0.0


@pytest.mark.parametrize("bad", [["q"], {"q": 1}, 7, None, "", "bad queue", "-x"])
def test_queue_names_are_checked_every_time_whatever_was_accepted_before(bad: object) -> None:
    assert models.check_queue("q") == "q" and models.check_queue("q") == "q"   # remembered
    for _ in range(2):   # unhashable or invalid names are never taken from what was remembered
        with pytest.raises(InvalidRequest):
            models.check_queue(bad)


@pytest.mark.parametrize("bad", [["m:f"], {"m": 1}, 7, None, "", "not a method", "m:"])
def test_method_names_are_checked_every_time_whatever_was_accepted_before(bad: object) -> None:
    assert models.check_method("m:f") == "m:f" and models.check_method("m:f") == "m:f"
    for _ in range(2):
        with pytest.raises(InvalidRequest):
            models.check_method(bad)


def test_job_ids_are_unique_time_ordered_hex_and_not_shared_with_a_forked_child() -> None:
    ids = [models.new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # A child forked with random bytes left in the parent's buffer draws fresh ones
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        os.write(write, models.new_id()[16:].encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_tail = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child_tail != models.new_id()[16:]


def test_job_ids_drawn_many_at_once_are_unique_ordered_and_follow_single_ones() -> None:
    before = models.new_id()
    batches = [models.new_ids(n) for n in (1, 5, 1000, 3)]
    after = models.new_id()
    ids = [before, *[i for batch in batches for i in batch], after]
    assert [len(batch) for batch in batches] == [1, 5, 1000, 3]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # A batch larger than the buffer of random bytes still gets 64 fresh bits per id.
    big = models.new_ids(models.RANDOM_CHUNK)
    assert len({i[16:] for i in big}) == len(big)
