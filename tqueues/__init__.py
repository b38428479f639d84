"""tqueues: a distributed job queue for Python.

An aiohttp dispatcher in front of a database; workers that pull jobs over HTTP and run
async or plain functions; live websocket streams of every change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .errors import TQueuesError  # noqa: E402
from .worker import Job, Registry, Worker, task  # noqa: E402

if TYPE_CHECKING:
    from .client import Client, SyncClient


def __getattr__(name: str) -> Any:
    # The client (and aiohttp with it) is imported on first use: a worker process, which
    # speaks to its dispatcher through tqueues.wire, starts without it.
    if name in ("Client", "SyncClient"):
        from . import client
        return getattr(client, name)
    raise AttributeError(f"module 'tqueues' has no attribute {name!r}")


__all__ = ["Client", "SyncClient", "Job", "Registry", "TQueuesError", "Worker", "task", "__version__"]
