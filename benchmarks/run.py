#!/usr/bin/env python3
"""Benchmark tqueues against other Python job queues: ``python3 benchmarks/run.py [--quick]``.

This file only prepares the virtual environments (``benchmarks/.venv-peers/``: ``main`` with
tqueues from this repository and most peers; ``arq`` and ``taskiq`` apart, because their
redis client pins conflict with Celery's), then runs the harness (:mod:`bench.main`) inside ``main``. It installs
the peers again only when the package list below changes, and tqueues when its sources or setup.py do. A package
that fails to install is noted, and its system is reported as failed in the results while the others run.

tqueues is installed as users install it, a regular package (``pip install .``), like every peer. An editable
install (``pip install -e .``) costs each Python process that imports it an import hook and pathlib at start,
about 30 ms of a worker's start on a 2-core machine, which a measurement from the workers' spawn would count
against tqueues alone.
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


def install_stamp(packages: list[str]) -> str:
    """What an environment's peers were installed from: their packages and the Python."""
    return hashlib.sha256(json.dumps(packages).encode() + sys.version.encode()).hexdigest()


def source_stamp() -> str:
    """What the installed tqueues was built from: setup.py and every file of the package, so that
    the environment runs the sources of this checkout."""
    digest = hashlib.sha256(sys.version.encode())
    for path in sorted([REPO / "setup.py", *(REPO / "tqueues").rglob("*")]):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_tqueues(python: Path) -> dict[str, str]:
    """Install tqueues from this repository into an environment (with its dependencies), again
    whenever its sources changed: pip builds and reinstalls a package given as a directory
    even when the same version is installed."""
    stamp = python.parent.parent / ".tqueues-stamp"
    stamp_value = source_stamp()
    if stamp.exists() and stamp.read_text() == stamp_value:
        return {}
    print("benchmark: installing tqueues from this repository…", file=sys.stderr, flush=True)
    done = pip(python, [str(REPO)])
    if done.returncode != 0:
        stamp.unlink(missing_ok=True)
        return {"tqueues": f"failed: pip install . ({last_line(done.stderr)})"}
    stamp.write_text(stamp_value)
    return {}


def ensure(name: str, packages: list[str], with_tqueues: bool) -> dict[str, str]:
    """Create or update one virtual environment; the packages that failed, with why."""
    target = VENVS / name
    python = target / "bin" / "python"
    stamp_value = install_stamp(packages)
    stamp = target / ".bench-stamp"
    failures: dict[str, str] = {}
    if python.exists() and stamp.exists() and stamp.read_text() == stamp_value:
        return ensure_tqueues(python) if with_tqueues else failures
    print(f"benchmark: preparing the {name} virtual environment ({len(packages)} packages)…", file=sys.stderr,
          flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(target)
    if with_tqueues:
        failures.update(ensure_tqueues(python))
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
    """Byte-compile the harness' own modules for every environment's Python, as ``pip install``
    does for the packages (tqueues' included): the harness runs its processes with
    PYTHONDONTWRITEBYTECODE (nothing written into the tree while measuring), and its job
    modules would otherwise be compiled from source at every start of a worker or producer.
    Files already compiled are skipped; a changed source is compiled again. A failure only
    costs those starts."""
    for name in PACKAGES:
        python = VENVS / name / "bin" / "python"
        if python.exists():
            try:
                subprocess.run([str(python), "-m", "compileall", "-q", str(HERE / "bench")],
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
        failures.update(ensure("main", PACKAGES["main"], with_tqueues=True))
        for name in ("arq", "taskiq"):
            failures.update(ensure(name, PACKAGES[name], with_tqueues=False))
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
