"""``tqueues watch``: a live view of jobs, redrawn as events arrive.

On a terminal it redraws a table (counts per status, then the most recently changed jobs) at
most ten times a second; piped, it prints one line per event (or JSON with ``--json``).
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import sys
import time
from typing import Any

from .. import models
from ..client import Client

ROWS = 20
REDRAW = 0.1          # seconds between redraws at most
RESYNC = 5.0          # seconds between fresh counts from the dispatcher
CLEAR = "\x1b[H\x1b[2J"


class View:
    def __init__(self, endpoint: str, queue: str | None) -> None:
        self.endpoint = endpoint
        self.queue = queue
        self.jobs: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = dict.fromkeys(models.STATUSES, 0)
        self.events = 0

    def load(self, queues: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> None:
        self.counts = dict.fromkeys(models.STATUSES, 0)
        for queue in queues:
            if self.queue is None or queue["name"] == self.queue:
                for status, count in queue["counts"].items():
                    self.counts[status] = self.counts.get(status, 0) + count
        for job in jobs:
            self.jobs.setdefault(job["id"], job)

    def apply(self, event: dict[str, Any]) -> None:
        self.events += 1
        doc = event.get("new_val")
        if not event["kind"].startswith("job.") or event["kind"] == models.EV_LOG or not isinstance(doc, dict):
            return
        before = self.jobs.get(doc["id"], {}).get("status")
        if before is None and event["kind"] != models.EV_CREATED:
            before = models.PENDING if doc["status"] in (models.STARTED, models.ABORTED) else models.STARTED
        if before != doc["status"]:
            if before is not None:
                self.counts[before] = max(self.counts.get(before, 0) - 1, 0)
            self.counts[doc["status"]] = self.counts.get(doc["status"], 0) + 1
        self.jobs[doc["id"]] = doc
        if len(self.jobs) > ROWS * 10:
            for old in sorted(self.jobs.values(), key=lambda j: j["updated_at"])[: len(self.jobs) - ROWS * 5]:
                del self.jobs[old["id"]]

    def render(self) -> str:
        width = shutil.get_terminal_size((120, 40)).columns
        now = time.time()
        lines = [f"tqueues watch  {self.endpoint}  queue: {self.queue or 'all'}  "
                 f"{datetime.datetime.now().strftime('%H:%M:%S')}  events: {self.events}",
                 "  ".join(f"{status} {self.counts.get(status, 0)}" for status in models.STATUSES), ""]
        header = f"{'JOB':<12}  {'QUEUE':<12}  {'STATUS':<9}  {'TRY':>5}  {'AGE':>7}  METHOD"
        lines.append(header)
        for job in sorted(self.jobs.values(), key=lambda j: j["updated_at"], reverse=True)[:ROWS]:
            tries = f"{job['attempts']}/{job['max_attempts']}"
            age = f"{now - job['created_at']:.0f}s"
            lines.append(f"{job['id'][-12:]:<12}  {job['queue'][:12]:<12}  {job['status']:<9}  {tries:>5}  {age:>7}  {job['method']}")
        return CLEAR + "\n".join(line[:width] for line in lines) + "\n"


def event_line(event: dict[str, Any]) -> str:
    doc = event.get("new_val") if isinstance(event.get("new_val"), dict) else {}
    if event["kind"] == models.EV_LOG:
        detail = f"{len(doc.get('lines', []))} line(s)"
    else:
        detail = f"{doc.get('status', '')} {doc.get('method', '')}".strip()
    return f"{event['seq']} {event['kind']} {event.get('queue') or '-'} {event.get('job_id') or '-'} {detail}"


async def watch(client: Client, queue: str | None, as_json: bool) -> int:
    if queue is not None:
        models.check_queue(queue)
    live = sys.stdout.isatty() and not as_json
    view = View(client.endpoint_url, queue)
    async with client.watch(queue=queue) as events:
        if not live:
            async for event in events:
                print(models.dumps_str(event) if as_json else event_line(event), flush=True)
            return 0
        view.load(await client.queues(), await client.jobs(queue=queue, limit=ROWS))
        sys.stdout.write(view.render())
        sys.stdout.flush()
        drawn = resynced = time.monotonic()
        iterator = events.__aiter__()
        while True:
            try:
                event = await asyncio.wait_for(iterator.__anext__(), timeout=max(REDRAW, RESYNC / 5))
                view.apply(event)
            except asyncio.TimeoutError:
                pass
            now = time.monotonic()
            if now - resynced >= RESYNC:
                view.load(await client.queues(), [])
                resynced = now
            if now - drawn >= REDRAW:
                sys.stdout.write(view.render())
                sys.stdout.flush()
                drawn = now
