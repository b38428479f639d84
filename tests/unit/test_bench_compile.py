"""The benchmark harness byte-compiles tqueues and its own modules for every environment's Python
before measuring, although its processes run with PYTHONDONTWRITEBYTECODE; and it installs an
environment again when what it was made from changed."""

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
    (repo / "tqueues" / "store").mkdir(parents=True)
    (here / "bench" / "apps").mkdir(parents=True)
    sources = [repo / "tqueues" / "__init__.py", repo / "tqueues" / "store" / "sqlite.py",
               here / "bench" / "__init__.py", here / "bench" / "apps" / "job.py"]
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


def test_given_a_new_dependency_in_setup_py_then_the_harness_installs_its_environment_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _load_run()
    stamp = run.install_stamp  # type: ignore[attr-defined]
    monkeypatch.setattr(run, "REPO", tmp_path)
    (tmp_path / "setup.py").write_text('install_requires=["aiohttp>=3.9"]\n')
    main, apart = stamp(["redis"], editable_repo=True), stamp(["arq"], editable_repo=False)
    (tmp_path / "setup.py").write_text('install_requires=["aiohttp>=3.9", "uvloop>=0.19"]\n')
    # The environment with tqueues is made again; one without it is not
    assert stamp(["redis"], editable_repo=True) != main
    assert stamp(["arq"], editable_repo=False) == apart
    # And a changed package list makes one again too
    assert stamp(["redis", "rq"], editable_repo=True) != stamp(["redis"], editable_repo=True)
