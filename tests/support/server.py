"""A dispatcher application served in-process on a real loopback port."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from tqueues.store import Store


class Server:
    def __init__(self, url: str, app: web.Application, store: Store, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.app = app
        self.store = store
        self.session = session

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """``(status, decoded JSON body or text)`` of one request."""
        async with self.session.request(method, self.url + path.lstrip("/"), **kwargs) as response:
            raw = await response.read()
            try:
                body = await response.json(content_type=None) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return response.status, body
