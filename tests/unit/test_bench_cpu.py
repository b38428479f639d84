"""The benchmark's CPU accounting: a process tree's CPU, children and grandchildren included."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench import report, util  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# Burns about BURN seconds of CPU, then (as a parent) waits on stdin so that it stays alive
BURN = 0.3
SPIN = f"import time\nend = time.process_time() + {BURN}\nwhile time.process_time() < end: pass\n"
PARENT = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {SPIN + 'import sys; sys.stdin.read()'!r}], stdin=subprocess.PIPE)\n"
    "reaped = subprocess.Popen([sys.executable, '-c', " + repr(SPIN) + "]); reaped.wait()\n"
    + SPIN + "print('ready', flush=True)\nsys.stdin.read()\nchild.stdin.close(); child.wait()\n"
)


def test_given_a_parent_with_a_live_and_a_reaped_child_then_the_tree_counts_all_three() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        # the live child burns in parallel; wait until it has
        while util.tree_cpu([parent.pid]) < 3 * BURN * 0.9 and time.monotonic() < deadline:
            time.sleep(0.05)
        own = util.process_cpu(parent.pid)
        tree = util.tree_cpu([parent.pid])
        # Then the parent alone holds its own burn and the reaped child's; the tree adds the live child's
        assert 2 * BURN * 0.9 <= own < tree
        assert 3 * BURN * 0.9 <= tree <= 3 * BURN + 1.0
    finally:
        parent.communicate("", timeout=30)


def test_given_a_process_that_is_gone_then_its_cpu_is_zero() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert util.process_cpu(proc.pid) == 0.0
    assert util.tree_cpu([proc.pid]) == 0.0


def test_given_processes_by_command_name_then_named_cpu_sums_them() -> None:
    name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    burner = subprocess.Popen([sys.executable, "-c", SPIN + "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.05)
        deadline = time.monotonic() + 30
        while util.process_cpu(burner.pid) < BURN * 0.9 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Then the processes of that name (this one and the burner at least) hold at least the burn
        assert util.named_cpu([name]) >= util.process_cpu(burner.pid) >= BURN * 0.9
        assert util.named_cpu(["no-such-command-name"]) == 0.0
    finally:
        burner.communicate(b"", timeout=30)


def test_given_cpu_parts_of_runs_then_the_table_shows_medians_and_their_total() -> None:
    parts = [report.Metric(k, "B-cpu", k, "µs", False, ratios=False) for k in ("w", "d", "s")]
    for run, values in enumerate([(30.0, 20.0, 0.0), (28.0, 18.0, 0.0), (40.0, 25.0, 0.0)]):
        for part, value in zip(parts, values):
            part.add("tq", run, 3, value)
    for part, value in zip(parts, (200.0, "failed: no server", 100.0)):
        part.add("peer", 0, 1, value)
    lines = report.parts_table(parts, ["workers", "dispatcher", "servers"], ["tq", "peer", "absent"])
    assert lines[0] == "| system | workers | dispatcher | servers | total |"
    assert lines[2] == "| tq | 30 | 20 | 0.0 | 50 |"
    assert lines[3].startswith("| peer | failed: no server |")
    assert len(lines) == 4
