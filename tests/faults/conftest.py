"""Fault-test fixtures: the acceptance ``cluster``, the harness ``rig`` and the run ``size``.

``size(quick, soak=None)`` is ``quick`` by default and ``soak`` (ten times ``quick`` unless
given) under ``pytest --soak``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from acceptance.conftest import cluster  # noqa: F401 - a fixture, used by name
from faults.harness import Rig, Size
from support import pg

SOAK_TIMEOUT = 3600


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--soak"):
        return
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT))


@pytest.fixture
def size(request: pytest.FixtureRequest) -> Size:
    return Size(bool(request.config.getoption("--soak")))


@pytest.fixture
def rig(tmp_path: Path, db_url: str, backend: str, size: Size, request: pytest.FixtureRequest) -> Iterator[Rig]:
    r = Rig(tmp_path, db_url, backend, size)
    yield r
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(r.logs())
    r.close()


@pytest.fixture
def pg_rig(tmp_path: Path, pg_cluster: pg.Cluster, pg_url: str, size: Size, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A rig on a fresh database of the throw-away PostgreSQL server the tests started, which
    the test may restart; skipped when the server is an external one (TQUEUES_TEST_POSTGRES)."""
    if not pg_cluster.own:
        pytest.skip(f"{pg.ENV} names an external PostgreSQL server: these tests must not restart it")
    r = Rig(tmp_path, pg_url, "postgresql", size)
    yield r
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(r.logs())
    r.close()
