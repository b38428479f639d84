#!/usr/bin/env python3
"""Benchmark tqueues against other Python job queues: ``python3 benchmarks/run.py [--quick]``.

This file only prepares the virtual environments (``benchmarks/.venv-peers/``: ``main`` with
tqueues from this repository and most peers; ``arq`` and ``taskiq`` apart, because their
redis client pins conflict with Celery's), then runs the harness (:mod:`bench.main`) inside ``main``. It installs
again only when the package list below or tqueues' setup.py changes. A package that fails to install is noted, and
its system is reported as failed in the results while the others run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENVS = HERE / ".venv-peers"

COMMON = ["redis", "asyncpg", "matplotlib"]
PACKAGES: dict[str, list[str]] = {
    "main": [*COMMON, "celery[redis]", "rq", "saq[redis]", "dramatiq[redis]", "huey",
             "procrastinate", "psycopg[binary]", "pgqueuer"],
    "arq": ["arq"],                        # arq pins redis<6
    "taskiq": ["taskiq", "taskiq-redis"],  # taskiq-redis wants a newer redis than Celery's kombu allows
}


def pip(python: Path, args: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and "is ignored" not in line]
    errors = [line for line in lines if line.startswith("ERROR") or "error" in line.lower()]
    return (errors or lines or ["unknown error"])[-1][:160]


def install_stamp(packages: list[str], editable_repo: bool) -> str:
    """What an environment was made from: its packages, the Python, and with tqueues from this
    repository its setup.py, so that a new dependency of tqueues installs again."""
    wanted = packages + (["-e", str(REPO)] if editable_repo else [])
    setup = (REPO / "setup.py").read_bytes() if editable_repo else b""
    return hashlib.sha256(json.dumps(wanted).encode() + sys.version.encode() + setup).hexdigest()


def ensure(name: str, packages: list[str], editable_repo: bool) -> dict[str, str]:
    """Create or update one virtual environment; the packages that failed, with why."""
    target = VENVS / name
    python = target / "bin" / "python"
    stamp_value = install_stamp(packages, editable_repo)
    stamp = target / ".bench-stamp"
    failures: dict[str, str] = {}
    if python.exists() and stamp.exists() and stamp.read_text() == stamp_value:
        return failures
    print(f"benchmark: preparing the {name} virtual environment ({len(packages)} packages)…", file=sys.stderr,
          flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
    if editable_repo:
        done = pip(python, ["-e", str(REPO)])
        if done.returncode != 0:
            failures["tqueues"] = f"failed: pip install -e . ({last_line(done.stderr)})"
    done = pip(python, packages)
    if done.returncode != 0:
        # One at a time, to tell which one fails; the rest stay usable.
        for package in packages:
            one = pip(python, [package])
            if one.returncode != 0:
                failures[package.split("[")[0]] = f"failed: pip install {package} ({last_line(one.stderr)})"
    if not failures:
        stamp.write_text(stamp_value)
    return failures


def compile_sources() -> None:
    """Byte-compile tqueues and the harness' own modules for every environment's Python, as
    ``pip install`` does for the peers' packages: the harness runs its processes with
    PYTHONDONTWRITEBYTECODE (nothing written into the tree while measuring), and tqueues,
    installed editable from this repository, would otherwise be compiled from source at
    every start of a worker or producer, a cost no peer pays. Files already compiled are
    skipped; a changed source is compiled again. A failure only costs those starts."""
    for name in PACKAGES:
        python = VENVS / name / "bin" / "python"
        if python.exists():
            try:
                subprocess.run([str(python), "-m", "compileall", "-q", str(REPO / "tqueues"), str(HERE / "bench")],
                               check=False, stdout=subprocess.DEVNULL, timeout=300)
            except (OSError, subprocess.SubprocessError) as exc:   # slower starts, not a failed run
                print(f"benchmark: could not byte-compile for {name}: {exc}", file=sys.stderr)


def main() -> int:
    if sys.version_info < (3, 10):
        print("benchmark: needs Python 3.10 or newer", file=sys.stderr)
        return 1
    VENVS.mkdir(exist_ok=True)
    failures: dict[str, str] = {}
    try:
        failures.update(ensure("main", PACKAGES["main"], editable_repo=True))
        for name in ("arq", "taskiq"):
            failures.update(ensure(name, PACKAGES[name], editable_repo=False))
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"benchmark: cannot prepare the virtual environments: {exc}", file=sys.stderr)
        return 1
    (VENVS / "install-failures.json").write_text(json.dumps(failures))
    python = VENVS / "main" / "bin" / "python"
    if not python.exists() or "redis" in failures or "matplotlib" in failures:
        print(f"benchmark: the harness' own packages did not install: {failures}", file=sys.stderr)
        return 1
    compile_sources()
    env = dict(os.environ, PYTHONPATH=str(HERE))
    os.chdir(HERE)
    os.execve(str(python), [str(python), "-m", "bench.main", *sys.argv[1:]], env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
