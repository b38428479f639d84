"""The harness: runs every workload on every system, several times, and writes the results.

Started by ``benchmarks/run.py`` inside the peers' virtual environment. Runs are interleaved
(run 1 of every system, then run 2 of every system, …) so that a noisy stretch of the shared
machine spreads over all systems instead of sinking one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import report, tq_only, workloads
from .context import VENVS, Context
from .peers import PEERS, Peer, by_name
from .report import Metric
from .servers import start as start_servers
from .util import BENCH_DIR, SCRATCH, BenchError, Procs, free_port, port_open, run_json, say, wait_until
from .util import median

RESULTS = BENCH_DIR / "results"
IMPORTS = {"celery": "celery", "rq": "rq", "arq": "arq", "saq": "saq", "dramatiq": "dramatiq", "huey": "huey",
           "taskiq": "taskiq_redis", "procrastinate": "procrastinate", "pgqueuer": "pgqueuer",
           "tqueues-sqlite": "tqueues", "tqueues-postgres": "tqueues"}
DISTS = {"celery": "celery", "rq": "rq", "arq": "arq", "saq": "saq", "dramatiq": "dramatiq", "huey": "huey",
         "taskiq": "taskiq", "procrastinate": "procrastinate", "pgqueuer": "pgqueuer",
         "tqueues-sqlite": "tqueues", "tqueues-postgres": "tqueues"}


@dataclass
class Sizes:
    jobs: int              # A and B
    big_drain: int         # B, tqueues only
    latency_jobs: int      # C
    subscribers: int       # D
    fan_rate: float        # D, jobs/s
    fan_seconds: float
    growth: list[int]      # E, pending counts
    claims: int


def sizes(args: argparse.Namespace) -> Sizes:
    if args.quick:
        out = Sizes(2_000, 20_000, 50, 1000, 10.0, 4.0, [10_000, 200_000], 100)
    else:
        out = Sizes(10_000, 100_000, 200, 1000, 10.0, 10.0, [10_000, 1_000_000], 200)
    if args.growth:
        out.growth = [10_000, args.growth]
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes and one run (a few minutes)")
    parser.add_argument("--only", default="", help="comma-separated systems (tqueues = both stores), e.g. tqueues,celery")
    parser.add_argument("--runs", type=int, default=None, help="runs of each figure (default 3, 1 with --quick)")
    parser.add_argument("--workloads", default="A,B,C,D,E,ceilings",
                        help="comma-separated subset of A,B,C,D,E,ceilings")
    parser.add_argument("--growth", type=int, default=0, help="pending jobs of the deep backlog in E")
    parser.add_argument("--no-write", action="store_true", help="print the table but leave results/ alone")
    parser.add_argument("--replot", action="store_true", help="redraw results/latest.png from results/latest.json")
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    return args


def versions_and_failures(ctx: Context, peers: list[Peer]) -> tuple[dict[str, str], dict[str, str]]:
    """Each system's installed version, or why it cannot run (its import fails)."""
    versions: dict[str, str] = {}
    failures: dict[str, str] = {}
    install_log = VENVS / "install-failures.json"
    install_failed: dict[str, str] = json.loads(install_log.read_text()) if install_log.exists() else {}
    for venv in sorted({p.venv for p in peers}):
        names = [p.name for p in peers if p.venv == venv]
        probe = ("import importlib, importlib.metadata as m, json, sys\nout = {}\n"
                 "for name, mod, dist in json.loads(sys.argv[1]):\n"
                 "    try:\n        importlib.import_module(mod); out[name] = m.version(dist)\n"
                 "    except Exception as exc:\n        out[name] = 'failed: ' + (str(exc).splitlines() or [type(exc).__name__])[0]\n"
                 "print(json.dumps(out))")
        spec = json.dumps([[n, IMPORTS[n], DISTS[n]] for n in names])
        try:
            done = subprocess.run([ctx.python(venv), "-c", probe, spec], capture_output=True, timeout=120, check=False,
                                  env=ctx.base_env, cwd=BENCH_DIR)
            found = json.loads(done.stdout.decode().strip().splitlines()[-1])
        except Exception as exc:   # noqa: BLE001 - a broken venv fails its peers, not the run
            found = {n: f"failed: virtual environment {venv} unusable ({exc})" for n in names}
        for name, value in found.items():
            if value.startswith("failed:"):
                reason = install_failed.get(DISTS[name]) or value
                failures[name] = reason if reason.startswith("failed:") else f"failed: {reason}"
            else:
                versions[name] = value
    return versions, failures


def ceilings(ctx: Context, seconds: float) -> dict[str, float | str]:
    """The bare aiohttp request and websocket message rates, and SQLite's batched insert+update
    rate, on this machine."""
    out: dict[str, float | str] = {}
    env = dict(ctx.base_env)
    port = free_port()
    server = ctx.procs.start([ctx.python("main"), "-m", "bench.ceilings", "server", str(port)], name="ceiling-server",
                             env=env)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), 30, "aiohttp ceiling server start")
        for conc in (1, 64):
            answer = run_json(ctx.procs, [ctx.python("main"), "-m", "bench.ceilings", "client",
                                          f"http://127.0.0.1:{port}/", str(seconds), str(conc)],
                              name="ceiling-client", env=env, timeout=seconds + 60)
            out[f"aiohttp_c{conc}"] = float(answer["rate"])
        answer = run_json(ctx.procs, [ctx.python("main"), "-m", "bench.ceilings", "echo",
                                      f"http://127.0.0.1:{port}/ws", str(seconds)],
                          name="ceiling-echo", env=env, timeout=seconds + 60)
        out["aiohttp_ws_echo"] = float(answer["rate"])
    except BenchError as exc:
        out["aiohttp_c64"] = f"failed: {exc}"
    finally:
        ctx.procs.stop(server)
    SCRATCH.mkdir(exist_ok=True)
    try:
        answer = run_json(ctx.procs, [ctx.python("main"), "-m", "bench.ceilings", "sqlite", str(SCRATCH), "100000",
                                      "1000"], name="ceiling-sqlite", env=env, timeout=300)
        out["sqlite_insert"] = float(answer["insert"])
        out["sqlite_jobs"] = float(answer["jobs"])
    except BenchError as exc:
        out["sqlite_jobs"] = f"failed: {exc}"
    return out


def attempt(what: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; its failure becomes a one-line string instead of ending the run."""
    started = time.monotonic()
    try:
        result = fn()
        say(f"    {what}: {short(result)} ({time.monotonic() - started:.0f} s)")
        return result
    except Exception as exc:   # noqa: BLE001 - any failure of a system is reported, the run goes on
        reason = "failed: " + workloads.describe_failure(exc)
        say(f"    {what}: {reason}")
        return reason


def short(result: Any) -> str:
    if isinstance(result, dict):
        return ", ".join(f"{k}={v:,.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
    if isinstance(result, list):
        return "; ".join(short(r) for r in result)
    return str(result)


def revision() -> str:
    """The tqueues commit measured (and whether its working tree had changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=BENCH_DIR.parent, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tqueues"], capture_output=True, text=True,
                               timeout=10, cwd=BENCH_DIR.parent, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"tqueues at {head or 'unknown'}" + (" with local changes" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def replot() -> int:
    """Redraw the chart from the raw figures of the last run, without measuring again."""
    raw = json.loads((RESULTS / "latest.json").read_text())
    known = raw.get("sizes", {})
    size = Sizes(known.get("jobs", 10_000), known.get("big_drain", 100_000), known.get("latency_jobs", 200),
                 0, 0.0, 0.0, [], 0)
    metrics = build_metrics(size.jobs, size)
    for key, values in raw["metrics"].items():
        if key in metrics:
            metrics[key].values = {name: list(row) for name, row in values.items()}
    order = [p.name for p in PEERS if any(p.name in m.values for m in metrics.values())]
    report.chart(list(metrics.values()), order, RESULTS / "latest.png",
                 f"tqueues and its peers, {machine().split(' (')[0]}, median of {raw['runs']} run(s), min–max bars")
    say(f"wrote {RESULTS / 'latest.png'}")
    return 0


CPU_PARTS = {"Bcpu_w": "workers", "Bcpu_d": "dispatcher", "Bcpu_s": "PostgreSQL and Redis"}


def build_metrics(n: int, size: Sizes) -> dict[str, Metric]:
    return {
        "A1": Metric("A1", "A", f"A. enqueue {n:,} one by one", "jobs/s", True),
        "A2": Metric("A2", "A", f"A. enqueue {n:,} in batches of {workloads.BATCH:,}", "jobs/s", True),
        "B": Metric("B", "B", f"B. drain {n:,} queued, from worker start", "jobs/s", True),
        "Bs": Metric("Bs", "B", f"B. drain {n:,} queued, first start → last done", "jobs/s", True),
        "Bcpu": Metric("Bcpu", "B", f"B. drain {n:,} queued: CPU per job, every process (workers, dispatcher, "
                       "PostgreSQL and Redis)", "µs", False),
        **{key: Metric(key, "B-cpu", f"B. drain {n:,}: CPU per job, {part}", "µs", False, ratios=False)
           for key, part in CPU_PARTS.items()},
        "Bbig": Metric("Bbig", "B", f"B. drain {size.big_drain:,} queued (tqueues), from worker start", "jobs/s",
                       True, ratios=False),
        "Cp50": Metric("Cp50", "C", f"C. pickup latency p50, {size.latency_jobs} jobs 20 ms apart", "ms", False),
        "Cp99": Metric("Cp99", "C", f"C. pickup latency p99, {size.latency_jobs} jobs 20 ms apart", "ms", False),
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot()
    size = sizes(args)
    chosen = by_name([s.strip() for s in args.only.split(",") if s.strip()]) if args.only else list(PEERS)
    wanted = {w.strip().upper() for w in args.workloads.split(",") if w.strip()}
    runs = max(1, args.runs)
    procs = Procs()
    started = time.time()
    if SCRATCH.exists():
        shutil.rmtree(SCRATCH, ignore_errors=True)
    SCRATCH.mkdir()
    try:
        need_pg = any(p.store == "postgres" for p in chosen)
        try:
            servers = start_servers(procs, need_pg)
        except BenchError as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 1
        ctx = Context(servers, procs)
        for note in servers.notes:
            say(note)
        versions, failed = versions_and_failures(ctx, chosen)
        for name, reason in failed.items():
            say(f"{name}: {reason}")
        if servers.pg_dsn is None:
            for peer in chosen:
                if peer.store == "postgres":
                    failed.setdefault(peer.name, "failed: no PostgreSQL server")
        live = [p for p in chosen if p.name not in failed]

        n = size.jobs
        metrics = build_metrics(n, size)
        for peer in chosen:
            if peer.name in failed:
                for key, metric in metrics.items():
                    if key == "Bbig" and not peer.tqueues:
                        continue
                    if key == "A2" and not peer.has_batch:
                        continue
                    for run in range(runs):
                        metric.add(peer.name, run, runs, failed[peer.name])

        sticky: dict[tuple[str, str], str] = {}   # a workload that failed once is not retried
        for run in range(runs):
            for peer in live:
                say(f"run {run + 1}/{runs} · {peer.name}")

                def measure(keys: list[str], fn: Callable[[], Any], what: str,
                            pick: Callable[[Any], list[float]]) -> None:
                    if (peer.name, keys[0]) in sticky:
                        for key in keys:
                            metrics[key].add(peer.name, run, runs, sticky[(peer.name, keys[0])])
                        return
                    result = attempt(what, fn)
                    if isinstance(result, str):
                        sticky[(peer.name, keys[0])] = result
                        for key in keys:
                            metrics[key].add(peer.name, run, runs, result)
                    else:
                        for key, value in zip(keys, pick(result)):
                            metrics[key].add(peer.name, run, runs, float(value))

                if "A" in wanted:
                    measure(["A1"], lambda: workloads.enqueue(ctx, peer, n, batch=False), "A one by one",
                            lambda r: [r["rate"]])
                    if peer.has_batch:
                        measure(["A2"], lambda: workloads.enqueue(ctx, peer, n, batch=True), "A batches",
                                lambda r: [r["rate"]])
                if "B" in wanted:
                    measure(["B", "Bs", "Bcpu", *CPU_PARTS], lambda: workloads.drain(ctx, peer, n, timeout=240),
                            "B drain", lambda r: [r["rate"], r["steady"], r["cpu"], r["cpu_workers"],
                                                  r["cpu_dispatcher"], r["cpu_servers"]])
                    if peer.tqueues:
                        measure(["Bbig"], lambda: workloads.drain(ctx, peer, size.big_drain, timeout=600),
                                f"B drain {size.big_drain:,}", lambda r: [r["rate"]])
                if "C" in wanted:
                    measure(["Cp50", "Cp99"], lambda: workloads.latency(ctx, peer, size.latency_jobs, 0.02),
                            "C latency", lambda r: [r["p50"], r["p99"]])

        tq_live = [p for p in live if p.tqueues]
        fan: dict[str, list[Any]] = {}
        if "D" in wanted:
            for peer in tq_live:
                say(f"D fan-out · {peer.name}")
                fan[peer.name] = [attempt(f"run {r + 1}", lambda: tq_only.fanout(
                    ctx, peer, size.subscribers, size.fan_rate, size.fan_seconds)) for r in range(runs)]
        grow: dict[str, dict[int, Any]] = {}
        if "E" in wanted:
            for peer in tq_live:
                grow[peer.name] = {}
                for pending in size.growth:
                    say(f"E growth · {peer.name} · {pending:,} pending")
                    grow[peer.name][pending] = attempt("runs", lambda: tq_only.growth(
                        ctx, peer, pending, min(10_000, pending), size.claims, runs))
        ceil: dict[str, float | str] = {}
        if "CEILINGS" in wanted:
            say("ceilings")
            ceil = ceilings(ctx, 3.0 if args.quick else 5.0)
            say(f"    {short(ceil)}")

        markdown = render(args, size, runs, chosen, versions, failed, metrics, fan, grow, ceil, servers.notes,
                          time.time() - started)
        print(markdown)
        if not args.no_write:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "latest.md").write_text(markdown)
            raw = {"metrics": {k: m.values for k, m in metrics.items()}, "fanout": fan, "growth": grow,
                   "ceilings": ceil, "versions": versions, "runs": runs, "quick": args.quick,
                   "sizes": {"jobs": n, "big_drain": size.big_drain, "latency_jobs": size.latency_jobs}}
            (RESULTS / "latest.json").write_text(json.dumps(report.plain(raw), indent=1, default=str))
            order = [p.name for p in chosen]
            report.chart(list(metrics.values()), order, RESULTS / "latest.png",
                         f"tqueues and its peers, {machine().split(' (')[0]}, median of {runs} run(s), min–max bars")
            say(f"wrote {RESULTS / 'latest.md'} and {RESULTS / 'latest.png'}")
        return 0
    finally:
        procs.stop_all(grace=2)
        try:
            for peer in chosen:
                if peer.store == "postgres" and "servers" in locals():
                    Context(servers, Procs()).drop_database(peer.pg_database)
        except Exception:   # noqa: BLE001 - best effort
            pass
        if "servers" in locals():
            servers.close()


def render(args: argparse.Namespace, size: Sizes, runs: int, chosen: list[Peer], versions: dict[str, str],
           failed: dict[str, str], metrics: dict[str, Metric], fan: dict[str, list[Any]],
           grow: dict[str, dict[int, Any]], ceil: dict[str, float | str], notes: list[str], took: float) -> str:
    order = [p.name for p in chosen]
    tq_names = [p.name for p in chosen if p.tqueues]
    peer_names = [p.name for p in chosen if not p.tqueues]
    out = ["# Benchmark results", "",
           f"{time.strftime('%Y-%m-%d %H:%M %Z')} · {machine()} · "
           f"{'quick mode' if args.quick else 'full run'} · median of {runs} run(s) with min and max · "
           f"took {took / 60:.0f} min · {revision()}", ""]
    out += [f"- {note}" for note in notes]
    out += ["- Job: takes a small int and returns it, recording its start time and its "
            "completion as one 16-byte append to a shared file (one write system call, the same for every system).",
            "- × best: the figure divided by the best figure of the same run (median over runs); for rates "
            "below 1 is slower, for latencies above 1 is slower.", ""]
    out += ["## Systems and tuning (2 cores)", "", "| system | version | tuning |", "|---|---|---|"]
    for peer in chosen:
        version = versions.get(peer.name) or failed.get(peer.name, "?")
        out.append(f"| {peer.name} | {version} | {peer.tuning} |")
    out.append("")
    sections = {"A": "## A. Enqueue (one producer)", "B": "## B. Drain a queued backlog",
                "C": "## C. Pickup latency on an idle system (enqueue → job start)"}
    for section, heading in sections.items():
        shown = [m for m in metrics.values() if m.section == section and m.values]
        if not shown:
            continue
        out += [heading, ""]
        for metric in shown:
            out += [f"**{metric.title}**", ""] + report.metric_table(metric, order, peer_names) + [""]
        if section == "B" and metrics["Bcpu"].values:
            out += [f"**B. drain {size.jobs:,}: where the CPU went** (µs per job, median of the runs; from the "
                    "workers' spawn to the last completion, their start-up included; PostgreSQL and Redis: "
                    "every process of the server, whichever the system uses)", ""]
            out += report.parts_table([metrics[key] for key in CPU_PARTS], list(CPU_PARTS.values()), order) + [""]
    if tq_names and peer_names:
        out += ["## tqueues ÷ fastest peer", "",
                "Per run, tqueues' figure divided by the best of the other systems in that run; the median "
                "of those ratios. Rates: above 1 means tqueues is faster. Latencies and CPU per job: below 1 "
                "means tqueues is faster (uses less).", ""]
        out += report.tq_ratios([m for m in metrics.values() if m.values], tq_names, peer_names) + [""]
    if fan:
        out += [f"## D. Websocket fan-out (tqueues): {size.subscribers:,} subscribers of one queue, "
                f"{size.fan_rate:g} jobs/s for {size.fan_seconds:g} s", "",
                "Each job makes 3 events (created, started, finished) sent to every subscriber; lag is the "
                "receive time minus the event's `ts`.", "",
                "| store | delivered events/s (median, min–max) | offered/s | p50 lag ms | p99 lag ms | delivered | "
                "subscribers closed |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, results in fan.items():
            good = [r for r in results if isinstance(r, dict)]
            if not good:
                out.append(f"| {name} | {results[0]} | | | | | |")
                continue
            rates = [r["rate"] for r in good]
            out.append(f"| {name} | {median(rates):,.0f} ({min(rates):,.0f}–{max(rates):,.0f}) | "
                       f"{good[0]['offered']:,.0f} | {median([r['p50'] for r in good]):.1f} | "
                       f"{median([r['p99'] for r in good]):.1f} | {median([r['delivered'] for r in good]):.1%} | "
                       f"{max(r['closed'] for r in good):.0f} |")
        out.append("")
    if grow:
        out += ["## E. Growth (tqueues): a deep backlog", "",
                f"Claim latency: {size.claims} sequential `POST /api/v1/claim` of one job each (no wait) with that "
                "many jobs pending; drain: 10,000 jobs (or all) by the 2 workers, timed from the first "
                "completion; RSS of the dispatcher right after the backlog was enqueued (batches of 10,000).", "",
                "| store | pending | enqueue jobs/s | dispatcher RSS MiB | claim p50 ms | claim p99 ms | "
                "drain jobs/s (median, min–max) |", "|---|---:|---:|---:|---:|---:|---:|"]
        for name, per in grow.items():
            for pending, results in per.items():
                if not isinstance(results, list):
                    out.append(f"| {name} | {pending:,} | {results} | | | | |")
                    continue
                drains = [r["drain"] for r in results]
                out.append(f"| {name} | {pending:,} | {results[0]['fill_rate']:,.0f} | {results[0]['rss_mb']:,.0f} | "
                           f"{median([r['claim_p50'] for r in results]):.2f} | "
                           f"{median([r['claim_p99'] for r in results]):.2f} | "
                           f"{median(drains):,.0f} ({min(drains):,.0f}–{max(drains):,.0f}) |")
        out.append("")
    if ceil:
        def c(key: str) -> str:
            value = ceil.get(key)
            return f"{value:,.0f}" if isinstance(value, float) else str(value or "–")

        out += ["## Ceilings on this machine", "",
                "| what | figure |", "|---|---:|",
                f"| bare aiohttp handler, 1 keep-alive connection (requests/s) | {c('aiohttp_c1')} |",
                f"| bare aiohttp handler, 64 keep-alive connections (requests/s) | {c('aiohttp_c64')} |",
                f"| bare aiohttp websocket echo, 1 connection, one message at a time (messages/s; "
                f"the bound of A one by one over tqueues' enqueue websocket) | {c('aiohttp_ws_echo')} |",
                f"| SQLite WAL, batches of 1,000: insert only (rows/s) | {c('sqlite_insert')} |",
                f"| SQLite WAL, batches of 1,000: insert + 2 updates per job (jobs/s) | {c('sqlite_jobs')} |", ""]
    if failed:
        out += ["## Failed", ""] + [f"- {name}: {reason}" for name, reason in failed.items()] + [""]
    out += ["Rerun: `python3 benchmarks/run.py` (see benchmarks/README.md).", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
