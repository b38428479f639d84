"""Real dispatcher and worker processes for integration and acceptance tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), out.get("PYTHONPATH")]))
    out["PYTHONUNBUFFERED"] = "1"
    return out


class Proc:
    """A child process whose output goes to a log file (read it when a test fails)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args = args
        self.log = log
        self._out = open(log, "ab")
        self.popen = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env())

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)
            raise

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)
        self._out.close()


def wait_healthy(url: str, timeout: float = 20.0, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "api/v1/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and not proc.alive():
            raise RuntimeError(f"dispatcher exited:\n{proc.output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"dispatcher at {url} not healthy after {timeout} s")
        time.sleep(0.05)


def start_dispatcher(tmp: Path, db_url: str, *extra: str, port: int | None = None, name: str = "dispatcher") -> tuple[Proc, str]:
    port = port or free_port()
    level = [] if "--loglevel" in extra else ["--loglevel", "INFO"]
    proc = Proc([sys.executable, "-m", "tqueues.cli.dispatcher", "--db", db_url, "--bind", f"127.0.0.1:{port}",
                 *level, *extra], tmp / f"{name}-{port}.log")
    url = f"http://127.0.0.1:{port}/"
    wait_healthy(url, proc=proc)
    return proc, url


def start_worker(tmp: Path, url: str, queue: str, *extra: str, imports: tuple[str, ...] = ("support.jobs",),
                 concurrency: int = 1, name: str = "worker") -> Proc:
    args = [sys.executable, "-m", "tqueues.cli.worker", "--endpoint_url", url, "--queue", queue,
            "--concurrency", str(concurrency), *([] if "--loglevel" in extra else ["--loglevel", "INFO"]), *extra]
    for module in imports:
        args += ["--import", module]
    return Proc(args, tmp / f"{name}-{time.monotonic_ns()}.log")
