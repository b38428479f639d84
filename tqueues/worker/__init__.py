"""Workers: claim jobs over HTTP and run registered functions."""

from __future__ import annotations

from .job import Job
from .registry import Registry, task
from .worker import Worker

__all__ = ["Job", "Registry", "Worker", "task"]
