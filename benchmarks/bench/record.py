"""What the benchmark job does, the same for every system: record its start and count itself.

The job takes a small int and returns it. So that the harness can see completions and start
times without going through each system's own result API (which differ widely in cost), every
job appends one 16-byte record, its int and its start time (``time.time()``), to a shared file
opened with ``O_APPEND``: one ``write`` system call of a few microseconds, the same for every
system, thread- and process-safe (appends of a regular file do not interleave). The harness
counts completions from the file's size and reads start times from its records.

An earlier version made a pipelined round trip to Redis per job instead; with the Redis
client's own cost (about 250 µs of CPU per job for ``redis.asyncio``, 130 µs for the blocking
client) the job was anything but a no-op, and that cost, the same for all, hid most of the
differences between the systems it was there to measure.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

RECORD = struct.Struct("<qd")          # job int, start time
_fds: dict[tuple[int, str], int] = {}  # (pid, path) → descriptor (a forked child opens its own)


def control_url() -> str:
    """The Redis database the harness coordinates helper processes through (workload D)."""
    return os.environ.get("BENCH_CONTROL_URL", "redis://127.0.0.1:6379/15")


def record_path() -> str:
    path = os.environ.get("BENCH_RECORD_FILE")
    if not path:
        raise RuntimeError("BENCH_RECORD_FILE is not set: the harness names the recording file")
    return path


def _append(n: int, started: float) -> None:
    key = (os.getpid(), record_path())
    fd = _fds.get(key)
    if fd is None:
        fd = _fds[key] = os.open(key[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, RECORD.pack(n, started))


def record_sync(n: int) -> int:
    """The job body for blocking systems."""
    _append(n, time.time())
    return n


async def record_async(n: int) -> int:
    """The job body for coroutine systems."""
    _append(n, time.time())
    return n


class Recording:
    """The harness' (and the producer's) view of the recording file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def reset(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb"):
            pass

    def done(self) -> int:
        """Jobs finished so far (a record being written is not counted until it is whole)."""
        try:
            return self.path.stat().st_size // RECORD.size
        except FileNotFoundError:
            return 0

    def starts(self) -> dict[int, float]:
        data = self.path.read_bytes()
        whole = len(data) - len(data) % RECORD.size
        return dict(RECORD.iter_unpack(data[:whole]))
