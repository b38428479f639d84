"""The dashboard: static files served at ``/ui/`` (and at ``/`` when a browser asks for a page).

The files live in the package (``tqueues/dispatcher/ui/``): plain HTML, CSS and JavaScript with
no build step and nothing fetched from elsewhere, so the dashboard works on a machine with no
internet access. They are read once at start-up and served from memory with an ETag. The files
themselves are public; every call the page makes goes through the API's authentication.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from aiohttp import web

from ..errors import NotFound

TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml"}
# The page may load only its own files and talk only to its own dispatcher.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:;"
                               " style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _load() -> dict[str, tuple[bytes, str, str]]:
    """``{name: (body, content type, etag)}`` for every file of the dashboard."""
    files: dict[str, tuple[bytes, str, str]] = {}
    for entry in resources.files("tqueues.dispatcher").joinpath("ui").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            body = entry.read_bytes()
            files[entry.name] = (body, TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return files


FILES = _load()


def wants_dashboard(request: web.Request) -> bool:
    """A browser opening the dispatcher's root (``GET /`` asking for HTML, without the
    ``?queue=`` of a TQueues claim)."""
    return (request.method == "GET" and request.path == "/" and "queue" not in request.query
            and "text/html" in request.headers.get("Accept", ""))


async def redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info.get("name") or "index.html"
    try:
        body, content_type, etag = FILES[name]
    except KeyError:
        raise NotFound(f"the dashboard has no file {name!r}") from None
    headers: dict[str, Any] = {"ETag": etag, "Cache-Control": "no-cache", **SECURITY_HEADERS}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if content_type.startswith("text/") or content_type.endswith("+xml") else None
    return web.Response(body=body, content_type=content_type, charset=charset, headers=headers)


ROUTES = [
    ("GET", "/ui", redirect),
    ("GET", "/ui/", static),
    ("GET", "/ui/{name}", static),
]
