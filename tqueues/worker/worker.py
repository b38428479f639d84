"""``Worker``: claims jobs from a dispatcher and runs them with bounded concurrency.

The worker never touches the database. It long-polls ``/api/v1/claim`` for as many jobs as
it has free slots, runs them (coroutines on the loop, plain functions in child processes),
sends heartbeats for every lease it holds, and reports outcomes in batches. A heartbeat
answered ``stale_lease`` (the job was aborted or re-leased) stops that job at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import resource
import socket
from typing import Any, Callable, Iterable

from .. import __version__, models
from ..errors import ClientError, ConfigurationError
from ..wire import Wire
from .job import Job
from .registry import Registry
from .runner import ProcessPool

log = logging.getLogger("tqueues.worker")

ISOLATIONS = ("process", "thread")
AUTO = "auto"               # prefetch sized by the worker itself (see Worker._adapt_prefetch)
AMPLE_CLAIMS = 8            # answers in a row with the buffer far from empty before an automatic prefetch halves
LOG_BATCH = 500             # captured lines sent in one request
LOG_INTERVAL = 0.2          # seconds between sends of captured lines while jobs print
MAX_LOG_BACKLOG = 100_000   # lines kept while the dispatcher is unreachable; newer ones are dropped
BACKGROUND_STOP = 5.0       # seconds close() waits for the background loops to end once cancelled
STOPPING_REQUEST = 5.0      # seconds a request made while stopping may take
STOPPING_GIVE_UP = 6.0      # seconds, while stopping, an unreachable dispatcher is tried in all
LAST_WORD = 0.5             # seconds each request may take once that time is spent


class Worker:
    """An async iterator of :class:`Job` s claimed from ``queues``; ``run_forever()`` runs them."""

    def __init__(self, endpoint_url: str, queues: Iterable[str] | str, *, registry: Registry | None = None,
                 functions: Iterable[Callable[..., Any]] = (), modules: Iterable[str] = (),
                 concurrency: int = 1, wait: float = 30.0, isolation: str = "process", grace: float = 30.0,
                 timeout: float | None = None, worker_id: str | None = None, token: str | None = None,
                 stop_grace: float = 3.0, cafile: str | None = None, prefetch: int | str | None = None) -> None:
        self.queues = [queues] if isinstance(queues, str) else list(queues)
        for queue in self.queues:
            models.check_queue(queue)
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue")
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if prefetch is not None and prefetch != AUTO and (not isinstance(prefetch, int) or prefetch < 0):
            raise ConfigurationError(f"prefetch must be 0 or more, or {AUTO!r}")
        if isolation not in ISOLATIONS:
            raise ConfigurationError(f"isolation must be one of {', '.join(ISOLATIONS)}")
        self.registry = registry or Registry()
        for fn in functions:
            self.registry.add(fn)
        for module in modules:
            self.registry.add_module(module)
        # The worker's own requests and abort feed go through a lean client of its own (see
        # tqueues.wire); ``client`` is a full tqueues.Client for job code, made on first use.
        self.wire = Wire(endpoint_url, token=token, timeout=30.0, cafile=cafile)
        self._client_args = (endpoint_url, token, cafile)
        self._client: Any = None
        self.concurrency = concurrency
        # Jobs leased ahead of free slots, so that the next claim overlaps with running jobs
        # instead of following them; 0 claims only for free slots (fairest for long jobs).
        # AUTO: as many as concurrency to begin with, doubled whenever the buffer ran dry while
        # a claim was on its way, halved back (never below concurrency) once it lasts well
        # beyond the claims (see _adapt_prefetch).
        self.auto_prefetch = prefetch == AUTO
        self.prefetch: int = concurrency if prefetch is None or prefetch == AUTO else int(prefetch)
        self._claim_asked = 0      # jobs the claim on its way asked for
        self._claim_runway = 0     # buffered jobs, not yet started, when it was sent
        self._ample_claims = 0     # full claims in a row answered with much of the runway left
        self._backlog = False      # the last claim's answer was full
        self.wait = wait
        self.isolation = isolation
        self.grace = grace
        self.stop_grace = stop_grace      # a stopped job's time to clean up before it is killed
        self.default_timeout = timeout
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.lease_seconds = 30.0
        self.jobs_done = 0
        self.jobs_failed = 0
        self._held: dict[str, Job] = {}          # every lease we hold, until reported or lost
        self._buffer: list[dict[str, Any]] = []  # claimed, not yet handed out (the iterator)
        self._ready: collections.deque[Job] = collections.deque()  # prefetched by run_forever
        self._outcomes: list[tuple[Job, dict[str, Any]]] = []
        self._logs: list[dict[str, Any]] = []
        self._logs_dropped = 0
        self._outcome_ready = asyncio.Event()
        self._running: set[Job] = set()          # started by run_forever, outcome not yet known
        self._idle: asyncio.Future[None] | None = None   # set when _running empties (shutdown)
        self._slot_free = asyncio.Event()
        self._lease_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._claim_task: asyncio.Task[Any] | None = None
        self._background: list[asyncio.Task[None]] = []
        # Set by close(): the background loops end at their next turn even if a cancellation
        # is lost (one that lands while a connection attempt fails can be turned into an error).
        self._closing = False
        # While stopping: loop time at which the first request that failed to reach the
        # dispatcher was sent (None while every request gets through).
        self._unreachable_since: float | None = None
        self._flush_lock = asyncio.Lock()   # one sender of outcomes at a time (the flusher, close())
        self._sending: list[tuple[Job, dict[str, Any]]] = []   # outcomes on their way
        self._flusher_task: asyncio.Task[None] | None = None
        self._pool: ProcessPool | None = None
        self._threads: Any = None
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Register with the dispatcher (waiting until it answers) and start heartbeats."""
        if self._started:
            return
        self._started = True
        self.registry.discover()
        delay = 0.2
        while not self._stopping.is_set():
            try:
                await self.wire.request("POST", "api/v1/workers", json=self.info("running"))
                break
            except ClientError as exc:
                if exc.status and exc.status < 500:
                    raise
                log.warning("dispatcher %s not reachable (%s); retrying in %.1f s", self.wire.endpoint_url, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        self._flusher_task = asyncio.ensure_future(self._flusher())
        self._background = [asyncio.ensure_future(self._heartbeats()), self._flusher_task,
                            asyncio.ensure_future(self._watch_aborts())]
        log.info("worker %s serving %s with %d slot(s); %d function(s) registered",
                 self.id, ", ".join(self.queues), self.concurrency, len(self.registry))

    def info(self, status: str) -> dict[str, Any]:
        """This worker's registry entry: identity, capacity, counters, current jobs, CPU and memory."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "queues": self.queues,
                "functions": self.registry.names(), "concurrency": self.concurrency, "prefetch": self.prefetch,
                "version": __version__,
                "status": status, "jobs_done": self.jobs_done, "jobs_failed": self.jobs_failed,
                "current": sorted(self._held), "rss_bytes": _rss_bytes(),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime, 3)}

    def stop(self) -> None:
        """Stop claiming; ``run_forever`` then finishes or releases what it holds and returns."""
        self._stopping.set()
        self._slot_free.set()
        if self._claim_task is not None:
            self._claim_task.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def close(self) -> None:
        """Release every lease still held, flush outcomes, deregister, close connections."""
        self._closing = True
        if self._flush_lock.locked():
            await self._end_flusher_send()
        if self._flush_lock.locked():   # the flusher's cancellation was lost
            log.error("giving up reporting %d outcome(s): the dispatcher did not answer",
                      len(self._sending) + len(self._outcomes))
        else:
            await self._flush_all()
        self._ready.clear()   # still held: released below
        leftovers = [(doc["id"], doc["lease"]) for doc in self._buffer]
        reported = {job for job, _ in self._outcomes + self._sending}
        leftovers += [(job.id, job.lease) for job in self._held.values() if job not in reported]
        self._buffer.clear()
        if leftovers:
            with contextlib.suppress(ClientError):
                await self._send("api/v1/release", {"leases": [{"id": i, "lease": l} for i, l in leftovers]})
                log.info("released %d job(s) on shutdown", len(leftovers))
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.wait(self._background, timeout=BACKGROUND_STOP)
        with contextlib.suppress(ClientError):
            await self._send("api/v1/workers", self.info("stopped"))
        if self._pool is not None:
            await self._pool.close()
        if self._threads is not None:
            self._threads.shutdown(wait=False)
        await self.wire.close()
        if self._client is not None:
            await self._client.close()

    @property
    def client(self) -> Any:
        """A :class:`tqueues.Client` of this worker's dispatcher (same token and CA), for job
        code that enqueues follow-up jobs or reads others; closed with the worker."""
        if self._client is None:
            from ..client import Client
            endpoint_url, token, cafile = self._client_args
            self._client = Client(endpoint_url, token=token, timeout=30.0, cafile=cafile)
        return self._client

    async def __aenter__(self) -> "Worker":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        await self.close()

    # ------------------------------------------------------------------ claiming

    async def claim(self, limit: int, wait: float | None = None) -> list[dict[str, Any]]:
        """Lease up to ``limit`` jobs, long-polling up to ``wait`` seconds (empty on timeout)."""
        wait = self.wait if wait is None else wait
        answer = await self.wire.request("POST", "api/v1/claim", timeout=wait + 30, json={
            "queues": self.queues, "worker": self.id, "limit": limit, "wait": wait})
        lease = float(answer.get("lease_seconds") or self.lease_seconds)
        if lease != self.lease_seconds:
            self.lease_seconds = lease
            self._lease_changed.set()
        return answer["jobs"]

    async def _claim_guarded(self, limit: int,
                             take: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
        """Claim, cancellable by stop(); connection errors back off instead of raising.

        With ``take``, the claimed jobs are handed to it as soon as the answer is read, in the
        claim's own task (their functions start a turn of the loop sooner), and [] is returned."""
        async def claim_and_take() -> list[dict[str, Any]]:
            docs = await self.claim(limit)
            if take is None:
                return docs
            take(docs)
            return []

        self._claim_task = asyncio.ensure_future(claim_and_take())
        try:
            return await self._claim_task
        except asyncio.CancelledError:
            if self._stopping.is_set():
                return []
            raise
        except ClientError as exc:
            log.warning("claim failed: %s", exc)
            await self._sleep(1.0)
            return []
        finally:
            self._claim_task = None

    def __aiter__(self) -> "Worker":
        return self

    async def __anext__(self) -> Job:
        await self.start()
        while not self._buffer:
            if self._stopping.is_set():
                raise StopAsyncIteration
            self._buffer.extend(await self._claim_guarded(1))
        return Job(self, self._buffer.pop(0))

    async def run_forever(self) -> None:
        """Claim and run jobs until :meth:`stop` (SIGTERM in the CLI), then shut down cleanly.

        Up to ``concurrency`` jobs run at once and up to ``prefetch`` more wait, leased, in a
        local buffer (their leases are kept by heartbeats like the running ones). A slot that
        frees takes the next buffered job at once; the buffer is refilled by claims of several
        jobs at a time while the others run.
        """
        await self.start()
        try:
            while not self._stopping.is_set():
                held = len(self._running) + len(self._ready)
                want = min(self.concurrency + self.prefetch - held, models.MAX_CLAIM)
                # While jobs are held, claim once half the buffer is free.
                if want <= 0 or (held and want < max(1, self.prefetch // 2)):
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                self._claim_asked, self._claim_runway = want, len(self._ready)
                await self._claim_guarded(want, self._take)
            await self._drain()
        finally:
            await self.close()

    def _take(self, docs: list[dict[str, Any]]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("claimed %d job(s) (%d running, %d buffered)", len(docs), len(self._running), len(self._ready))
        if self.auto_prefetch:
            self._adapt_prefetch(len(docs))
        for doc in docs:
            job = Job(self, doc)
            self._hold(job)   # heartbeats and abort events reach it while it waits
            self._ready.append(job)
        self._fill()

    def _adapt_prefetch(self, got: int) -> None:
        """Size an automatic prefetch from a claim's answer of ``got`` jobs, before they are
        buffered. Only a full answer that follows a full answer counts: the queue had a backlog
        all along (a short answer says the queue ran out, not the buffer). If none of the
        buffered jobs are left and slots are free, the worker waited on the claim: double the
        prefetch. If more than half of the jobs buffered when the claim went out are still
        waiting, the buffer outlasts the claims by far: after AMPLE_CLAIMS such answers in a
        row, halve it, down to where it began."""
        full = got >= self._claim_asked
        backlog, self._backlog = self._backlog, full
        if not (full and backlog):
            return
        if not self._ready and len(self._running) < self.concurrency:
            # Up to what one claim can lease with the running jobs (never below the start).
            self.prefetch = min(self.prefetch * 2, max(self.concurrency, models.MAX_CLAIM - self.concurrency))
            self._ample_claims = 0
        elif self._claim_runway and len(self._ready) * 2 > self._claim_runway:
            self._ample_claims += 1
            if self._ample_claims >= AMPLE_CLAIMS:
                self.prefetch = max(self.prefetch // 2, self.concurrency)   # where it began
                self._ample_claims = 0
        else:
            self._ample_claims = 0

    def _fill(self) -> None:
        """Start buffered jobs in the free slots (never once stopping: those are released)."""
        while self._ready and len(self._running) < self.concurrency and not self._stopping.is_set():
            job = self._ready.popleft()
            if job.lost:   # aborted or re-leased while it waited
                self._drop(job)
                continue
            self._running.add(job)
            job.supervise(self._job_ended)   # no task per job: callbacks see it through

    def _job_ended(self, job: Job) -> None:
        self._running.discard(job)
        self._fill()
        self._slot_free.set()
        if not self._running and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def _drain(self) -> None:
        """Give running jobs ``grace`` seconds to finish, then stop them (their leases are released)."""
        if not self._running:
            return
        log.info("waiting up to %g s for %d running job(s)", self.grace, len(self._running))
        self._idle = asyncio.get_running_loop().create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._idle), self.grace)
        if self._running:
            for job in list(self._running):
                job.cancel(self.stop_grace + 1)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._idle), self.stop_grace + 2)

    # ------------------------------------------------------------------ plain functions

    async def run_plain(self, job: Job, fn: Callable[..., Any], kwargs: dict[str, Any], pass_job: bool) -> Any:
        """Run a plain function off the event loop (a child process, or a thread)."""
        loop = asyncio.get_running_loop()
        if self.isolation == "thread":
            if pass_job:
                kwargs["tq_parent_job"] = _ThreadJob(job, loop)
            if self._threads is None:
                from concurrent.futures import ThreadPoolExecutor
                self._threads = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="tqueues-job")
            context = contextvars.copy_context()   # carries the job's log capture into the thread
            return await loop.run_in_executor(self._threads, lambda: context.run(fn, *job.args, **kwargs))
        if self._pool is None:
            self._pool = ProcessPool(self.concurrency, grace=self.stop_grace)
        info = {"id": job.id, "queue": job.queue, "method": job.method, "attempt": job.attempt, "data": job.data}
        updates: list[asyncio.Future[None]] = []

        def on_update(data: dict[str, Any]) -> None:
            # One after the other, in the order the function made them.
            previous = updates[-1] if updates else None
            updates.append(asyncio.ensure_future(_quiet(job.update(data), after=previous)))

        try:
            return await self._pool.run(fn, job.args, kwargs, info, pass_job, on_update, job.log_line, job.function_started)
        finally:
            if updates:   # the job's updates land before its outcome is reported
                await asyncio.wait(updates)

    # ------------------------------------------------------------------ leases and outcomes

    def _hold(self, job: Job) -> None:
        self._held[job.id] = job

    def _drop(self, job: Job) -> None:
        self._held.pop(job.id, None)

    def _log(self, job: Job, line: dict[str, Any]) -> None:
        if len(self._logs) >= MAX_LOG_BACKLOG:
            self._logs_dropped += 1
            return
        self._logs.append({"job_id": job.id, "lease": job.lease, **line})
        if len(self._logs) == 1 or len(self._logs) >= LOG_BATCH:
            self._outcome_ready.set()

    def _report(self, job: Job, outcome: dict[str, Any]) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", job, outcome["status"])
        self._outcomes.append((job, outcome))
        self._outcome_ready.set()

    async def _flusher(self) -> None:
        while not self._closing:
            # Outcomes go at once; captured lines within LOG_INTERVAL of the first one waiting.
            if not self._outcomes:
                timeout = LOG_INTERVAL if self._logs else None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._outcome_ready.wait(), timeout)
                self._outcome_ready.clear()
                if self._logs and not self._outcomes and len(self._logs) < LOG_BATCH and timeout is None:
                    continue   # woken by a first line: give it LOG_INTERVAL to gather company
            await self._flush_all()

    async def _flush_logs(self) -> None:
        """Send captured lines (before the outcomes of their jobs); keep them if unreachable."""
        while self._logs:
            batch, self._logs = self._logs[:LOG_BATCH * 4], self._logs[LOG_BATCH * 4:]
            if self._logs_dropped:
                log.warning("%d captured line(s) dropped while the dispatcher was unreachable", self._logs_dropped)
                self._logs_dropped = 0
            try:
                await self._send("api/v1/logs", {"lines": batch})
            except asyncio.CancelledError:
                self._logs = batch + self._logs
                raise
            except ClientError as exc:
                if exc.status and 400 <= exc.status < 500:
                    log.error("dispatcher refused %d log line(s): %s", len(batch), exc)
                    continue
                self._logs = batch + self._logs
                log.warning("cannot send log lines (%s); will retry", exc)
                return

    async def _end_flusher_send(self) -> None:
        """The flusher is sending, perhaps a request begun before the stop with the client's
        usual timeout: wait for it as long as a request made while stopping may take, then
        cancel it (what it was sending goes back to the outcomes, and the dispatcher counts as
        unreachable since the wait began)."""
        task = self._flusher_task
        if task is None or task.done():
            return
        began = asyncio.get_running_loop().time()
        done, _ = await asyncio.wait({task}, timeout=STOPPING_REQUEST)
        if done:
            return
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        if self._unreachable_since is None:
            self._unreachable_since = began

    async def _flush_all(self) -> None:
        """Send captured lines, then outcomes, until none are left (or, while stopping, the
        dispatcher stayed unreachable too long). close() waits here for the flusher's send."""
        async with self._flush_lock:
            await self._flush_logs()
            await self._flush_outcomes()

    async def _flush_outcomes(self) -> None:
        delay = 0.2
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            self._sending = batch
            try:
                answer = await self._send("api/v1/complete", {"outcomes": [o for _, o in batch], "documents": False})
            except asyncio.CancelledError:
                self._outcomes, self._sending = batch + self._outcomes, []   # for close() to send
                raise
            except ClientError as exc:
                self._sending = []
                if exc.status and 400 <= exc.status < 500:
                    log.error("dispatcher refused outcomes: %s", exc)
                    for job, _ in batch:
                        self._drop(job)
                    continue
                self._outcomes = batch + self._outcomes
                left = self._stopping_time_left()
                if left is not None and left <= 0:
                    # Stopping, and the dispatcher has stayed unreachable for STOPPING_GIVE_UP
                    # seconds: these jobs run again once their leases expire.
                    log.error("giving up reporting %d outcome(s): %s", len(self._outcomes), exc)
                    for job, _ in self._outcomes:
                        self._drop(job)
                    self._outcomes = []
                    return
                if left is not None:
                    delay = min(delay, left)
                log.warning("cannot report outcomes (%s); retrying in %.1f s", exc, delay)
                if self._stopping.is_set():
                    await asyncio.sleep(delay)   # a stop no longer cuts the wait short
                else:
                    await self._sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._sending = []
            for (job, outcome), result in zip(batch, answer["results"]):
                self._drop(job)
                if not result["ok"]:
                    log.warning("outcome of %s not recorded: %s", job, result["error"]["message"])
                elif outcome["status"] == models.FINISHED:
                    self.jobs_done += 1
                else:
                    self.jobs_failed += 1
                    log.info("%s failed: %s: %s", job, outcome["error"]["type"], outcome["error"]["message"])

    async def _heartbeats(self) -> None:
        while not self._closing:
            # A third of the lease between beats; a claim that brings a shorter lease wakes us.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lease_changed.wait(), max(self.lease_seconds / 3, 0.05))
            self._lease_changed.clear()
            jobs = dict(self._held)
            try:
                answer = await self.wire.request("POST", "api/v1/heartbeat", timeout=max(self.lease_seconds / 2, 1), json={
                    "worker": self.id, "leases": [{"id": j.id, "lease": j.lease} for j in jobs.values()],
                    "info": self.info("stopping" if self.stopping else "running")})
            except ClientError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            if answer.get("command") == "stop" and not self.stopping:
                log.info("the dispatcher asked this worker to stop")
                self.stop()
            for result in answer["results"]:
                if not result["ok"]:
                    job = jobs.get(result["id"])
                    if job is not None and self._held.get(job.id) is job:
                        log.warning("%s: lease lost (%s); stopping it", job, result["error"]["message"])
                        job.lose()

    async def _watch_aborts(self) -> None:
        """Follow job.aborted events over a websocket so an abort stops a running job at once
        (heartbeats would notice too, a third of a lease later)."""
        since: int | None = None
        delay = 0.5
        while not self._closing:
            params = {"kind": models.EV_ABORTED, "queue": ",".join(self.queues),
                      **({"since": str(since)} if since is not None else {})}
            try:
                async with await self.wire.websocket("api/v1/events", params, heartbeat=30) as ws:
                    delay = 0.5
                    async for message in ws:
                        event = models.loads(message)
                        since = event["seq"]
                        job = self._held.get(event["job_id"])
                        if job is not None and not job.lost:
                            log.info("%s was aborted; stopping it", job)
                            job.lose()
            except asyncio.CancelledError:
                raise
            except (ClientError, ValueError) as exc:
                log.debug("abort feed: %s", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _send(self, path: str, body: Any) -> Any:
        """POST ``body``; while stopping, within the time left for an unreachable dispatcher.

        A dispatcher that accepts connections but does not answer (it is stopping too, or a
        network partition) is waited for STOPPING_REQUEST seconds per request, and STOPPING_GIVE_UP
        seconds in all from the first request that failed; after that each request (the
        release of held jobs, the stopped registration) gets LAST_WORD seconds."""
        if not self._stopping.is_set():
            return await self.wire.request("POST", path, json=body)
        sent = asyncio.get_running_loop().time()
        left = self._stopping_time_left()
        timeout = STOPPING_REQUEST if left is None else max(min(STOPPING_REQUEST, left), LAST_WORD)
        try:
            answer = await self.wire.request("POST", path, json=body, timeout=timeout)
        except ClientError as exc:
            if not (exc.status and 400 <= exc.status < 500) and self._unreachable_since is None:
                self._unreachable_since = sent
            raise
        self._unreachable_since = None
        return answer

    def _stopping_time_left(self) -> float | None:
        """Seconds left to reach the dispatcher while stopping (None: no request has failed)."""
        if self._unreachable_since is None or not self._stopping.is_set():
            return None
        return self._unreachable_since + STOPPING_GIVE_UP - asyncio.get_running_loop().time()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class _ThreadJob:
    """``tq_parent_job`` for a plain function run in a thread: ``update()`` is blocking."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop) -> None:
        self._job, self._loop = job, loop
        self.id, self.queue, self.method, self.attempt, self.data = job.id, job.queue, job.method, job.attempt, job.data

    def update(self, data: dict[str, Any]) -> None:
        asyncio.run_coroutine_threadsafe(self._job.update(data), self._loop).result()


async def _quiet(coro: Any, after: asyncio.Future[None] | None = None) -> None:
    if after is not None:
        await asyncio.wait({after})
    try:
        await coro
    except ClientError as exc:
        log.warning("job update failed: %s", exc)
