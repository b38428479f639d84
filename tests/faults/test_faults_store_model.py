"""A model-based test of the store contract: hypothesis drives enqueue, claim, heartbeat,
complete, fail, release, abort and lease expiry in any order, and checks the store against a
model of what each job should be after every step.

Invariants: each job is in exactly the state the model says; attempts never decrease; a job
that ended is never claimed again; only lease expiry (or release, retry) brings a started job
back to pending; a stale lease changes nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from faults.harness import Size
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tqueues import models
from tqueues.store import Outcome, open_store

pytestmark = pytest.mark.faults

SHORT, LONG = 0.02, 60.0


class StoreModel(RuleBasedStateMachine):
    url = ""   # the database of this run; each example works in a queue of its own

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.queue = f"m{uuid.uuid4().hex[:12]}"
        self.store = open_store(self.url)
        self.run(self.store.open())
        self.jobs: dict[str, dict[str, Any]] = {}      # id -> {status, attempts, max, lease, short}
        self.stale: list[tuple[str, str]] = []          # leases that no longer hold

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    def started(self) -> list[str]:
        return [i for i, j in self.jobs.items() if j["status"] == models.STARTED]

    def end_lease(self, job_id: str) -> None:
        job = self.jobs[job_id]
        if job["lease"] is not None:
            self.stale.append((job_id, job["lease"]))
        job["lease"] = None

    # ------------------------------------------------------------------ rules

    @rule(count=st.integers(1, 4), max_attempts=st.integers(1, 3))
    def enqueue(self, count: int, max_attempts: int) -> None:
        specs = [models.NewJob(queue=self.queue, method="m:f", max_attempts=max_attempts, backoff=0.0) for _ in range(count)]
        for job, created in self.run(self.store.enqueue(specs)):
            assert created and job["status"] == models.PENDING
            self.jobs[job["id"]] = {"status": models.PENDING, "attempts": 0, "max": max_attempts, "lease": None, "short": False}

    @rule(limit=st.integers(1, 5), short=st.booleans())
    def claim(self, limit: int, short: bool) -> None:
        claimed = self.run(self.store.claim([self.queue], "w", limit, SHORT if short else LONG))
        ready = [i for i, j in self.jobs.items() if j["status"] == models.PENDING]
        assert len(claimed) == min(limit, len(ready))
        for job in claimed:
            model = self.jobs[job["id"]]
            assert model["status"] == models.PENDING, "a job that was not pending was claimed"
            assert job["attempts"] == model["attempts"] + 1
            model.update(status=models.STARTED, attempts=job["attempts"], lease=job["lease"], short=short)

    @precondition(lambda self: bool(self.started()))
    @rule(data=st.data(), finished=st.booleans(), retry=st.booleans())
    def complete(self, data: st.DataObject, finished: bool, retry: bool) -> None:
        job_id = data.draw(st.sampled_from(self.started()))
        model = self.jobs[job_id]
        outcome = Outcome(job_id, model["lease"], models.FINISHED if finished else models.FAILED,
                          error=None if finished else models.error_doc("E", "e"), retry=retry)
        (result,) = self.run(self.store.complete([outcome]))
        assert result["ok"], result   # a lease past its time still holds until requeue_expired runs
        self.end_lease(job_id)
        if finished:
            model["status"] = models.FINISHED
        elif retry and model["attempts"] < model["max"]:
            model["status"] = models.PENDING
        else:
            model["status"] = models.FAILED

    @precondition(lambda self: bool(self.stale))
    @rule(data=st.data(), action=st.sampled_from(["complete", "heartbeat", "release"]))
    def stale_lease_changes_nothing(self, data: st.DataObject, action: str) -> None:
        job_id, lease = data.draw(st.sampled_from(self.stale))
        if action == "complete":
            (result,) = self.run(self.store.complete([Outcome(job_id, lease, models.FINISHED)]))
        elif action == "heartbeat":
            (result,) = self.run(self.store.heartbeat([(job_id, lease)], LONG))
        else:
            (result,) = self.run(self.store.release([(job_id, lease)]))
        assert not result["ok"] and result["error"]["code"] == "stale_lease"

    @precondition(lambda self: bool(self.started()))
    @rule(data=st.data())
    def heartbeat(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.started()))
        (result,) = self.run(self.store.heartbeat([(job_id, self.jobs[job_id]["lease"])], LONG))
        assert result["ok"]
        self.jobs[job_id]["short"] = False

    @precondition(lambda self: bool(self.started()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(self.started()))
        (result,) = self.run(self.store.release([(job_id, self.jobs[job_id]["lease"])]))
        assert result["ok"]
        self.end_lease(job_id)
        self.jobs[job_id].update(status=models.PENDING, attempts=self.jobs[job_id]["attempts"] - 1)

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.jobs)))
        model = self.jobs[job_id]
        if model["status"] in models.TERMINAL:
            with pytest.raises(Exception):
                self.run(self.store.abort(job_id))
            return
        assert self.run(self.store.abort(job_id))["status"] == models.ABORTED
        self.end_lease(job_id)
        model["status"] = models.ABORTED

    @rule()
    def expire(self) -> None:
        time.sleep(SHORT * 2)
        self.run(self.store.requeue_expired())
        for job_id in self.started():
            model = self.jobs[job_id]
            if model["short"]:
                self.end_lease(job_id)
                model["status"] = models.PENDING if model["attempts"] < model["max"] else models.FAILED

    # ------------------------------------------------------------------ invariants

    @invariant()
    def the_store_matches_the_model(self) -> None:
        for job_id, model in self.jobs.items():
            job = self.run(self.store.get(job_id))
            assert job["status"] == model["status"], (job_id, job["status"], model)
            assert job["attempts"] == model["attempts"], (job_id, job["attempts"], model)
            assert (job["lease"] is not None) == (model["status"] == models.STARTED)


def test_the_store_follows_its_model(db_url: str, size: Size) -> None:
    machine = type("BoundStoreModel", (StoreModel,), {"url": db_url})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=size(30, 300), stateful_step_count=size(25, 50), deadline=None, derandomize=not size.soak,
        suppress_health_check=list(HealthCheck)))
