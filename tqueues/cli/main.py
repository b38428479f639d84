"""tqueues: talk to a tqueues dispatcher.

Usage:
  tqueues demo [--db URL]
  tqueues init-db URL
  tqueues enqueue METHOD [ARG...] [--queue QUEUE] [--kwargs JSON] [--priority N] [--delay SECONDS]
                  [--max-attempts N] [--timeout SECONDS] [--key KEY] [--wait] [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues show JOB_ID [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues jobs [--queue QUEUE] [--status STATUS] [--method METHOD] [--limit N] [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues logs JOB_ID [--follow] [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues abort JOB_ID [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues retry JOB_ID [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues queues [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues pause QUEUE_NAME [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues resume QUEUE_NAME [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues workers [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues stop-worker WORKER_ID [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues watch [--queue QUEUE] [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues stats [--window SECONDS] [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues prune --older-than AGE [--json] [--endpoint_url URL] [--token TOKEN]
  tqueues token create --db URL (--scope SCOPE)... [--queue GLOB]... [--method GLOB]... [--name NAME] [--expires SECONDS]
  tqueues token revoke --db URL TOKEN_OR_ID
  tqueues token list --db URL [--json]
  tqueues -h | --help
  tqueues --version

Options:
  --endpoint_url URL   The dispatcher (default: $TQUEUES_URL or http://127.0.0.1:8000/)
  --token TOKEN        Bearer token for the dispatcher (default: $TQUEUES_TOKEN)
  --scope SCOPE        submit, work, read or admin (repeat for several)
  --name NAME          A label for the token
  --expires SECONDS    The token stops working after this long
  --queue QUEUE        Queue name (enqueue: default); for tokens, a queue glob (repeat; default *)
  --kwargs JSON        Keyword arguments as a JSON object
  --priority N         Higher runs first
  --delay SECONDS      Run no earlier than this many seconds from now
  --max-attempts N     Attempts before the job ends failed
  --timeout SECONDS    Stop the job after this long
  --key KEY            Idempotency key: enqueue once, however often this is repeated
  --status STATUS      pending, started, finished, failed or aborted
  --method METHOD      Only jobs of this function; for tokens, a method glob it may enqueue (repeat)
  --limit N            How many jobs to list [default: 20]
  --wait               Wait until the job ends and print it
  --follow             Keep printing new lines until the job ends
  --window SECONDS     How far back recent outcomes count [default: 300]
  --older-than AGE     Age of ended jobs to delete: seconds, or with a unit: 30m, 12h, 7d
  --json               Print JSON instead of a table
  --db URL             Store for the demo (default: a throw-away SQLite file)
  -h --help            Show this screen
  --version            Show version

ARG values are read as JSON when they parse as JSON (3, "x", [1,2]) and as strings otherwise.
Errors print one line on stderr and exit non-zero.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
from typing import Any, Awaitable, Callable, Sequence

from .. import models
from ..client import Client
from ..errors import ClientError
from .common import UsageError, number, parse, run

PROG = "tqueues"


def _arg(value: str) -> Any:
    try:
        return models.loads(value)
    except ValueError:
        return value


def _when(ts: float | None) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def print_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(models.dumps_str(job))
        return
    for key in ("id", "queue", "method", "status", "attempts", "max_attempts", "priority"):
        print(f"{key:<13}{job.get(key)}")
    print(f"{'args':<13}{models.dumps_str(job.get('args'))}")
    print(f"{'kwargs':<13}{models.dumps_str(job.get('kwargs'))}")
    for key in ("created_at", "started_at", "finished_at"):
        print(f"{key:<13}{_when(job.get(key))}")
    if job.get("data"):
        print(f"{'data':<13}{models.dumps_str(job['data'])}")
    if job.get("status") == "finished":
        print(f"{'result':<13}{models.dumps_str(job.get('result'))}")
    if job.get("error"):
        print(f"{'error':<13}{job['error'].get('type')}: {job['error'].get('message')}")
        if job["error"].get("traceback"):
            print(job["error"]["traceback"].rstrip())


async def enqueue(client: Client, args: dict[str, Any]) -> int:
    kwargs = _arg(args["--kwargs"]) if args["--kwargs"] else None
    if kwargs is not None and not isinstance(kwargs, dict):
        raise UsageError("--kwargs must be a JSON object")
    job = await client.enqueue(args["METHOD"], *[_arg(a) for a in args["ARG"]], queue=args["--queue"] or "default", kwargs=kwargs,
                               priority=number(args, "--priority", minimum=-1e6, integer=True),
                               delay=number(args, "--delay"), max_attempts=number(args, "--max-attempts", minimum=1, integer=True),
                               timeout=number(args, "--timeout", minimum=0.001), key=args["--key"])
    if args["--wait"]:
        job = await client.wait(job["id"])
        print_job(job, args["--json"])
        return 0 if job["status"] == models.FINISHED else 1
    print(models.dumps_str(job) if args["--json"] else job["id"])
    return 0


async def show(client: Client, args: dict[str, Any]) -> int:
    print_job(await client.get(args["JOB_ID"]), args["--json"])
    return 0


async def jobs(client: Client, args: dict[str, Any]) -> int:
    found = await client.jobs(queue=args["--queue"], status=args["--status"], method=args["--method"],
                              limit=number(args, "--limit", minimum=1, integer=True))
    if args["--json"]:
        print(models.dumps_str(found))
    else:
        print(table([{**j, "created": _when(j["created_at"])} for j in found],
                    ["id", "queue", "method", "status", "attempts", "created"]))
    return 0


def print_line(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(models.dumps_str(line), flush=True)
    else:
        stamp = datetime.datetime.fromtimestamp(line["ts"]).strftime("%H:%M:%S.%f")[:-3]
        print(f"{stamp} #{line['attempt']} {line['stream']:<6} {line['line']}", flush=True)


async def logs(client: Client, args: dict[str, Any]) -> int:
    if args["--follow"]:
        async for line in client.follow_logs(args["JOB_ID"]):
            print_line(line, args["--json"])
        return 0
    last = 0
    while True:
        page = await client.logs(args["JOB_ID"], since=last)
        for line in page:
            print_line(line, args["--json"])
            last = line["id"]
        if len(page) < 1000:
            return 0


# Commands that act on one thing and print what it became: client method, argument, summary.
ACTIONS: dict[str, tuple[str, str, Callable[[dict[str, Any]], str]]] = {
    "abort": ("abort", "JOB_ID", lambda job: f"{job['id']} {job['status']}"),
    "retry": ("retry", "JOB_ID", lambda job: f"{job['id']} {job['status']}"),
    "pause": ("pause", "QUEUE_NAME", lambda queue: f"{queue['name']} paused"),
    "resume": ("resume", "QUEUE_NAME", lambda queue: f"{queue['name']} resumed"),
    "stop-worker": ("stop_worker", "WORKER_ID", lambda worker: f"{worker['id']} asked to stop"),
}


def action(command: str) -> Callable[[Client, dict[str, Any]], Awaitable[int]]:
    method, argument, summary = ACTIONS[command]

    async def run_action(client: Client, args: dict[str, Any]) -> int:
        done = await getattr(client, method)(args[argument])
        print(models.dumps_str(done) if args["--json"] else summary(done))
        return 0

    return run_action


async def stats(client: Client, args: dict[str, Any]) -> int:
    found = await client.stats(number(args, "--window", minimum=1))
    if args["--json"]:
        print(models.dumps_str(found))
        return 0
    counts = found["counts"]
    print("  ".join(f"{status} {counts[status]}" for status in models.STATUSES))
    print(f"last {found['window']:g} s: {found['finished']} finished, {found['failed']} failed"
          f" ({found['throughput']:.1f} jobs/s); workers alive {found['workers']['alive']} of {found['workers']['total']}")
    return 0


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    raw = text.strip().lower()
    unit = UNITS.get(raw[-1:]) if raw[-1:].isalpha() else 1
    number_part = raw[:-1] if raw[-1:].isalpha() else raw
    try:
        value = float(number_part) * (unit or 0)
    except ValueError:
        value = -1
    if not unit or not value >= 0 or value != value:
        raise UsageError(f"--older-than must be seconds or a number with s, m, h, d or w, not {text!r}")
    return value


async def prune(client: Client, args: dict[str, Any]) -> int:
    deleted = await client.prune(parse_age(args["--older-than"]))
    print(models.dumps_str({"deleted": deleted}) if args["--json"] else f"{deleted} job(s) deleted")
    return 0


async def watch(client: Client, args: dict[str, Any]) -> int:
    from .watch import watch as run_watch

    return await run_watch(client, args["--queue"], args["--json"])


async def queues(client: Client, args: dict[str, Any]) -> int:
    found = await client.queues()
    if args["--json"]:
        print(models.dumps_str(found))
    else:
        print(table([{"name": q["name"], "paused": q["paused"], **q["counts"]} for q in found],
                    ["name", "paused", *models.STATUSES]))
    return 0


async def workers(client: Client, args: dict[str, Any]) -> int:
    found = await client.workers()
    if args["--json"]:
        print(models.dumps_str(found))
    else:
        print(table([{**w, "queues": ",".join(w.get("queues") or []), "last_seen": _when(w["last_seen"])} for w in found],
                    ["id", "status", "queues", "concurrency", "jobs_done", "jobs_failed", "last_seen"]))
    return 0


def init_db(url: str) -> int:
    """Create or migrate the schema of a store (idempotent)."""
    from ..store import open_store, redact

    async def go() -> None:
        store = open_store(url)
        await store.open()
        await store.close()

    asyncio.run(go())
    print(f"schema ready in {redact(url)}")
    return 0


async def _with_store(url: str, action: Callable[[Any], Awaitable[Any]]) -> Any:
    from ..store import open_store

    store = open_store(url)
    await store.open()
    try:
        return await action(store)
    finally:
        await store.close()


async def token_create(args: dict[str, Any]) -> int:
    """Print the new token alone on stdout: it is shown this once and stored only as a hash."""
    from ..dispatcher import auth

    expires = number(args, "--expires", minimum=1)
    token, _ = await _with_store(args["--db"], lambda store: auth.create_token(
        store, args["--scope"], args["--queue"] or ["*"], args["--method"] or ["*"], args["--name"], expires))
    print(token)
    return 0


async def token_revoke(args: dict[str, Any]) -> int:
    from ..dispatcher import auth

    given = args["TOKEN_OR_ID"]
    record = await _with_store(args["--db"], lambda store: store.revoke_token(auth.token_id_of(given) or given))
    print(f"token {record['id']} revoked")
    return 0


async def token_list(args: dict[str, Any]) -> int:
    records = await _with_store(args["--db"], lambda store: store.tokens())
    if args["--json"]:
        print(models.dumps_str(records))
    else:
        print(table([{**r, "scopes": ",".join(r["scopes"]), "queues": ",".join(r["queues"]),
                      "created": _when(r["created_at"]), "revoked": _when(r["revoked_at"])} for r in records],
                    ["id", "name", "scopes", "queues", "created", "revoked"]))
    return 0


TOKEN_COMMANDS: dict[str, Callable[[dict[str, Any]], Awaitable[int]]] = {
    "create": token_create, "revoke": token_revoke, "list": token_list,
}


COMMANDS: dict[str, Callable[[Client, dict[str, Any]], Awaitable[int]]] = {
    "enqueue": enqueue, "show": show, "jobs": jobs, "logs": logs, "queues": queues, "workers": workers,
    "watch": watch, "stats": stats, "prune": prune, **{name: action(name) for name in ACTIONS},
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(__doc__ or "", argv, PROG)

    if not args["token"]:   # --queue and --method repeat only for tokens
        for name in ("--queue", "--method"):
            values = args[name]
            args[name] = values[-1] if values else None

    def go() -> int:
        if args["token"]:
            return asyncio.run(TOKEN_COMMANDS[next(c for c in TOKEN_COMMANDS if args[c])](args))
        if args["demo"]:
            from .demo import run_demo
            return run_demo(args["--db"])
        if args["init-db"]:
            return init_db(args["URL"])
        url = args["--endpoint_url"] or os.environ.get("TQUEUES_URL") or "http://127.0.0.1:8000/"
        token = args["--token"] or os.environ.get("TQUEUES_TOKEN") or None
        command = next(name for name in COMMANDS if args[name])

        async def call() -> int:
            async with Client(url, token=token) as client:
                try:
                    return await COMMANDS[command](client, args)
                except ClientError as exc:
                    raise UsageError(exc.message) if exc.status == 400 else exc

        return asyncio.run(call())

    return run(PROG, go)


if __name__ == "__main__":
    sys.exit(main())
