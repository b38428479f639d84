"""Running plain (non-async) functions so that they can really be stopped.

Each concurrent plain job runs in a child process of a small pool (started through a
``forkserver``, so no thread state of the worker leaks into it). A child that overruns its
timeout, or whose job is aborted, is killed and replaced; hung code — an endless loop,
``time.sleep(1e9)``, a C call that never returns — stops for sure. A child that dies on its own
(``os._exit``, a segfault) fails only the job it was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable

from .. import models
from . import capture

if TYPE_CHECKING:
    import multiprocessing.connection

# multiprocessing (and pickle, which carries a job to a child) is imported when the first plain
# function runs: most workers never need it, and it is a good part of a worker's start-up.

DEFAULT_GRACE = 3.0   # seconds a child gets to stop after SIGTERM before SIGKILL


class RemoteError(Exception):
    """An exception raised by a function in a child process, with its traceback."""

    def __init__(self, exc_type: str, message: str, tb: str) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.message = message
        self.traceback = tb


class ChildDied(Exception):
    """The child process running the job exited before answering."""


class ChildJob:
    """What a plain function gets as ``tq_parent_job`` in a child process."""

    def __init__(self, conn: multiprocessing.connection.Connection, info: dict[str, Any]) -> None:
        self._conn = conn
        self.id: str = info["id"]
        self.queue: str = info["queue"]
        self.method: str = info["method"]
        self.attempt: int = info["attempt"]
        self.data: dict[str, Any] = dict(info.get("data") or {})

    def update(self, data: dict[str, Any]) -> None:
        """Merge ``data`` into the job's data on the dispatcher (sent in the background)."""
        self.data.update(data)
        self._conn.send(("update", models.to_jsonable(dict(data))))


class _Stopped:
    requested = False


def _on_sigterm(signum: int, frame: Any) -> None:
    """Stop the job cooperatively: SystemExit unwinds it (finally blocks run), then the child exits."""
    _Stopped.requested = True
    raise SystemExit(128 + signum)   # a number: Python prints nothing on the way out


def _child_main(conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root = logging.getLogger()
    if not root.handlers and root.level == logging.WARNING:
        root.setLevel(logging.INFO)   # a job's info records are captured, as in the worker
    while True:
        try:
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            return
        import pickle   # imported with multiprocessing already: a lookup

        try:
            fn, args, kwargs, info, pass_job = pickle.loads(raw)
        except BaseException as exc:  # noqa: BLE001 - reported as the job's failure
            answer: tuple[Any, ...] = ("error", type(exc).__name__, str(exc), traceback.format_exc())
        else:
            sink = capture.LogSink(info["attempt"], lambda line: conn.send(("log", line)))
            conn.send(("started",))   # the job's timeout counts from here, not from the child's start-up
            with capture.capturing(sink):
                try:
                    if pass_job:
                        kwargs["tq_parent_job"] = ChildJob(conn, info)
                    result = fn(*args, **kwargs)
                    answer = ("ok", models.to_jsonable(result))
                except BaseException as exc:  # noqa: BLE001 - every failure is the job's result
                    answer = ("error", type(exc).__name__, str(exc), traceback.format_exc())
        if _Stopped.requested:
            return
        try:
            conn.send(answer)
        except (EOFError, OSError, BrokenPipeError):
            return


class _Child:
    def __init__(self, ctx: Any) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_child_main, args=(child_conn,), daemon=True, name="tqueues-job")
        self.process.start()
        child_conn.close()

    def kill(self, grace: float = DEFAULT_GRACE) -> None:
        """SIGTERM (the job may clean up), then SIGKILL after ``grace`` seconds."""
        with contextlib.suppress(Exception):
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(grace)
            if self.process.is_alive():
                self.process.kill()
            self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()


class ProcessPool:
    """Child processes for plain functions, started on demand, at most ``size`` at once."""

    def __init__(self, size: int, method: str = "forkserver", grace: float = DEFAULT_GRACE) -> None:
        import multiprocessing

        self.grace = grace
        if method not in multiprocessing.get_all_start_methods():
            method = "spawn"
        self._ctx = multiprocessing.get_context(method)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._threads = ThreadPoolExecutor(max_workers=size + 2, thread_name_prefix="tqueues-child-io")
        self._slots = asyncio.Semaphore(size)

    async def run(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], info: dict[str, Any],
                  pass_job: bool, on_update: Callable[[dict[str, Any]], None],
                  on_log: Callable[[dict[str, Any]], None], on_start: Callable[[], None] | None = None) -> Any:
        """Run ``fn`` in a child; its result, or RemoteError / ChildDied. Cancelling kills the child."""
        import pickle   # imported with multiprocessing by __init__: a lookup

        try:
            payload = pickle.dumps((fn, args, kwargs, info, pass_job))
        except Exception as exc:
            raise RemoteError(type(exc).__name__,
                              f"cannot send {models.dumps_str(info['method'])} to a child process: {exc} "
                              "(plain functions must be defined at module level)", "") from None
        loop = asyncio.get_running_loop()
        async with self._slots:
            child = self._idle.pop() if self._idle else await loop.run_in_executor(self._threads, _Child, self._ctx)
            self._busy.add(child)
            healthy = False
            try:
                await loop.run_in_executor(self._threads, child.conn.send_bytes, payload)
                while True:
                    try:
                        message = await loop.run_in_executor(self._threads, child.conn.recv)
                    except (EOFError, OSError):
                        await loop.run_in_executor(self._threads, child.process.join, 5)
                        raise ChildDied(f"the job's process exited with code {child.process.exitcode} before it answered") from None
                    if message[0] == "log":
                        on_log(message[1])
                        continue
                    if message[0] == "started":
                        if on_start is not None:
                            on_start()
                        continue
                    if message[0] == "update":
                        on_update(message[1])
                        continue
                    healthy = True
                    if message[0] == "ok":
                        return message[1]
                    raise RemoteError(*message[1:])
            finally:
                self._busy.discard(child)
                if healthy:
                    self._idle.append(child)
                else:
                    await asyncio.shield(loop.run_in_executor(self._threads, child.kill, self.grace))

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        children = self._idle + list(self._busy)
        self._idle.clear()
        await asyncio.gather(*(loop.run_in_executor(self._threads, child.kill, self.grace) for child in children))
        self._threads.shutdown(wait=False, cancel_futures=True)

