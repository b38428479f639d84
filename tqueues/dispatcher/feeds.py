"""Live delivery inside the dispatcher: one subscription to the store fans events out to
long-polling claims, jobs being waited on, and websocket feeds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, Iterator

from aiohttp import WSCloseCode, web

from .. import models
from ..errors import NotFound
from ..store import Store

log = logging.getLogger("tqueues.dispatcher.feeds")


class Waiter:
    """A future woken by the hub; created before the check it guards, so no wake-up is lost.

    A parked claim (see views.claim_wait) also carries how to claim for it (``claim(n)``, for
    up to ``limit`` jobs, for the client of ``request``): an enqueue may then *adopt* it, run
    that claim for the ``take`` new jobs it is handed in the same write as those jobs, and hand
    the claimed jobs over through ``handoff``.
    """

    __slots__ = ("future", "keys", "hub", "_table", "claim", "limit", "take", "request", "parked", "handoff",
                 "claimant", "_sleeper")

    def __init__(self, hub: "Hub", table: dict[str, dict["Waiter", None]], keys: Iterable[str]) -> None:
        self.hub = hub
        self.keys = list(keys)
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.claim: Callable[[int], Awaitable[list[dict[str, Any]]]] | None = None
        # For Store.enqueue_and_claim: the claim's queues, worker, lease seconds and lease prefix.
        self.claimant: tuple[list[str], str, float, str] | None = None
        self.limit = 0
        self.take = 0           # once adopted: how many of the new jobs its claim is for
        self.request: web.Request | None = None
        self.parked = False     # between its empty claim and the wake-up: free to be adopted
        self.handoff: asyncio.Future[list[dict[str, Any]] | None] | None = None
        self._sleeper: asyncio.Future[bool] | None = None   # what wait() is awaiting now
        for key in self.keys:   # in order of arrival: the longest waiting is woken first
            table.setdefault(key, {})[self] = None
        self._table = table

    async def wait(self, timeout: float) -> bool:
        """True when woken, False on timeout. A wake-up resumes the waiting task at the next
        turn of the loop (``wait_for`` over ``shield`` took three: a parked worker's claim
        answered after the producer it was adopted by)."""
        if self.future.done():
            return True
        loop = asyncio.get_running_loop()
        sleeper = self._sleeper = loop.create_future()
        timer = loop.call_later(timeout, _resolve, sleeper, False)
        try:
            return await sleeper
        finally:
            timer.cancel()
            self._sleeper = None

    @property
    def woken(self) -> bool:
        return self.future.done()

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)
        if self._sleeper is not None:
            _resolve(self._sleeper, True)

    def cancel(self) -> None:
        for key in self.keys:
            waiters = self._table.get(key)
            if waiters is not None:
                waiters.pop(self, None)
                if not waiters:
                    del self._table[key]

    def __enter__(self) -> "Waiter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _resolve(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class Feed:
    """One websocket (or HTTP) subscriber: filters and a bounded buffer."""

    def __init__(self, *, queue: str | None = None, job_id: str | None = None,
                 kinds: set[str] | None = None, limit: int = 10_000, queues: frozenset[str] | None = None) -> None:
        # One queue can be filtered by the store; several are filtered here.
        self.queues = queues if queues is not None else (frozenset({queue}) if queue else None)
        self.queue = next(iter(self.queues)) if self.queues and len(self.queues) == 1 else None
        self.job_id = job_id
        self.kinds = kinds
        self.limit = limit
        self.items: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.overflowed = False
        self.last_seq = 0

    def matches(self, event: dict[str, Any]) -> bool:
        return ((self.queues is None or event["queue"] in self.queues)
                and (self.job_id is None or event["job_id"] == self.job_id)
                and (self.kinds is None or event["kind"] in self.kinds))

    def push(self, event: dict[str, Any]) -> None:
        if self.overflowed or event["seq"] <= self.last_seq or not self.matches(event):
            return
        if len(self.items) >= self.limit:
            self.overflowed = True
            self.items.clear()
        else:
            self.items.append(event)
            self.last_seq = event["seq"]
        self.ready.set()

    async def next_batch(self, timeout: float) -> list[dict[str, Any]]:
        if not self.items and not self.overflowed:
            self.ready.clear()
            try:
                await asyncio.wait_for(self.ready.wait(), timeout)
            except asyncio.TimeoutError:
                return []
        items, self.items = self.items, []
        return items


class FeedSet:
    """The hub's subscribers, also filed by the event kinds they want: an event is offered
    only to the feeds that want its kind (every worker's abort feed wants job.aborted alone,
    and need not see the other events of every job)."""

    def __init__(self) -> None:
        self._all: set[Feed] = set()
        self._by_kind: dict[str | None, set[Feed]] = {}   # None: every kind

    def add(self, feed: Feed) -> None:
        self._all.add(feed)
        for kind in feed.kinds if feed.kinds is not None else (None,):
            self._by_kind.setdefault(kind, set()).add(feed)

    def discard(self, feed: Feed) -> None:
        if feed not in self._all:
            return
        self._all.discard(feed)
        for kind in feed.kinds if feed.kinds is not None else (None,):
            feeds = self._by_kind.get(kind)
            if feeds is not None:
                feeds.discard(feed)
                if not feeds:
                    del self._by_kind[kind]

    def wanting(self, kind: str) -> Iterable[Feed]:
        """The feeds to offer an event of ``kind`` (not to be changed while iterating)."""
        every, this = self._by_kind.get(None), self._by_kind.get(kind)
        if this is None:
            return every or ()
        return itertools.chain(every, this) if every else this

    def __iter__(self) -> Iterator[Feed]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __contains__(self, feed: object) -> bool:
        return feed in self._all


class Hub:
    """Reads the store's event subscription and wakes whoever waits on it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.queue_waiters: dict[str, dict[Waiter, None]] = {}
        self.job_waiters: dict[str, dict[Waiter, None]] = {}
        self.feeds = FeedSet()
        self.events_seen = 0
        self.observers: list[Callable[[dict[str, Any]], None]] = []   # see every event (queue settings)
        self.sockets: set[web.WebSocketResponse] = set()
        self.serving: set[asyncio.Task[None]] = set()   # claims run for parked waiters (views.enqueue_jobs)
        self.closing = False
        # Live events as sent, by (seq, documents only): one event fanned out to a thousand
        # websockets is made public and serialised once, not a thousand times.
        self.encoded: dict[tuple[int, bool], str] = {}

    def encode(self, event: dict[str, Any], documents_only: bool) -> str:
        key = (event["seq"], documents_only)
        text = self.encoded.get(key)
        if text is None:
            if len(self.encoded) >= ENCODED_CACHE:
                self.encoded.clear()
            text = self.encoded[key] = _encode(event, documents_only)
        return text

    async def shutdown(self) -> None:
        """At shutdown: long polls answer now (empty) and websockets close with 1001 "going
        away", so the dispatcher exits at once instead of waiting out every open connection;
        a client reconnects to another dispatcher, or to this one restarted, with since=."""
        self.closing = True
        self.wake_all()

        async def close(ws: web.WebSocketResponse) -> None:
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"dispatcher shutting down")

        closing = [asyncio.ensure_future(close(ws)) for ws in list(self.sockets)]
        if closing:
            await asyncio.wait(closing, timeout=2.0)   # a client that does not answer is not waited for
        for feed in list(self.feeds):
            feed.ready.set()

    def wait_queues(self, queues: Iterable[str]) -> Waiter:
        return Waiter(self, self.queue_waiters, queues)

    def wait_job(self, job_id: str) -> Waiter:
        return Waiter(self, self.job_waiters, [job_id])

    def wake_all(self) -> None:
        for table in (self.queue_waiters, self.job_waiters):
            for waiters in list(table.values()):
                for waiter in list(waiters):
                    waiter.wake()

    def wake_queue(self, queue: str, count: int, exclude: Waiter | None = None) -> None:
        """Wake ``count`` claims waiting on ``queue`` that are not awake yet, longest waiting
        first. One claim takes many jobs, and whoever is woken and cannot claim passes the
        wake on (see views.claim_wait), so one new job wakes one claim, not every worker."""
        for waiter in list(self.queue_waiters.get(queue, ())):
            if count <= 0:
                return
            if waiter is not exclude and not waiter.woken:
                waiter.wake()
                count -= 1

    def wake_queues(self, queues: Iterable[str], count: int, exclude: Waiter | None = None) -> None:
        for queue in queues:
            self.wake_queue(queue, count, exclude)

    def adopt(self, ready: dict[str, int]) -> list[Waiter]:
        """Parked claims to serve from an enqueue of ``ready[queue]`` jobs due now, longest
        waiting first, as many per queue as the new jobs can fill. Each is woken and given a
        ``handoff`` future, which its claim's outcome resolves (see views.enqueue_jobs), and
        its ``take``: its share of the new jobs, which is all its claim asks for (the queue had
        nothing ready when it parked), so that the claim stays as small as the enqueue."""
        adopted: list[Waiter] = []
        for queue, count in ready.items():
            for waiter in list(self.queue_waiters.get(queue, ())):
                if count <= 0:
                    break
                if (not waiter.parked or waiter.woken or waiter.claim is None or waiter.handoff is not None
                        or (waiter.request is not None and client_gone(waiter.request))):
                    continue
                waiter.handoff = asyncio.get_running_loop().create_future()
                waiter.take = min(count, waiter.limit)
                waiter.wake()
                adopted.append(waiter)
                count -= waiter.take
        return adopted

    def dispatch(self, events: list[dict[str, Any]]) -> None:
        self.events_seen += len(events)
        ready: dict[str, int] = {}
        taken: set[int] | None = None   # worked out at the first event that made a job ready
        job_waiters = self.job_waiters
        targets: dict[str, tuple[Feed, ...]] | None = {} if len(self.feeds) else None   # per kind, this batch
        for index, event in enumerate(events):
            kind = event["kind"]
            if kind in models.READY_KINDS:
                if taken is None:
                    taken = _taken_later(events)
                if index not in taken:
                    queue = event["queue"]
                    ready[queue] = ready.get(queue, 0) + 1
            elif kind == models.EV_QUEUE:   # resumed, or changed: every claim looks again
                ready[event["queue"]] = len(self.queue_waiters.get(event["queue"], ()))
            if job_waiters:
                job_id = event["job_id"]
                if job_id is not None and job_id in job_waiters:
                    for waiter in list(job_waiters[job_id]):
                        waiter.wake()
            if targets is not None:
                feeds = targets.get(kind)
                if feeds is None:
                    feeds = targets[kind] = tuple(self.feeds.wanting(kind))
                for feed in feeds:
                    feed.push(event)
            if kind == models.EV_QUEUE:
                for observe in self.observers:
                    observe(event)
        for queue, count in ready.items():
            self.wake_queue(queue, count)

    async def run(self) -> None:
        """Consume the store's subscription forever (cancelled at shutdown)."""
        while True:
            sub = self.store.subscribe()
            try:
                while True:
                    events = await sub.get()
                    if sub.overflowed:
                        log.warning("event subscription overflowed; waking every waiter")
                        self.wake_all()
                        for feed in self.feeds:
                            feed.overflowed = True
                            feed.ready.set()
                        break
                    self.dispatch(events)
            finally:
                sub.close()


def _taken_later(events: list[dict[str, Any]]) -> set[int]:
    """Positions of the events that made a job ready which a later event of the same batch
    shows started (a claim handed the job over in the same write): nobody needs waking for
    those."""
    taken: set[int] = set()
    started: set[str] = set()
    for index in range(len(events) - 1, -1, -1):
        event = events[index]
        kind = event["kind"]
        if kind == models.EV_STARTED:
            started.add(event["job_id"])
        elif kind in models.READY_KINDS and event["job_id"] in started:
            started.discard(event["job_id"])
            taken.add(index)
    return taken


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


INITIAL = "job.initial"
ENCODED_CACHE = 4096       # live events kept serialised; a subscriber further behind re-encodes
INITIAL_LIMIT = 1000


async def snapshot(store: Any, feed: Feed) -> list[dict[str, Any]]:
    """The current documents a new subscriber starts from: the job it follows, or the
    pending and started jobs of its queue (at most INITIAL_LIMIT of each)."""
    if feed.job_id is not None:
        try:
            return [await store.get(feed.job_id)]
        except NotFound:
            return []
    jobs: list[dict[str, Any]] = []
    for queue in sorted(feed.queues) if feed.queues else [None]:
        for status in (models.STARTED, models.PENDING):
            jobs.extend(await store.list_jobs(queue=queue, status=status, limit=INITIAL_LIMIT))
    return jobs


async def run_feed(request: web.Request, hub: Hub, feed: Feed, since: int | None,
                   documents_only: bool, heartbeat: float = 20.0, initial: bool = False) -> web.WebSocketResponse:
    """Serve one websocket: the current documents first when ``initial`` (as RethinkDB's
    ``include_initial``), a replay from ``since`` (no gap, no duplicate), then live events."""
    ws = web.WebSocketResponse(heartbeat=heartbeat, max_msg_size=64 * 1024)
    await ws.prepare(request)
    hub.feeds.add(feed)
    hub.sockets.add(ws)
    reader = asyncio.ensure_future(_drain_incoming(ws))
    reader.add_done_callback(lambda _: feed.ready.set())   # a closed client ends the loop now, not at its next poll
    try:
        if initial:
            # The snapshot is read after the cursor: changes made meanwhile are replayed after it.
            if since is None:
                since = await hub.store.last_seq()
            for doc in await snapshot(hub.store, feed):
                await _send(ws, {"seq": since, "ts": models.now(), "kind": INITIAL, "queue": doc["queue"],
                                 "job_id": doc["id"], "new_val": doc}, documents_only)
        if since is not None:
            # Replay stored events; live events buffered meanwhile are deduplicated by seq below.
            # (Not against feed.last_seq: a live event pushed during the replay raises it and
            # would hide every older stored event.)
            cursor = since
            while True:
                backlog = await hub.store.events_since(cursor, 1000, queue=feed.queue, job_id=feed.job_id)
                for event in backlog:
                    cursor = event["seq"]
                    if feed.matches(event):
                        await _send(ws, event, documents_only)
                if len(backlog) < 1000:
                    break
            feed.items = [e for e in feed.items if e["seq"] > cursor]
            feed.last_seq = max(feed.last_seq, cursor)
        while not ws.closed and not reader.done() and not hub.closing:
            batch = await feed.next_batch(1.0)
            if feed.overflowed:
                await ws.close(code=1013, message=b"subscriber too slow: event buffer overflowed; resume with since=LAST_SEQ")
                break
            for event in batch:
                await ws.send_str(hub.encode(event, documents_only))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.feeds.discard(feed)
        hub.sockets.discard(ws)
        reader.cancel()
        if not ws.closed and not hub.closing:
            await ws.close()
    return ws


def _encode(event: dict[str, Any], documents_only: bool) -> str:
    event = models.public_event(event)
    return models.dumps_str(event["new_val"] if documents_only else event)


async def _send(ws: web.WebSocketResponse, event: dict[str, Any], documents_only: bool) -> None:
    await ws.send_str(_encode(event, documents_only))


async def _drain_incoming(ws: web.WebSocketResponse) -> None:
    async for _message in ws:
        pass


def monotonic() -> float:
    return time.monotonic()
