"""The event loops tqueues makes: the dispatcher's and the workers' (their commands run on
:func:`run_loop`), and the thread of a :class:`~tqueues.client.SyncClient`.

They are uvloop's where it is installed (a dependency on Linux and macOS): every socket read
and write, timer and wake-up costs less on it than on the standard library's loop. The
environment variable TQUEUES_LOOP=asyncio asks for the standard library's loop instead;
TQUEUES_LOOP=uvloop insists on uvloop. An :class:`asyncio` program that uses
:class:`~tqueues.client.Client` runs it on its own loop, whichever that is.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Callable, Coroutine

from .errors import ConfigurationError

LOOP_ENV = "TQUEUES_LOOP"     # "asyncio" keeps the standard library's event loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the kind tqueues runs on (see the module)."""
    choice = os.environ.get(LOOP_ENV, "").strip().lower()
    if choice not in ("", "uvloop", "asyncio"):
        raise ConfigurationError(f"{LOOP_ENV} must be uvloop or asyncio, not {choice!r}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigurationError(f"{LOOP_ENV}=uvloop, but uvloop is not installed") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def loop_kind(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """"uvloop" or "asyncio": the package of ``loop`` (the running one by default)."""
    return type(loop or asyncio.get_running_loop()).__module__.partition(".")[0]


def run_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """``asyncio.run(main())`` on :func:`new_event_loop` (the coroutine is made once the loop is)."""
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(main())
    loop = new_event_loop()   # Python 3.10: asyncio.run's steps, on this loop
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main())
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


__all__ = ["LOOP_ENV", "loop_kind", "new_event_loop", "run_loop"]
