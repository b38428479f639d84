"""A dashboard under test: a dispatcher process on a fresh SQLite file, workers, pages."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from support.procs import Proc, start_dispatcher, start_worker

from tqueues.client import SyncClient

QUEUE = "ui"
# Screenshots of the main pages go here (the ones in docs/ were made with
# TQUEUES_SCREENSHOTS=docs/img); by default into each test's temporary directory.
SCREENSHOTS = os.environ.get("TQUEUES_SCREENSHOTS")


class Dashboard:
    """A dispatcher process on a fresh SQLite file, worker processes, an API client and pages."""

    def __init__(self, tmp: Path, browser: Any) -> None:
        self.tmp = tmp
        self.browser = browser
        self.procs: list[Proc] = []
        self.pages: list[Any] = []
        self.errors: list[str] = []
        self.db_url = f"sqlite:///{tmp / 'tqueues.db'}"
        self.url = ""
        self.dispatcher: Proc | None = None
        self.client: SyncClient | None = None
        self.port = 0

    def start(self, *extra: str, token: str | None = None, port: int | None = None) -> str:
        self.dispatcher, self.url = start_dispatcher(self.tmp, self.db_url, *extra, port=port)
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.procs.append(self.dispatcher)
        if self.client is None:
            self.client = SyncClient(self.url, token=token) if token else SyncClient(self.url)
        return self.url

    def worker(self, *extra: str, concurrency: int = 4) -> Proc:
        proc = start_worker(self.tmp, self.url, QUEUE, *extra, concurrency=concurrency)
        self.procs.append(proc)
        return proc

    def page(self, path: str = "ui/", width: int = 1280, height: int = 800) -> Any:
        context = self.browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.set_default_timeout(15_000)
        page.goto(self.url + path)
        self.pages.append(page)
        return page

    def screenshot(self, page: Any, name: str) -> Path:
        folder = Path(SCREENSHOTS) if SCREENSHOTS else self.tmp / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        page.screenshot(path=str(path))
        return path

    def tokens_file(self, entries: list[dict[str, Any]]) -> str:
        path = self.tmp / "tokens.json"
        path.write_text(json.dumps(entries))
        return str(path)

    def close(self) -> None:
        for page in self.pages:
            page.context.close()
        if self.client is not None:
            self.client.close()
        for proc in reversed(self.procs):
            proc.close()
