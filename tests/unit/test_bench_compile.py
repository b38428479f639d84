"""The benchmark harness byte-compiles its own modules for every environment's Python before
measuring, although its processes run with PYTHONDONTWRITEBYTECODE; it installs tqueues as a
regular package, again whenever its sources changed; and it installs an environment again when
its package list changed."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

RUN_PY = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def _load_run() -> object:
    spec = importlib.util.spec_from_file_location("bench_run_under_test", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_given_sources_without_bytecode_when_the_harness_prepares_then_each_module_is_compiled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _load_run()
    repo, here, venvs = tmp_path / "repo", tmp_path / "repo" / "benchmarks", tmp_path / "venvs"
    (here / "bench" / "apps").mkdir(parents=True)
    sources = [here / "bench" / "__init__.py", here / "bench" / "apps" / "job.py"]
    for source in sources:
        source.write_text("VALUE = 1\n")
    # One environment whose Python is this one; the others have none and are passed over.
    (venvs / "main" / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venvs / "main" / "bin" / "python")
    monkeypatch.setattr(run, "REPO", repo)
    monkeypatch.setattr(run, "HERE", here)
    monkeypatch.setattr(run, "VENVS", venvs)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")

    run.compile_sources()  # type: ignore[attr-defined]

    tag = sys.implementation.cache_tag
    for source in sources:
        assert (source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc").is_file(), source


def test_given_a_change_of_tqueues_or_setup_py_then_the_harness_installs_tqueues_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _load_run()
    stamp = run.source_stamp  # type: ignore[attr-defined]
    monkeypatch.setattr(run, "REPO", tmp_path)
    (tmp_path / "tqueues" / "store").mkdir(parents=True)
    (tmp_path / "setup.py").write_text('install_requires=["aiohttp>=3.9"]\n')
    (tmp_path / "tqueues" / "__init__.py").write_text("VALUE = 1\n")
    (tmp_path / "tqueues" / "store" / "sqlite.py").write_text("VALUE = 1\n")
    first = stamp()
    # Bytecode written beside the sources changes nothing
    (tmp_path / "tqueues" / "__pycache__").mkdir()
    (tmp_path / "tqueues" / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    assert stamp() == first
    (tmp_path / "tqueues" / "store" / "sqlite.py").write_text("VALUE = 2\n")
    second = stamp()
    assert second != first
    (tmp_path / "setup.py").write_text('install_requires=["aiohttp>=3.9", "uvloop>=0.19"]\n')
    assert stamp() != second
    # A new file in the package counts too
    third = stamp()
    (tmp_path / "tqueues" / "store" / "other.py").write_text("")
    assert stamp() != third


def test_given_a_checkout_then_tqueues_runs_from_its_installed_copy_and_a_changed_source_is_installed_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pip into a real virtual environment: the package lands in site-packages (no
    editable hook, no path back to the checkout), follows an edit of the checkout, and an
    unchanged checkout is not installed again."""
    import subprocess
    import venv

    run = _load_run()
    repo = tmp_path / "repo"
    (repo / "tqueues").mkdir(parents=True)
    (repo / "setup.py").write_text("from setuptools import setup\nsetup(name='tqueues', version='0.1.0', packages=['tqueues'])\n")
    (repo / "tqueues" / "__init__.py").write_text("VALUE = 1\n")
    monkeypatch.setattr(run, "REPO", repo)
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    probe = "import tqueues, sys; print(tqueues.VALUE, tqueues.__file__, any('editable' in p for p in map(str, sys.meta_path)))"

    def installed() -> list[str]:
        # From another directory than the checkout, so that only the installed copy can be found
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
        return out.stdout.split()

    assert run.ensure_tqueues(python) == {}  # type: ignore[attr-defined]
    value, where, editable = installed()
    assert value == "1" and "site-packages" in where and editable == "False"
    stamp = env_dir / ".tqueues-stamp"
    stamped = stamp.stat().st_mtime_ns

    assert run.ensure_tqueues(python) == {}  # type: ignore[attr-defined]
    assert stamp.stat().st_mtime_ns == stamped   # nothing changed: no install

    (repo / "tqueues" / "__init__.py").write_text("VALUE = 2\n")
    assert run.ensure_tqueues(python) == {}  # type: ignore[attr-defined]
    assert installed()[0] == "2"


def test_given_a_changed_package_list_then_the_harness_installs_its_environment_again() -> None:
    run = _load_run()
    stamp = run.install_stamp  # type: ignore[attr-defined]
    assert stamp(["redis"]) == stamp(["redis"])
    assert stamp(["redis", "rq"]) != stamp(["redis"])
