"""Process handling, ports and small statistics shared by every part of the harness.

Every process the harness starts goes through :class:`Procs`, which starts it in a session
of its own and ends it by its process-group id: worker CLIs fork children (Celery's prefork
pool, Dramatiq's processes, tqueues' forkserver) and none of them may outlive a run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

BENCH_DIR = Path(__file__).resolve().parent.parent      # benchmarks/
REPO_DIR = BENCH_DIR.parent
SCRATCH = BENCH_DIR / ".scratch"                        # logs and database files of one run


class BenchError(Exception):
    """A step of one system failed; its message is the one line shown in the table."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; BenchError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise BenchError(f"{what}: not within {timeout:g} s")


class Procs:
    """Every subprocess of the harness, each in its own session so its children end with it."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[subprocess.Popen[bytes], str]] = {}

    def start(self, argv: Sequence[str], *, name: str, env: dict[str, str], cwd: Path = BENCH_DIR,
              log: Path | None = None, stdout_pipe: bool = False) -> subprocess.Popen[bytes]:
        """Start ``argv``; its stderr (and stdout unless piped) go to ``log`` for diagnosis."""
        SCRATCH.mkdir(exist_ok=True)
        log = log or SCRATCH / f"{name}.log"
        out = open(log, "ab")
        try:
            proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if stdout_pipe else out, stderr=out,
                                    start_new_session=True)
        finally:
            out.close()
        self.live[proc.pid] = (proc, name)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
        pid = proc.pid
        if proc.poll() is None:
            _signal_group(pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Children may survive their parent (a prefork pool): the group goes in any case.
        _signal_group(pid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if proc.stdout is not None:
            proc.stdout.close()
        self.live.pop(pid, None)

    def stop_all(self, grace: float = 3.0) -> None:
        for proc, _ in list(self.live.values()):
            self.stop(proc, grace)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_json(procs: Procs, argv: Sequence[str], *, name: str, env: dict[str, str], timeout: float,
             watch: Sequence[subprocess.Popen[bytes]] = (), watch_log: Path | None = None) -> Any:
    """Run a helper process that prints one JSON document as its last stdout line; return it.

    When every process of ``watch`` (the workers it feeds) has exited, it is stopped at once
    instead of waiting out its timeout.
    """
    proc = procs.start(argv, name=name, env=env, stdout_pipe=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            out, _ = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if time.monotonic() > deadline:
                procs.stop(proc, grace=1)
                raise BenchError(f"{name}: no answer within {timeout:g} s") from None
            if watch and all(w.poll() is not None for w in watch):
                procs.stop(proc, grace=1)
                raise BenchError(f"workers exited: {last_error_line(watch_log)}" if watch_log
                                 else "workers exited") from None
    procs.stop(proc, grace=0.5)
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{name}: exited {proc.returncode}: {last_error_line(SCRATCH / f'{name}.log')}")
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise BenchError(f"{name}: unreadable answer {lines[-1][:80]!r}") from None


def last_error_line(log: Path) -> str:
    """The most telling line of a log: the last exception line, else the last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    for line in reversed(lines):
        if "Error" in line or "Exception" in line or "error:" in line:
            return line[:160]
    return lines[-1][:160] if lines else "no output"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, str, float] | None:
    """From /proc/PID/stat: the parent's pid, the command name, and the CPU seconds (user +
    system) of the process, all its threads and the children it has reaped, counted in clock
    ticks (1/100 s here); None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()   # from field 3, after the command name
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return int(fields[1]), text[text.index("(") + 1:text.rindex(")")], (utime + stime + cutime + cstime) / CLOCK_TICKS


def process_cpu(pid: int) -> float:
    """CPU seconds of a process (see _stat); 0.0 if it is gone."""
    stat = _stat(pid)
    return stat[2] if stat is not None else 0.0


def _processes() -> list[tuple[int, int, str, float]]:
    """(pid, parent pid, command name, CPU seconds) of every process now, each read once."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                out.append((int(entry.name), *stat))
    return out


def tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds of the processes ``pids`` and every live descendant of theirs. A child that
    exited and was reaped within the tree is in its parent's figure (``process_cpu``)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for pid, parent, _, seconds in _processes():
        children.setdefault(parent, []).append(pid)
        cpu[pid] = seconds
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += cpu.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def named_cpu(names: Sequence[str]) -> float:
    """CPU seconds of every process whose command name is one of ``names`` (a server's
    processes: PostgreSQL's backends, Redis)."""
    return sum(seconds for _, _, name, seconds in _processes() if name in names)


def say(message: str) -> None:
    """Progress on stderr, so stdout stays free for the final table."""
    print(message, file=sys.stderr, flush=True)
