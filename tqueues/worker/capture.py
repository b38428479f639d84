"""Capture of what a job prints and logs, kept apart per job.

``sys.stdout`` and ``sys.stderr`` are replaced once by proxies, and one handler is added to
the root logger. Each running job sets a context variable naming its :class:`LogSink`; writes
and log records made in that job's context (its task, and anything it awaits or runs in a
thread through ``copy_context``) go to that sink, line by line. Everything else goes where
it always went. Plain functions in child processes capture the same way in the child and send
their lines over the pipe (see :mod:`tqueues.worker.runner`).
"""

from __future__ import annotations

import contextvars
import io
import logging
import sys
import threading
import time
from typing import Any, Callable

MAX_LINE = 16 * 1024

Emit = Callable[[dict[str, Any]], None]

_current: contextvars.ContextVar["LogSink | None"] = contextvars.ContextVar("tqueues_job_logs", default=None)
_installed = threading.Lock()
_done = False


class LogSink:
    """Turns writes into lines ``{"attempt", "stream", "line", "ts"}`` passed to ``emit``."""

    # One lock for every sink: output is rare next to jobs, and a worker makes thousands of
    # sinks a second (one per attempt).
    _lock = threading.Lock()

    def __init__(self, attempt: int, emit: Emit) -> None:
        self.attempt = attempt
        self._emit = emit
        self._partial: dict[str, str] = {}

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            text = self._partial.pop(stream, "") + text
            *lines, rest = text.split("\n")
            if rest:
                self._partial[stream] = rest
        for line in lines:
            self.line(stream, line)

    def line(self, stream: str, text: str) -> None:
        if len(text) > MAX_LINE:
            text = text[:MAX_LINE] + " …[truncated]"
        self._emit({"attempt": self.attempt, "stream": stream, "line": text.rstrip("\r"), "ts": time.time()})

    def close(self) -> None:
        """Emit what is left of unterminated lines."""
        if not self._partial:   # the usual case: nothing printed, or only whole lines
            return
        with self._lock:
            partial, self._partial = self._partial, {}
        for stream, text in partial.items():
            if text:
                self.line(stream, text)


class _StreamProxy(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: the current job's sink, else the real stream."""

    def __init__(self, name: str, original: Any) -> None:
        self._name = name
        self._original = original

    def write(self, text: str) -> int:
        sink = _current.get()
        if sink is None:
            return self._original.write(text)
        sink.write(self._name, text)
        return len(text)

    def flush(self) -> None:
        if _current.get() is None:
            self._original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return bool(_current.get() is None and self._original.isatty())

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _JobLogHandler(logging.Handler):
    """Routes log records made inside a job to its sink (tqueues' own records excepted)."""

    def emit(self, record: logging.LogRecord) -> None:
        sink = _current.get()
        if sink is None or record.name.startswith("tqueues"):
            return
        try:
            sink.line("log", self.format(record))
        except Exception:  # noqa: BLE001 - logging must never fail a job
            self.handleError(record)


def install() -> None:
    """Install the proxies and the log handler in this process (idempotent)."""
    global _done
    with _installed:
        if _done:
            return
        if not isinstance(sys.stdout, _StreamProxy):
            sys.stdout = _StreamProxy("stdout", sys.stdout)  # type: ignore[assignment]
        if not isinstance(sys.stderr, _StreamProxy):
            sys.stderr = _StreamProxy("stderr", sys.stderr)  # type: ignore[assignment]
        handler = _JobLogHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        _done = True


class capturing:
    """``with capturing(sink):`` — output of this context goes to ``sink``."""

    def __init__(self, sink: LogSink) -> None:
        self.sink = sink
        self._token: contextvars.Token[LogSink | None] | None = None

    def __enter__(self) -> LogSink:
        if not _done:
            install()
        self._token = _current.set(self.sink)
        return self.sink

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
        self.sink.close()
