"""The RethinkDB store without a RethinkDB server.

Every query shape the store sends is built with the official driver and checked term by term
(known terms, legal number of arguments, only option names the term accepts), so a typo fails
here and not on a real server. The store's own guarantees (claims, fencing, the event log's
gaps and their recovery, reconnection) run against the in-memory double of
``tests/support/fake_rethinkdb.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator, Iterator

import pytest

pytest.importorskip("rethinkdb")

from rethinkdb import ql2_pb2  # noqa: E402
from rethinkdb.ast import ReQLEncoder  # noqa: E402
from support.fake_rethinkdb import FakeServer, FakeWireServer, check_wire, patch_connect  # noqa: E402

from tqueues import models  # noqa: E402
from tqueues.errors import ConfigurationError, StoreUnavailable  # noqa: E402
from tqueues.store import Outcome, open_store  # noqa: E402
from tqueues.store import rethinkdb as rdb  # noqa: E402

T = ql2_pb2.Term.TermType
URL = "rethinkdb://fake:28015/tqueues_unit"


def wire(query: Any) -> Any:
    """The query as the driver sends it, checked term by term."""
    encoded = json.loads(ReQLEncoder().encode(query))
    check_wire(encoded)
    return encoded


def terms(encoded: Any) -> Iterator[list[Any]]:
    """Every term of a wire query (depth first)."""
    if isinstance(encoded, dict):
        for value in encoded.values():
            yield from terms(value)
    elif isinstance(encoded, list) and encoded:
        yield encoded
        for arg in encoded[1] if len(encoded) > 1 else ():
            yield from terms(arg)
        for value in (encoded[2] if len(encoded) > 2 else {}).values():
            yield from terms(value)


def find(encoded: Any, kind: int) -> list[list[Any]]:
    return [t for t in terms(encoded) if t[0] == kind]


@pytest.fixture
def offline() -> rdb.RethinkDBStore:
    """A store that is never opened: enough to build its queries."""
    return rdb.RethinkDBStore(URL)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with patch_connect(FakeServer()) as fake:
        yield fake


@pytest.fixture
async def store(server: FakeServer) -> AsyncIterator[rdb.RethinkDBStore]:
    s = rdb.RethinkDBStore(URL)
    s.GRACE, s.SWEEP_INTERVAL, s.POLL_INTERVAL = 0.3, 0.05, 0.1
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# --------------------------------------------------------------------------- URLs and keys


def test_a_rethinkdb_url_gives_host_port_database_and_credentials() -> None:
    assert rdb.parse_url("rethinkdb://db.internal/jobs") == {
        "host": "db.internal", "port": 28015, "db": "jobs", "user": "admin", "password": "", "pool_size": None}
    parsed = rdb.parse_url("rethinkdb://tq:p%40ss%3Aw@10.0.0.5:28016/q_1?pool_size=3")
    assert (parsed["user"], parsed["password"], parsed["port"], parsed["db"], parsed["pool_size"]) == (
        "tq", "p@ss:w", 28016, "q_1", 3)
    assert rdb.parse_url("rethinkdb://h")["db"] == "tqueues"
    for bad in ("rethinkdb://h/not-a-name", "rethinkdb://h:port/db", "rethinkdb://h/db?pool=1", "rethinkdb://h/d?pool_size=x"):
        with pytest.raises(ConfigurationError):
            rdb.parse_url(bad)


def test_the_store_is_chosen_by_the_rethinkdb_scheme_and_never_shows_the_password() -> None:
    store = open_store("rethinkdb://tq:hunter2@db.internal:28016/jobs", pool_size=3)
    assert isinstance(store, rdb.RethinkDBStore) and store.pool_size == 3 and store.shared
    assert "hunter2" not in store.display_url


def test_long_caller_chosen_names_get_primary_keys_rethinkdb_accepts() -> None:
    assert rdb.pk("worker-1") == "worker-1"
    long_name = "w" * 300
    assert rdb.pk(long_name) != long_name and len(rdb.pk(long_name).encode()) <= 127
    assert rdb.pk(long_name) == rdb.pk(long_name)
    assert len(rdb.key_id("k" * 256)) <= 127 and rdb.key_id("a") != rdb.key_id("b")


# --------------------------------------------------------------------------- query shapes


def test_every_index_function_builds_and_keeps_null_out_of_compound_keys(offline: rdb.RethinkDBStore) -> None:
    functions = rdb.index_functions()
    assert set(functions) == {"jobs", "events", "logs"}
    assert {"ready", "queue_run_at", "queue_status_id", "queue_id", "status_id", "lease_expires", "finished_at",
            "event_seq"} <= set(functions["jobs"])
    for table, indexes in functions.items():
        for name, function in indexes.items():
            encoded = wire(offline.jobs.index_create(name, function))
            assert encoded[0] == T.INDEX_CREATE
    ready = wire(offline.jobs.index_create("ready", functions["jobs"]["ready"]))
    assert [T.MUL] == [t[0] for t in terms(ready) if t[0] == T.MUL]   # -priority: high priority first


def test_a_claim_walks_the_ready_index_and_leases_with_a_conditional_update(offline: rdb.RethinkDBStore) -> None:
    candidates = wire(offline.candidates_query("q", 100.0, 7))
    [between] = find(candidates, T.BETWEEN)
    assert between[2]["index"] == "ready"
    [order] = find(candidates, T.ORDER_BY)
    assert order[2]["index"] == "ready"
    assert find(candidates, T.LIMIT)[0][1][1] == 7

    claim = wire(offline.claim_query({"a": 5, "b": 6}, "w1", "lease-1", 130.0, 100.0))
    [update] = find(claim, T.UPDATE)
    assert update[2] == {"return_changes": True}
    assert find(update, T.BRANCH), "the lease must be conditional on the document's state"
    assert find(claim, T.GET_ALL)[0][1][1:] == ["a", "b"]


def test_fenced_writes_compare_status_and_lease_inside_the_write(offline: rdb.RethinkDBStore) -> None:
    heartbeat = wire(offline.heartbeat_query({"a": ["L1", "L2"]}, 50.0))
    release = wire(offline.release_query({"a": {"lease": "L1", "seq": 9}}, 10.0))
    plans = wire(offline.plans_query(["a"], {"a": {"status": "started", "lease": "L1", "attempt": 1, "exec": {},
                                                  "set": {"status": "finished", "_seq": 1, "_kind": "job.finished"}}},
                                     ["status", "_seq", "_kind", "_execs"]))
    data = wire(offline.update_data_query("a", {"progress": {"done": 1}}, "L1", 10.0, 3))
    for encoded, write in ((heartbeat, T.UPDATE), (release, T.UPDATE), (plans, T.REPLACE), (data, T.REPLACE)):
        [node] = find(encoded, write)
        assert node[2].get("return_changes") is True
        assert find(node, T.BRANCH) and find(node, T.EQ)
    # nested objects are replaced, never merged into the old ones: without() before merge()
    assert find(plans, T.WITHOUT) and find(data, T.WITHOUT)


def test_reads_build_on_their_indexes(offline: rdb.RethinkDBStore) -> None:
    for args, index in (((None, None, None, 10, None, None), "id"), (("q", None, None, 10, "b", None), "queue_id"),
                        ((None, "pending", None, 10, None, None), "status_id"),
                        (("q", "failed", "m:f", 10, None, "Needle 50%_"), "queue_status_id")):
        encoded = wire(offline.list_jobs_query(*args))
        assert find(encoded, T.BETWEEN)[0][2]["index"] == index
        assert find(encoded, T.ORDER_BY)[0][2]["index"] == [T.DESC, [index]]
    text = wire(offline.list_jobs_query(None, None, None, 5, None, "Needle"))
    assert find(text, T.SPLIT) and find(text, T.DOWNCASE) and not find(text, T.MATCH)
    counts = wire(offline.queue_counts_query(["a", "b"]))
    assert {b[2]["index"] for b in find(counts, T.BETWEEN)} == {"queue_status_id"}
    series = wire(offline.ended_series_query(100.0, 10.0))
    assert find(series, T.BETWEEN)[0][2]["index"] == "finished_at" and find(series, T.FLOOR)


def test_upserts_use_conflict_functions_that_keep_what_is_not_sent(offline: rdb.RethinkDBStore) -> None:
    worker = wire(offline.register_worker_query({"id": "w1", "host": "h"}, 5.0))
    queue = wire(offline.set_queue_query("q", {"paused": True}, 5.0))
    for encoded in (worker, queue):
        [insert] = find(encoded, T.INSERT)
        assert insert[2]["return_changes"] == "always"
        assert insert[2]["conflict"][0] == T.FUNC
        assert len(insert[2]["conflict"][1][0][1]) == 3       # (id, old, new)
    key = wire(offline.take_over_key_query("sha256:x", "old-job", "new-job"))
    assert find(key, T.BRANCH)


def test_documents_of_any_depth_travel_as_json_text() -> None:
    deep: Any = "bottom"
    for _ in range(60):           # the driver alone stops at 20 levels
        deep = {"x": [deep]}
    encoded = wire(rdb.as_json({"args": [deep]}))
    assert encoded[0] == T.JSON and json.loads(encoded[1][0])["args"][0]["x"][0]["x"][0]


async def test_every_query_the_store_sends_is_well_formed(store: rdb.RethinkDBStore, server: FakeServer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a record of every query sent (the double checks each one term by term as it runs it)
    sent: list[Any] = []
    original = rdb.RethinkDBStore._run

    async def record(self: rdb.RethinkDBStore, query: Any, **kwargs: Any) -> Any:
        sent.append(wire(query))
        return await original(self, query, **kwargs)

    monkeypatch.setattr(rdb.RethinkDBStore, "_run", record)

    # When every public method runs
    [(job, _)] = await store.enqueue([models.NewJob(queue="q", method="m:f", key="k1", data={"a": {"b": 1}})])
    await store.enqueue([models.NewJob(queue="q", method="m:f", key="k1")])
    await store.get(job["id"])
    await store.list_jobs(queue="q", status="pending", method="m:f", text="M:F", before=job["id"])
    [leased] = await store.claim(["q"], "w1", 1, 30.0)
    await store.heartbeat([(leased["id"], leased["lease"])], 30.0, worker="w1")
    await store.update_data(leased["id"], {"a": {"c": 2}}, leased["lease"])
    await store.append_logs([{"job_id": leased["id"], "attempt": 1, "stream": "stdout", "line": "hi", "ts": 1.0}])
    await store.logs(leased["id"])
    await store.executions(leased["id"])
    await store.release([(leased["id"], leased["lease"])])
    [leased] = await store.claim(["q"], "w1", 1, 0.01)
    await asyncio.sleep(0.02)
    await store.requeue_expired()
    [leased] = await store.claim(["q"], "w1", 1, 30.0)
    await store.complete([Outcome(leased["id"], leased["lease"], models.FAILED, error={"type": "E", "message": "m"},
                                  retry=False)])
    await store.retry(leased["id"])
    await store.abort(leased["id"])
    await store.next_run_at(["q"])
    await store.register_worker({"id": "w1", "queues": ["q"]})
    await store.workers()
    await store.worker("w1")
    await store.command_worker("w1", "stop")
    await store.set_queue("q", paused=True, strict=True)
    await store.queues()
    await store.stats(60.0, 10.0)
    await store.create_token({"id": "t1", "hash": "h", "scopes": ["read"]})
    await store.token("t1")
    await store.revoke_token("t1")
    await store.tokens()
    await store.events_since(0, queue="q")
    await store.events_since(0, job_id=job["id"])
    await store.last_seq()
    await store.prune(0.0)

    # Then every query was well formed, and the writes are the conditional ones of the design
    kinds = {t[0] for query in sent for t in terms(query)}
    assert {T.UPDATE, T.REPLACE, T.INSERT, T.DELETE, T.BETWEEN, T.ORDER_BY, T.BRANCH, T.GET_ALL} <= kinds
    assert len(sent) > 40


# --------------------------------------------------------------------------- the event log


async def test_an_event_lost_between_the_job_write_and_its_insert_is_recovered_from_the_job(
        store: rdb.RethinkDBStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Given a job, then one whose event insert is lost (the dispatcher died in the window)
    first = (await store.enqueue([models.NewJob(queue="q", method="m:f")]))[0][0]
    before = await store.last_seq()
    real_insert = store._insert_events
    lost = True

    async def drop_once(docs: list[dict[str, Any]]) -> None:
        nonlocal lost
        if lost:
            lost = False
            raise StoreUnavailable("cut off")
        await real_insert(docs)

    monkeypatch.setattr(store, "_insert_events", drop_once)
    caplog.set_level(logging.ERROR, logger="tqueues.store.rethinkdb")
    sub = store.subscribe()
    lost_job = (await store.enqueue([models.NewJob(queue="q", method="m:f", args=[1])]))[0][0]
    # ... and one more change whose event is written after the gap
    third = (await store.enqueue([models.NewJob(queue="q", method="m:f", args=[2])]))[0][0]

    # When read before the sweeper's grace has passed
    # Then readers stop at the gap: nothing after it is shown, nothing is skipped
    assert await store.last_seq() == before
    assert await store.events_since(before) == []

    # When the grace has passed, Then the lost event is rebuilt from its job, in its place
    await asyncio.sleep(store.GRACE + 0.3)
    events = await store.events_since(before)
    assert [(e["seq"], e["kind"], e["job_id"]) for e in events] == [
        (before + 1, models.EV_CREATED, lost_job["id"]), (before + 2, models.EV_CREATED, third["id"])]
    assert events[0]["new_val"] == await store.get(lost_job["id"])
    assert await store.last_seq() == before + 2
    # ... and subscribers receive both, in order
    got: list[dict[str, Any]] = []
    while len(got) < 2:
        got += await asyncio.wait_for(sub.get(), 2.0)
    assert [e["seq"] for e in got] == [before + 1, before + 2]
    assert first["id"] not in {e["job_id"] for e in got}


async def test_recovering_a_seq_twice_changes_nothing(store: rdb.RethinkDBStore) -> None:
    # Given a job whose event exists
    job = (await store.enqueue([models.NewJob(queue="q", method="m:f")]))[0][0]
    seq = await store.last_seq()

    # When the sweeper's recovery runs for that seq, twice
    await store._fill([seq])
    await store._fill([seq])

    # Then the log holds the one event it had
    assert [(e["seq"], e["job_id"]) for e in await store.events_since(0)] == [(seq, job["id"])]


async def test_a_seq_reserved_by_an_operation_that_died_is_voided_after_the_grace(store: rdb.RethinkDBStore) -> None:
    # Given a seq reserved and never written (an operation that died), then a job
    sub = store.subscribe()
    hole = await store._seqs.reserve(1)
    job = (await store.enqueue([models.NewJob(queue="q", method="m:f")]))[0][0]

    # Then the job's event waits behind the hole ...
    assert await store.events_since(hole - 1) == []

    # ... until the sweeper voids the hole; the void itself is never shown
    [event] = await asyncio.wait_for(sub.get(), store.GRACE + 2.0)
    assert (event["seq"], event["job_id"]) == (hole + 1, job["id"])
    assert [e["seq"] for e in await store.events_since(hole - 1)] == [hole + 1]
    assert await store.last_seq() == hole + 1


async def test_an_event_written_after_its_seq_was_voided_takes_a_new_seq(store: rdb.RethinkDBStore) -> None:
    # Given a seq that a sweeper voided while its writer was slow
    seq = await store._seqs.reserve(1)
    await store._run(store.events.insert(rdb.void_doc(seq, models.now())))

    # When the slow writer inserts its event there
    event = rdb.event_doc(seq, models.EV_QUEUE, models.now(), {"name": "q", "paused": True, "strict": False}, "q")
    await store._insert_events([event])

    # Then the event is in the log under a later seq, once
    [stored] = await store.events_since(seq - 1)
    assert stored["seq"] > seq and stored["kind"] == models.EV_QUEUE


async def test_pruning_keeps_the_newest_event_and_readers_skip_the_pruned_range(store: rdb.RethinkDBStore) -> None:
    # Given ten events
    await store.enqueue([models.NewJob(queue="q", method="m:f") for _ in range(10)])
    last = await store.last_seq()
    await asyncio.sleep(0.01)

    # When everything old is pruned
    await store.prune(0.0)

    # Then only the newest is left, the sequence goes on from it, and a new store resumes there
    assert [e["seq"] for e in await store.events_since(0)] == [last]
    job = (await store.enqueue([models.NewJob(queue="q", method="m:f")]))[0][0]
    assert [(e["seq"], e["job_id"]) for e in await store.events_since(last)] == [(last + 1, job["id"])]
    async with rdb.RethinkDBStore(URL) as other:
        assert await other.last_seq() == last + 1
        assert [e["seq"] for e in await other.events_since(0)] == [last, last + 1]


# --------------------------------------------------------------------------- several dispatchers


async def test_two_dispatchers_never_lease_one_job_and_see_each_others_events(server: FakeServer) -> None:
    # Given two stores (two dispatchers) on one database, and 120 jobs
    a, b = rdb.RethinkDBStore(URL), rdb.RethinkDBStore(URL)
    for s in (a, b):
        s.POLL_INTERVAL = 5.0              # live delivery must come from the changefeed
    async with a, b:
        await a.enqueue([models.NewJob(queue="q", method="m:f", args=[i]) for i in range(120)])
        sub = b.subscribe()

        # When both claim concurrently, eight claims of ten each
        results = await asyncio.gather(*(s.claim(["q"], f"w{i}", 10, 30.0) for i in range(8) for s in (a, b)))

        # Then every job was leased once
        ids = [job["id"] for jobs in results for job in jobs]
        assert len(ids) == 120 and len(set(ids)) == 120
        # ... the seqs of both dispatchers form one increasing log without duplicates
        seqs = [e["seq"] for e in await b.events_since(0, limit=10_000)]
        assert seqs == sorted(set(seqs))
        assert await a.last_seq() == await b.last_seq()
        # ... and b's subscriber received a's events live, through the changefeed
        job = (await a.enqueue([models.NewJob(queue="q", method="m:f", args=["live"])]))[0][0]
        got: list[dict[str, Any]] = []
        while not any(e["job_id"] == job["id"] for e in got):
            got += await asyncio.wait_for(sub.get(), 2.0)


async def test_concurrent_enqueues_of_one_key_through_two_dispatchers_create_one_job(server: FakeServer) -> None:
    async with rdb.RethinkDBStore(URL) as a, rdb.RethinkDBStore(URL) as b:
        results = await asyncio.gather(*(s.enqueue([models.NewJob(queue="q", method="m:f", key="once", args=[n])])
                                         for n in range(5) for s in (a, b)))
        flat = [pair for result in results for pair in result]
        assert sum(created for _, created in flat) == 1
        assert len({job["id"] for job, _ in flat}) == 1


async def test_a_key_left_by_a_dispatcher_that_died_before_its_job_is_taken_over(store: rdb.RethinkDBStore) -> None:
    # Given a key document whose job never appeared, older than the grace
    await store._run(store.keys.insert({"id": rdb.key_id("orphan"), "key": "orphan", "job_id": "never",
                                        "at": models.now() - 60}))

    # When the key is enqueued
    [(job, created)] = await store.enqueue([models.NewJob(queue="q", method="m:f", key="orphan")])

    # Then a job is created and the key now names it
    assert created is True
    [(again, created_again)] = await store.enqueue([models.NewJob(queue="q", method="m:f", key="orphan")])
    assert (again["id"], created_again) == (job["id"], False)


# --------------------------------------------------------------------------- an unreachable server


async def test_while_the_server_is_down_calls_fail_fast_with_store_unavailable_then_recover(
        store: rdb.RethinkDBStore, server: FakeServer) -> None:
    # Given a working store
    await store.enqueue([models.NewJob(queue="q", method="m:f")])
    sub = store.subscribe()

    # When the server goes away, Then every call raises StoreUnavailable (the dispatcher's 503)
    server.stop()
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.list_jobs(), 1.0)

    # When it comes back, Then calls work again once the reconnection backoff has passed
    server.start()
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:
        try:
            job = (await store.enqueue([models.NewJob(queue="q", method="m:f", args=["back"])]))[0][0]
            break
        except StoreUnavailable:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    # ... and live events flow again
    got: list[dict[str, Any]] = []
    while not any(e["job_id"] == job["id"] for e in got):
        got += await asyncio.wait_for(sub.get(), 3.0)


async def test_opening_a_store_on_an_unreachable_server_says_which(server: FakeServer) -> None:
    server.stop()
    with pytest.raises(StoreUnavailable) as caught:
        await rdb.RethinkDBStore("rethinkdb://tq:hunter2@db.internal:28016/jobs").open()
    assert "rethinkdb://db.internal:28016/jobs" in caught.value.message and "hunter2" not in caught.value.message


# --------------------------------------------------------------------------- through the official driver


@pytest.fixture
def wire_server() -> Iterator[FakeWireServer]:
    server = FakeWireServer(users={"admin": "", "tq": "s3cret"}).start()
    try:
        yield server
    finally:
        server.stop()


async def test_the_official_driver_carries_the_store_over_the_wire(wire_server: FakeWireServer) -> None:
    # Given a store reaching the double through the driver (handshake with a password, cursors, changefeed)
    url = f"rethinkdb://tq:s3cret@127.0.0.1:{wire_server.port}/tqueues_wire"
    store = rdb.RethinkDBStore(url)
    store.POLL_INTERVAL = 5.0                # live events must come through the changefeed
    async with store:
        sub = store.subscribe()

        # When a job goes through its life
        [(job, _)] = await store.enqueue([models.NewJob(queue="q", method="m:f", args=[1.5, {"deep": [1]}])])
        [leased] = await store.claim(["q"], "w1", 5, 30.0)
        [done] = await store.complete([Outcome(leased["id"], leased["lease"], models.FINISHED, result={"r": 1})])

        # Then it is stored and read back through sequence cursors, and its events arrive live
        assert done["ok"] and await store.get(job["id"]) == done["job"]
        assert [j["id"] for j in await store.list_jobs(queue="q")] == [job["id"]]
        got: list[dict[str, Any]] = []
        while len(got) < 3:
            got += await asyncio.wait_for(sub.get(), 3.0)
        assert [e["kind"] for e in got] == [models.EV_CREATED, models.EV_STARTED, models.EV_FINISHED]
        assert got == await store.events_since(0)


async def test_wrong_credentials_are_named_when_the_store_opens(wire_server: FakeWireServer) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await rdb.RethinkDBStore(f"rethinkdb://tq:wrong@127.0.0.1:{wire_server.port}/tqueues_wire").open()
    assert "refused user 'tq'" in caught.value.message and "wrong" not in caught.value.message.replace("Wrong", "")


async def test_a_server_restart_over_the_wire_answers_unavailable_then_the_store_reconnects(
        wire_server: FakeWireServer) -> None:
    store = rdb.RethinkDBStore(f"{wire_server.url}/tqueues_wire")
    store.POLL_INTERVAL = 5.0
    async with store:
        sub = store.subscribe()
        await store.enqueue([models.NewJob(queue="q", method="m:f")])

        # When the server drops every connection and refuses new ones
        wire_server.down()
        with pytest.raises(StoreUnavailable):
            for _ in range(5):       # the first call may still find a connection the driver has not seen close
                await asyncio.wait_for(store.list_jobs(), 2.0)

        # When it is back, Then calls succeed again and the changefeed resumes
        wire_server.up()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8.0
        while True:
            try:
                job = (await store.enqueue([models.NewJob(queue="q", method="m:f", args=["back"])]))[0][0]
                break
            except StoreUnavailable:
                assert loop.time() < deadline
                await asyncio.sleep(0.1)
        got: list[dict[str, Any]] = []
        while not any(e["job_id"] == job["id"] for e in got):
            got += await asyncio.wait_for(sub.get(), 8.0)
