"""Dashboard tests: a real dispatcher and worker processes, driven through headless Chromium.

Chromium is the system's (Debian's ``chromium`` package, which ``scripts/test.sh`` installs when
it is missing), driven by Playwright; no browser is downloaded. The tests use Playwright's
synchronous API, so they are plain (not async) test functions.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from support.dashboard import Dashboard

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("TQUEUES_TEST_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip("dashboard tests skipped: no chromium found (apt-get install chromium, or set TQUEUES_TEST_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("dashboard tests skipped: playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def dash(tmp_path: Path, browser: Any, request: pytest.FixtureRequest) -> Iterator[Dashboard]:
    board = Dashboard(tmp_path, browser)
    yield board
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for proc in board.procs:
            print(f"===== {proc.args[2:4]}\n{proc.output()[-3000:]}")
    board.close()
    assert not board.errors, f"the page threw: {board.errors}"
