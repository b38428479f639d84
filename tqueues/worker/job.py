"""``Job``: one leased attempt of a job, as an async context manager.

    async for job in worker:
        async with job:
            await job.run()

Leaving the block reports the attempt: ``finished`` with ``job.result`` when it ended
normally, ``failed`` with the exception and its traceback otherwise — never finished after
an exception. The exception is recorded, then suppressed, so one bad job never stops a worker.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import traceback
import types
from typing import TYPE_CHECKING, Any, Callable

from .. import models
from . import capture
from ..errors import ClientError, JobAborted, JobTimeout, NotRegistered
from ..tasks import start_task
from .runner import ChildDied, RemoteError

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("tqueues.worker")

CHILD_START_ALLOWANCE = 60.0   # seconds a child process may take to start a function, beyond its timeout


@functools.lru_cache(maxsize=4096)
def wants_job(fn: Callable[..., Any]) -> bool:
    """True when ``fn`` declares a ``tq_parent_job`` parameter (remembered per function)."""
    try:
        return "tq_parent_job" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@functools.lru_cache(maxsize=4096)
def is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class Job:
    """A job leased to this worker: its document, its lease, and how to run it."""

    # State an attempt starts with (class attributes: a worker makes thousands of jobs a second).
    result: Any = None
    lost = False               # the lease was lost: aborted, re-leased or ended elsewhere
    _inner: "asyncio.Future[Any] | None" = None
    _start_error: Exception | None = None
    _sink: capture.LogSink | None = None
    _wake: "asyncio.Future[None] | None" = None
    # Supervised attempts (Worker.run_forever): see supervise().
    _ended: Callable[["Job"], None] | None = None
    _timers: "list[asyncio.TimerHandle] | None" = None
    _halted = False            # cancelled by its timeout or a lost lease
    _stopped = False           # cancelled by the worker shutting down
    _settled = False           # its outcome is known: reported, dropped or left to release
    _in_child = False          # a plain function run in a child process

    def __init__(self, worker: "Worker", doc: dict[str, Any]) -> None:
        self.worker = worker
        self.doc = doc
        self.id: str = doc["id"]
        self.queue: str = doc["queue"]
        self.method: str = doc["method"]
        # The document is this job's own (decoded from the claim's answer): its containers are
        # used as they are, not copied.
        args, kwargs, data = doc.get("args"), doc.get("kwargs"), doc.get("data")
        self.args: list[Any] = args if type(args) is list else list(args or [])
        self.kwargs: dict[str, Any] = kwargs if type(kwargs) is dict else dict(kwargs or {})
        self.attempt: int = doc["attempts"]
        self.max_attempts: int = doc.get("max_attempts", 1)
        self.lease: str = doc["lease"]
        self.timeout: float | None = doc.get("timeout") or worker.default_timeout
        self.data: dict[str, Any] = data if type(data) is dict else dict(data or {})

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.method} attempt {self.attempt}>"

    # ------------------------------------------------------------------ for the function

    async def update(self, data: dict[str, Any]) -> dict[str, Any]:
        """Merge ``data`` into the job's ``data`` on the dispatcher (progress, partial results)."""
        self.data.update(data)
        try:
            doc = await self.worker.wire.request("PATCH", f"api/v1/jobs/{self.id}", json={
                "data": models.to_jsonable(dict(data)), "lease": self.lease})
        except ClientError as exc:
            if exc.code == "stale_lease":
                self.lose()
            raise
        return doc

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Start the registered function (its own task; a plain function goes to a child process
        or a thread) without waiting for it. ``run`` starts it if this was not called first, and
        raises what starting raised (an unregistered method)."""
        if self._inner is not None or self._start_error is not None or self._settled:
            return
        try:
            fn = self.worker.registry.resolve(self.method)
        except Exception as exc:  # noqa: BLE001 - raised again by run(), which reports it
            self._start_error = exc
            return
        pass_job = wants_job(fn)
        kwargs = dict(self.kwargs) if pass_job else self.kwargs   # **kwargs copies it anyway
        self._sink = capture.LogSink(self.attempt, self.log_line)
        with capture.capturing(self._sink):   # the task created below inherits the capture
            if is_async(fn):
                if pass_job:
                    kwargs["tq_parent_job"] = self
                work = fn(*self.args, **kwargs)
                # A coroutine (the usual) becomes a task directly, started at once where asyncio
                # can (Python 3.12+: a job that never waits is done before this returns);
                # other awaitables through ensure_future.
                self._inner = (start_task(work) if type(work) is types.CoroutineType
                               else asyncio.ensure_future(work))
            else:
                self._in_child = self.worker.isolation == "process"
                self._inner = asyncio.ensure_future(self.worker.run_plain(self, fn, kwargs, pass_job))

    async def run(self) -> Any:
        """Run the registered function with a timeout; the result is kept in ``self.result``.

        What the function prints and logs is captured as this attempt's log lines.
        """
        self.start()
        if self._start_error is not None:
            raise self._start_error
        try:
            return await self._wait()
        finally:
            if self._sink is not None:
                self._sink.close()

    def log_line(self, line: dict[str, Any]) -> None:
        """Queue one captured line of this attempt for the dispatcher."""
        self.worker._log(self, line)

    async def _wait(self) -> Any:
        """The function's result; stop it at its timeout or when the lease is lost.

        Stopping is cooperative first (a coroutine is cancelled, a child process gets SIGTERM,
        which raises SystemExit inside the function), then forced after the worker's
        ``stop_grace`` (the child is killed; a coroutine that ignores cancellation is abandoned).
        """
        inner = self._inner
        assert inner is not None
        # One future woken by the function's end or by lose(): cheaper than a task per job.
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wake = wake
        inner.add_done_callback(lambda _: wake.done() or wake.set_result(None))
        if self.lost and not wake.done():
            wake.set_result(None)
        inner.add_done_callback(_retrieve)   # its outcome is read below, or it was abandoned
        try:
            await (wake if self.timeout is None else asyncio.wait_for(wake, self.timeout))
        except asyncio.TimeoutError:
            pass
        except asyncio.CancelledError:
            # The worker is stopping past its grace period: stop the function too (a child
            # process is killed) before the worker closes its process pool.
            if not inner.done():
                inner.cancel()
                await asyncio.shield(asyncio.wait({inner}, timeout=self.worker.stop_grace + 1))
            raise
        if not inner.done():
            inner.cancel()
            await asyncio.wait({inner}, timeout=self.worker.stop_grace)
            if self.lost:
                raise JobAborted("the job's lease was lost (aborted or re-leased); it was stopped")
            raise JobTimeout(f"the job ran past its timeout of {self.timeout:g} s and was stopped")
        try:
            self.result = inner.result()
        except asyncio.CancelledError:
            if self.lost:
                raise JobAborted("the job's lease was lost (aborted or re-leased); it was stopped") from None
            raise
        return self.result

    # ------------------------------------------------------------------ supervised

    def supervise(self, ended: Callable[["Job"], None]) -> None:
        """Start the attempt and see it through without a task of its own (what
        ``async with job: await job.run()`` does, by callbacks): its outcome is reported when
        the function ends; at its timeout, or when the lease is lost, the function is
        cancelled and, if it is still running ``stop_grace`` seconds later, abandoned.
        ``ended(self)`` is called once, after the outcome was reported or dropped."""
        self._ended = ended
        self.start()
        loop = asyncio.get_running_loop()
        if self._start_error is not None:
            loop.call_soon(self._settle, self._start_error)
            return
        inner = self._inner
        assert inner is not None
        inner.add_done_callback(self._function_done)
        if self.timeout is not None:
            # In a child process the timeout counts from the function's start (function_started):
            # the first child of a worker may take a while to start. Until then, a generous bound.
            self._timer(self.timeout + (CHILD_START_ALLOWANCE if self._in_child else 0), self._halt)
        if self.lost:
            self._halt()

    def function_started(self) -> None:
        """The child process began running the function: its timeout counts from now."""
        if self._ended is None or self.timeout is None or self._halted or self._stopped or self._settled:
            return
        for timer in self._timers or ():
            timer.cancel()
        self._timers = None
        self._timer(self.timeout, self._halt)

    def cancel(self, grace: float) -> None:
        """Stop a supervised attempt for a worker shutting down: cancel the function and give
        it ``grace`` seconds; nothing is reported (the worker releases the lease)."""
        inner = self._inner
        if self._settled or inner is None or inner.done():
            return
        self._stopped = True
        inner.cancel()
        self._timer(grace, self._abandon)

    def _halt(self) -> None:
        """Timeout or lost lease: cancel the function, abandon it after ``stop_grace``."""
        inner = self._inner
        if self._halted or self._stopped or self._settled or inner is None or inner.done():
            return
        self._halted = True
        inner.cancel()
        self._timer(self.worker.stop_grace, self._abandon)

    def _timer(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timers is None:
            self._timers = []
        self._timers.append(asyncio.get_running_loop().call_later(delay, callback))

    def _abandon(self) -> None:
        if not self._settled:
            assert self._inner is not None
            self._inner.add_done_callback(_retrieve)   # it may still end, unread
            self._settle(self._halt_error())

    def _halt_error(self) -> BaseException:
        if self._stopped:   # whatever it did once cancelled: not reported, the lease is released
            return asyncio.CancelledError()
        if self.lost:
            return JobAborted("the job's lease was lost (aborted or re-leased); it was stopped")
        return JobTimeout(f"the job ran past its timeout of {self.timeout:g} s and was stopped")

    def _function_done(self, inner: "asyncio.Future[Any]") -> None:
        if self._settled:
            return
        if self._halted or self._stopped:
            inner.add_done_callback(_retrieve)
            self._settle(self._halt_error())
        elif inner.cancelled():
            self._settle(asyncio.CancelledError())
        elif inner.exception() is not None:
            self._settle(inner.exception())
        else:
            self.result = inner.result()
            self._settle(None)

    def _settle(self, exc: BaseException | None) -> None:
        if self._settled:
            return
        self._settled = True
        for timer in self._timers or ():
            timer.cancel()
        try:
            if self._sink is not None:
                self._sink.close()
            self._conclude(exc)
        except Exception:  # noqa: BLE001 - the slot must be freed whatever happened
            log.exception("%s: reporting its outcome failed", self)
        finally:
            # Nothing uses them once settled. Let go of them, so that the job is freed as soon
            # as the worker lets go of it: its function's task keeps the capture's context, and
            # the sink in it calls back this job (a cycle, else left to the garbage collector,
            # which collected a dozen objects per job in batches of a hundred thousand).
            self._timers = self._sink = self._inner = None
            assert self._ended is not None
            self._ended(self)

    def lose(self) -> None:
        """The dispatcher no longer holds this lease for us (aborted, re-leased): stop the
        function and report nothing."""
        self.lost = True
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._ended is not None:
            self._halt()

    # ------------------------------------------------------------------ context manager

    async def __aenter__(self) -> "Job":
        self.worker._hold(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: Any) -> bool:
        return self._conclude(exc)

    def _conclude(self, exc: BaseException | None) -> bool:
        """Report the attempt (drop it if the lease was lost); True when ``exc`` was recorded
        as its failure and is to be suppressed."""
        if self.lost:
            self.worker._drop(self)
            return isinstance(exc, Exception)
        if exc is None:
            self.worker._report(self, {"id": self.id, "lease": self.lease, "status": models.FINISHED,
                                       "result": models.to_jsonable(self.result)})
            return False
        if isinstance(exc, asyncio.CancelledError) or not isinstance(exc, Exception):
            return False   # shutting down: the worker releases the lease
        self.worker._report(self, {"id": self.id, "lease": self.lease, "status": models.FAILED,
                                   "error": error_of(exc), "retry": not isinstance(exc, NotRegistered)})
        return True


def _retrieve(future: "asyncio.Future[Any]") -> None:
    """Mark a finished function's exception as seen, so an abandoned one is not reported by
    asyncio as "never retrieved" (its attempt's outcome is recorded elsewhere)."""
    if not future.cancelled():
        future.exception()


def error_of(exc: BaseException) -> dict[str, Any]:
    """The stored error of an exception (a child's error keeps the child's type and traceback)."""
    if isinstance(exc, RemoteError):
        return models.error_doc(exc.exc_type, exc.message, exc.traceback)
    if isinstance(exc, ChildDied):
        return models.error_doc("WorkerLost", str(exc), None)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return models.error_doc(type(exc).__name__, str(exc), tb)
