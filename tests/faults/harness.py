"""The fault-test harness: a ledger the jobs write, a producer that records what it was told,
and a checker that sets both against what the dispatcher recorded.

* **Ledger.** The functions of ``support.ledger_jobs`` append ``begin``/``run`` lines
  ``(job id, attempt, lease, pid, start, end, tag)`` to an append-only file (see that module).
* **Producer.** Enqueues jobs with idempotency keys over HTTP and records every attempt as
  ``ok`` (2xx: the job exists), ``failed`` (4xx, or the connection was refused: nothing was
  stored) or ``unknown`` (the connection was cut, the answer timed out, or a 5xx: it may or
  may not have been stored). It retries a key until the dispatcher acknowledges it.
* **Checker.** After a full drain (nothing ``pending`` or ``started`` in the queues) it reads
  every job and its executions through the API, and the ledger, and classifies each job:

  - *done*: acknowledged and ended as expected (``finished``, with a ledger run of the attempt
    that finished it; or, for a job meant to fail, ``failed`` with the expected error);
  - *lost*: acknowledged, but missing, not ended, ended otherwise, or "finished" without its
    function having run;
  - *duplicates*: ledger runs of a job beyond its first; each must be a recorded retry (a
    different attempt number, every earlier attempt's execution recorded ``lost`` or
    ``failed``), else it is counted *unexplained*; so is a second job for one key;
  - *unexpected*: a job or a ledger line the producer cannot explain: a key never enqueued,
    or a key whose every attempt was answered ``failed`` (no ``unknown`` among them).

  PASS means lost == 0, unexpected == 0, unexplained == 0 and no other inconsistency between
  the ledger and the executions (a ledger line of an attempt the dispatcher never recorded, a
  finished job without exactly one finished execution).

The report is printed, and appended as a Markdown table row to the file named by
``TQUEUES_FAULTS_REPORT`` when that variable is set.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import aiohttp
from support.jobs import ledger_lines
from support.procs import Proc, free_port, start_dispatcher, start_worker

from tqueues import Client

REPORT_ENV = "TQUEUES_FAULTS_REPORT"
JOBS_MODULE = "support.ledger_jobs"
RECORD = f"{JOBS_MODULE}:record"
RECORD_PLAIN = f"{JOBS_MODULE}:record_plain"

OK, FAILED, UNKNOWN = "ok", "failed", "unknown"
TERMINAL = ("finished", "failed", "aborted")
RETRIED = ("lost", "failed")   # execution outcomes after which another attempt may run


async def wait_for(predicate: Callable[[], bool], timeout: float, message: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` without blocking the event loop; AssertionError(message) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        await asyncio.sleep(interval)


class Size:
    """Quick by default; ``--soak`` scales job and fault counts (ten times unless told)."""

    def __init__(self, soak: bool) -> None:
        self.soak = soak

    def __call__(self, quick: int, soak: int | None = None) -> int:
        if not self.soak:
            return quick
        return soak if soak is not None else quick * 10

    @property
    def name(self) -> str:
        return "soak" if self.soak else "quick"


# ---------------------------------------------------------------------------- ledger

@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str           # "begin" or "run"
    job: str
    attempt: int
    lease: str
    pid: int
    start: float
    end: float | None
    tag: str


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def entries(self, settled: bool = False) -> list[Entry]:
        """Every whole line; ``settled`` (nothing runs any more) also the last, finished or not."""
        out = []
        for line in ledger_lines(self.path, settled):
            parts = line.split()
            if len(parts) != 8:
                raise AssertionError(f"torn or malformed ledger line: {line!r}")
            kind, job, attempt, lease, pid, start, end, tag = parts
            out.append(Entry(kind, job, int(attempt), lease, int(pid), float(start),
                             None if end == "-" else float(end), tag))
        return out

    def count(self, kind: str | None = None, pid: int | None = None, tags: Iterable[str] | None = None) -> int:
        wanted = set(tags) if tags is not None else None
        return sum(1 for e in self.entries() if (kind is None or e.kind == kind) and (pid is None or e.pid == pid)
                   and (wanted is None or e.tag in wanted))


# ---------------------------------------------------------------------------- producer

@dataclasses.dataclass(frozen=True)
class Expect:
    """How a job must end: ``finished`` (with a ledger run, when ``runs``) or failed with ``error``."""
    status: str = "finished"
    error: str | None = None
    runs: bool = True


FINISH = Expect()


@dataclasses.dataclass(frozen=True)
class Attempt:
    key: str
    outcome: str        # ok, failed, unknown
    status: int         # HTTP status; 0 when no answer came
    job_id: str | None
    at: float


class Producer:
    """Enqueues keyed jobs over HTTP and records every attempt and what it was told."""

    def __init__(self, url: str, ledger: Ledger, *, timeout: float = 5.0, pause: float = 0.05) -> None:
        self.url = url
        self.ledger = ledger
        self.timeout = timeout
        self.pause = pause
        self.specs: dict[str, dict[str, Any]] = {}
        self.expect: dict[str, Expect] = {}
        self.attempts: list[Attempt] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.retry_after_missing = 0      # 503 answers without a Retry-After header
        self.awaiting = 0                 # requests sent through session() not answered yet

    def session(self) -> aiohttp.ClientSession:
        """An HTTP session that keeps ``awaiting`` up to date (to cut a request in flight)."""
        trace = aiohttp.TraceConfig()

        async def sent(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
            ctx.awaiting = True
            self.awaiting += 1

        async def ended(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
            if getattr(ctx, "awaiting", False):
                ctx.awaiting = False
                self.awaiting -= 1

        trace.on_request_headers_sent.append(sent)
        trace.on_request_end.append(ended)
        trace.on_request_exception.append(ended)
        return aiohttp.ClientSession(trace_configs=[trace])

    def job(self, key: str, *, queue: str, method: str = RECORD, seconds: float = 0.0, expect: Expect = FINISH,
            args: Sequence[Any] | None = None, **options: Any) -> dict[str, Any]:
        """The spec of one job with idempotency key ``key``; remembered with how it must end."""
        if args is None:
            args = [str(self.ledger), key] + ([seconds] if seconds else [])
        spec = {"queue": queue, "method": method, "args": list(args), "key": key, **options}
        self.specs[key] = spec
        self.expect[key] = expect
        return spec

    @property
    def counts(self) -> collections.Counter[str]:
        return collections.Counter(a.outcome for a in self.attempts)

    def acknowledged(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = collections.defaultdict(set)
        for a in self.attempts:
            if a.outcome == OK and a.job_id:
                out[a.key].add(a.job_id)
        return out

    def ids(self) -> list[str]:
        return [next(iter(found)) for found in self.acknowledged().values()]

    async def submit(self, session: aiohttp.ClientSession, specs: Sequence[dict[str, Any]]) -> str:
        """One attempt at enqueueing ``specs`` (one request; a batch when more than one); its outcome."""
        body: Any = specs[0] if len(specs) == 1 else {"jobs": list(specs)}
        now = time.time()
        ids: list[str | None] = [None] * len(specs)
        try:
            async with session.post(self.url + "api/v1/jobs", json=body,
                                    timeout=aiohttp.ClientTimeout(total=self.timeout)) as response:
                status = response.status
                self.statuses[status] += 1
                if 200 <= status < 300:
                    answer = await response.json()
                    docs = [answer] if len(specs) == 1 else answer["jobs"]
                    ids = [doc["id"] for doc in docs]
                    outcome = OK
                elif status >= 500:
                    if status == 503 and not response.headers.get("Retry-After"):
                        self.retry_after_missing += 1
                    outcome = UNKNOWN
                else:
                    outcome = FAILED
        except aiohttp.ClientConnectorError:
            status, outcome = 0, FAILED         # never connected: nothing was sent
            self.statuses[0] += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status, outcome = 0, UNKNOWN        # cut or timed out: it may have been stored
            self.statuses[0] += 1
        for spec, job_id in zip(specs, ids):
            self.attempts.append(Attempt(spec["key"], outcome, status, job_id, now))
        return outcome

    async def enqueue(self, session: aiohttp.ClientSession, specs: Sequence[dict[str, Any]],
                      give_up: float = 120.0) -> None:
        """Submit ``specs`` until acknowledged, retrying with the same keys."""
        deadline = time.monotonic() + give_up
        while await self.submit(session, specs) != OK:
            if time.monotonic() > deadline:
                raise AssertionError(f"enqueue of {len(specs)} job(s) not acknowledged within {give_up} s: {self.statuses}")
            await asyncio.sleep(self.pause)

    async def enqueue_all(self, session: aiohttp.ClientSession, specs: Sequence[dict[str, Any]], *, batch: int = 1,
                          streams: int = 1, gap: float = 0.0) -> None:
        """Enqueue ``specs`` in batches of ``batch`` from ``streams`` concurrent producers."""
        chunks = [specs[i:i + batch] for i in range(0, len(specs), batch)]

        async def stream(part: list[Sequence[dict[str, Any]]]) -> None:
            for chunk in part:
                await self.enqueue(session, chunk)
                if gap:
                    await asyncio.sleep(gap)

        await asyncio.gather(*(stream(chunks[i::streams]) for i in range(streams)))


# ---------------------------------------------------------------------------- checker

@dataclasses.dataclass
class Report:
    scenario: str
    backend: str
    size: str
    faults: int
    fault_kind: str
    jobs: int = 0
    done: int = 0
    lost: int = 0
    duplicates: int = 0         # ledger runs of a job beyond its first
    unexplained: int = 0        # of those (or second jobs of one key), not a recorded retry
    unexpected: int = 0
    retried: int = 0            # executions recorded lost or failed: attempts the faults cut short
    enqueues: dict[str, int] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.unexpected == 0 and self.unexplained == 0 and not self.problems

    def line(self) -> str:
        enq = " ".join(f"{k}={self.enqueues.get(k, 0)}" for k in (OK, FAILED, UNKNOWN))
        return (f"[{'PASS' if self.ok else 'FAIL'}] {self.scenario} ({self.backend}, {self.size}): jobs={self.jobs}"
                f" faults={self.faults} ({self.fault_kind}) done={self.done} lost={self.lost}"
                f" duplicates={self.duplicates} unexplained={self.unexplained} unexpected={self.unexpected}"
                f" retried={self.retried} enqueues: {enq}")

    def row(self) -> str:
        """A Markdown table row: scenario, backend, size, jobs, faults, done, lost, duplicates, unexpected."""
        return (f"| {self.scenario} | {self.backend} | {self.size} | {self.jobs} | {self.faults} {self.fault_kind} |"
                f" {self.done} | {self.lost} | {self.duplicates} ({self.unexplained} unexplained) | {self.unexpected} |")

    def __str__(self) -> str:
        return "\n".join([self.line(), *(f"    {p}" for p in self.problems[:50])])

    def publish(self) -> None:
        print(self)
        target = os.environ.get(REPORT_ENV)
        if target:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (self.row() + "\n").encode())
            finally:
                os.close(fd)


async def drain(client: Client, queues: Iterable[str], timeout: float) -> bool:
    """Wait until nothing is pending or started in ``queues``; whether that happened in time."""
    wanted = set(queues)
    deadline = time.monotonic() + timeout
    while True:
        try:
            counts = {q["name"]: q["counts"] for q in await client.queues()}
            busy = sum(counts.get(q, {}).get(s, 0) for q in wanted for s in ("pending", "started"))
            if busy == 0:
                return True
        except Exception:  # noqa: BLE001 - the dispatcher may be restarting; keep asking
            pass
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


async def all_jobs(client: Client, queue: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    before = None
    while True:
        page = await client.jobs(queue=queue, limit=1000, **({"before": before} if before else {}))
        if not page:
            return out
        out.extend(page)
        before = page[-1]["id"]


async def check(url: str, producers: Sequence[Producer], ledger: Ledger, *, scenario: str, backend: str,
                size: str, faults: int, fault_kind: str, timeout: float = 120.0, publish: bool = True) -> Report:
    """Drain, read everything back, classify every job; the report (published unless told)."""
    expect: dict[str, Expect] = {}
    specs: dict[str, dict[str, Any]] = {}
    acked: dict[str, set[str]] = collections.defaultdict(set)
    outcomes: dict[str, set[str]] = collections.defaultdict(set)
    enqueues: collections.Counter[str] = collections.Counter()
    for producer in producers:
        expect.update(producer.expect)
        specs.update(producer.specs)
        for key, found in producer.acknowledged().items():
            acked[key] |= found
        for a in producer.attempts:
            outcomes[a.key].add(a.outcome)
        enqueues.update(producer.counts)
    queues = sorted({spec["queue"] for spec in specs.values()})
    report = Report(scenario, backend, size, faults, fault_kind, jobs=len(expect), enqueues=dict(enqueues))

    async with Client(url, timeout=60) as client:
        if not await drain(client, queues, timeout):
            report.problems.append(f"the queues were not drained within {timeout} s")
        jobs = [doc for queue in queues for doc in await all_jobs(client, queue)]
        limit = asyncio.Semaphore(8)

        async def executions_of(job_id: str) -> tuple[str, list[dict[str, Any]]]:
            async with limit:
                return job_id, await client.executions(job_id)

        executions = dict(await asyncio.gather(*(executions_of(doc["id"]) for doc in jobs)))
    entries = ledger.entries(settled=True)

    by_id = {doc["id"]: doc for doc in jobs}
    docs_by_key: dict[str | None, list[dict[str, Any]]] = collections.defaultdict(list)
    for doc in jobs:
        docs_by_key[doc.get("key")].append(doc)
    lines_by_job: dict[str, list[Entry]] = collections.defaultdict(list)
    for entry in entries:
        lines_by_job[entry.job].append(entry)
    runs_by_job = {job: [e for e in lines if e.kind == "run"] for job, lines in lines_by_job.items()}

    # Every key the producers used: one job at most, and, once acknowledged, ended as expected.
    for key, wanted in expect.items():
        ids = acked.get(key, set()) | {doc["id"] for doc in docs_by_key.get(key, [])}
        if len(ids) > 1:
            report.unexplained += len(ids) - 1
            report.problems.append(f"key {key}: {len(ids)} jobs {sorted(ids)}")
        if not acked.get(key):
            if docs_by_key.get(key) and UNKNOWN not in outcomes[key]:
                report.unexpected += len(docs_by_key[key])
                report.problems.append(f"key {key}: a job exists but every enqueue was refused ({outcomes[key]})")
            continue
        job_id = sorted(acked[key])[0]
        doc = by_id.get(job_id)
        if doc is None:
            report.lost += 1
            report.problems.append(f"key {key}: acknowledged job {job_id} is missing")
            continue
        error_type = (doc.get("error") or {}).get("type")
        runs = runs_by_job.get(job_id, [])
        if doc["status"] not in TERMINAL:
            report.lost += 1
            report.problems.append(f"job {job_id} ({key}) still {doc['status']} after the drain")
        elif doc["status"] != wanted.status or (wanted.error is not None and error_type != wanted.error):
            report.lost += 1
            report.problems.append(f"job {job_id} ({key}) ended {doc['status']} {error_type}, expected "
                                   f"{wanted.status} {wanted.error or ''}")
        elif wanted.status == "finished" and wanted.runs and not any(r.attempt == doc["attempts"] for r in runs):
            report.lost += 1
            report.problems.append(f"job {job_id} ({key}) finished as attempt {doc['attempts']} but that attempt never ran")
        else:
            report.done += 1
        if doc["status"] == "finished":
            finished = [e for e in executions.get(job_id, []) if e["status"] == "finished"]
            if [e["attempt"] for e in finished] != [doc["attempts"]]:
                report.problems.append(f"job {job_id} ({key}) finished as attempt {doc['attempts']} with finished "
                                       f"executions {[e['attempt'] for e in finished]}")
    report.retried = sum(1 for doc in jobs for e in executions.get(doc["id"], []) if e["status"] in RETRIED
                         and expect.get(doc.get("key") or "", FINISH).status == "finished")

    # Jobs and ledger lines nobody asked for.
    for doc in jobs:
        if doc.get("key") not in expect:
            report.unexpected += 1
            report.problems.append(f"job {doc['id']} (key {doc.get('key')}) was never enqueued by a producer")
    for job_id, lines in lines_by_job.items():
        doc = by_id.get(job_id)
        tags = {e.tag for e in lines}
        if doc is None or tags != {doc.get("key")} or not tags <= set(expect):
            report.unexpected += 1
            report.problems.append(f"ledger lines of job {job_id} (tags {sorted(tags)}) match no job a producer enqueued")

    # The ledger against the executions: every attempt that ran was recorded; a job that ran
    # more than once did so as recorded retries.
    for job_id, lines in lines_by_job.items():
        recorded = {e["attempt"]: e for e in executions.get(job_id, [])}
        for attempt in sorted({e.attempt for e in lines} - set(recorded)):
            report.problems.append(f"job {job_id} attempt {attempt} ran but no execution of it is recorded")
        runs = runs_by_job.get(job_id, [])
        if len(runs) < 2:
            continue
        report.duplicates += len(runs) - 1
        per_attempt = collections.Counter(r.attempt for r in runs)
        attempts = sorted(per_attempt)
        explained = True
        for attempt, n in per_attempt.items():
            if n > 1:
                explained = False
                report.problems.append(f"job {job_id} attempt {attempt} ran {n} times "
                                       f"(pids {[r.pid for r in runs if r.attempt == attempt]})")
        for attempt in attempts[:-1]:
            status = recorded.get(attempt, {}).get("status")
            if status not in RETRIED:
                explained = False
                report.problems.append(f"job {job_id} ran again after attempt {attempt}, recorded {status!r}, "
                                       f"not lost or failed")
        if not explained:
            report.unexplained += len(runs) - 1
    if publish:
        report.publish()
    return report


# ---------------------------------------------------------------------------- processes

class Rig:
    """A dispatcher on a fixed port (so it can be restarted in place), workers importing
    ``support.ledger_jobs``, a ledger, and the checker: one per test."""

    def __init__(self, tmp: Path, db_url: str, backend: str, size: Size) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.backend = backend
        self.size = size
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.ledger = Ledger(tmp / "ledger.txt")
        self.procs: list[Proc] = []
        self.dispatcher: Proc | None = None
        self._dispatcher_args: tuple[str, ...] = ()

    def start_dispatcher(self, *extra: str) -> str:
        self._dispatcher_args = extra
        self.dispatcher, _ = start_dispatcher(self.tmp, self.db_url, *extra, port=self.port,
                                              name=f"dispatcher{len(self.procs)}")
        self.procs.append(self.dispatcher)
        return self.url

    def kill_dispatcher(self) -> None:
        assert self.dispatcher is not None
        self.dispatcher.kill9()

    def restart_dispatcher(self) -> None:
        self.start_dispatcher(*self._dispatcher_args)

    def worker(self, queue: str, *extra: str, concurrency: int = 2, url: str | None = None) -> Proc:
        proc = start_worker(self.tmp, url or self.url, queue, *extra, imports=(JOBS_MODULE,), concurrency=concurrency)
        self.procs.append(proc)
        return proc

    def producer(self, url: str | None = None, **options: Any) -> Producer:
        return Producer(url or self.url, self.ledger, **options)

    async def check(self, scenario: str, producers: Sequence[Producer], *, faults: int, fault_kind: str,
                    timeout: float = 120.0, url: str | None = None, publish: bool = True) -> Report:
        return await check(url or self.url, producers, self.ledger, scenario=scenario, backend=self.backend,
                           size=self.size.name, faults=faults, fault_kind=fault_kind, timeout=timeout,
                           publish=publish)

    def logs(self) -> str:
        return "\n".join(f"===== {p.args[2:4]} pid {p.pid}\n{p.output()[-4000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.close()
