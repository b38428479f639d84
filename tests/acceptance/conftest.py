"""Acceptance fixtures: a real dispatcher process on a real SQLite file, worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
from support.jobs import ledger_lines
from support.procs import Proc, start_dispatcher, start_worker


class Cluster:
    def __init__(self, tmp: Path, db_url: str) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.procs: list[Proc] = []
        self.url = ""
        self.dispatcher: Proc | None = None
        self.ledger = str(tmp / "ledger.txt")

    def start_dispatcher(self, *extra: str) -> str:
        self.dispatcher, self.url = start_dispatcher(self.tmp, self.db_url, *extra)
        self.procs.append(self.dispatcher)
        return self.url

    def worker(self, queue: str, *extra: str, concurrency: int = 1, **kwargs: object) -> Proc:
        proc = start_worker(self.tmp, self.url, queue, *extra, concurrency=concurrency, **kwargs)  # type: ignore[arg-type]
        self.procs.append(proc)
        return proc

    def ledger_lines(self) -> list[list[str]]:
        return [line.split() for line in ledger_lines(self.ledger) if line.strip()]

    def logs(self) -> str:
        return "\n".join(f"===== {p.args[2:4]}\n{p.output()[-4000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.close()


@pytest.fixture
def cluster(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    c = Cluster(tmp_path, db_url)
    yield c
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(c.logs())
    c.close()




def wait_for(predicate: Callable[[], bool], timeout: float, message: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)
