"""tqueues: a distributed job queue for Python.

An aiohttp dispatcher in front of a database; workers that pull jobs over HTTP and run
async or plain functions; live websocket streams of every change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .client import Client, SyncClient  # noqa: E402
from .errors import TQueuesError  # noqa: E402
from .worker import Job, Registry, Worker, task  # noqa: E402

__all__ = ["Client", "SyncClient", "Job", "Registry", "TQueuesError", "Worker", "task", "__version__"]
