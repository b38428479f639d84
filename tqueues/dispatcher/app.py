"""The dispatcher application factory: ``create_app(store, settings)``.

State lives in typed ``web.AppKey``s; background tasks (the event hub and the lease reaper)
are tied to the application's life through ``cleanup_ctx``. Nothing is global.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from ..errors import StoreUnavailable, TQueuesError
from ..store import Store
from .feeds import Hub
from .http import error_response, json_response

log = logging.getLogger("tqueues.dispatcher")


@dataclass
class Settings:
    """Dispatcher settings (all have command-line flags)."""

    lease: float = 30.0                  # seconds a claim lasts without a heartbeat
    max_wait: float = 60.0               # longest long-poll a client may ask for
    compat_wait: float = 30.0            # how long GET /?queue= blocks before answering 404
    reap_interval: float = 1.0           # how often expired leases are requeued
    worker_timeout: float = 90.0         # a worker silent this long is shown dead
    max_body: int = 16 * 1024 * 1024     # bytes
    allowed_domains: list[str] = field(default_factory=list)
    open_store: bool = True              # open (and close) the store with the app


STORE: web.AppKey[Store] = web.AppKey("store", Store)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": {"code", "message"}}``; nothing escapes as a 500 page."""
    try:
        return await handler(request)
    except StoreUnavailable as exc:
        return error_response(503, exc.code, exc.message, headers={"Retry-After": "1"})
    except TQueuesError as exc:
        # Not error_response(..., **details): a detail named like one of its parameters
        # (Conflict(status=<job status>) from abort) would collide and escape as a 500.
        status = exc.status if 400 <= exc.status < 600 else 500
        return json_response(exc.to_json(), status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        return error_response(exc.status, code, message, headers={
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")})
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "the dispatcher failed on this request; see its log")


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the origins named by ``--allowed_domains`` (none by default)."""
    settings = request.app[SETTINGS]
    origin = request.headers.get("Origin")
    allowed = origin is not None and origin_allowed(origin, settings.allowed_domains)
    if request.method == "OPTIONS" and allowed and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response = await handler(request)
    if allowed and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
        response.headers["Vary"] = "Origin"
    return response


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """True when ``origin``'s host is one of ``allowed`` (host names, or full origins)."""
    host = origin.split("://", 1)[-1].split(":", 1)[0].lower()
    for entry in allowed:
        entry = entry.strip().lower()
        if entry and (entry == origin.lower() or entry == host):
            return True
    return False


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    if app[SETTINGS].open_store:
        await store.open()
    task = asyncio.ensure_future(app[HUB].run())
    reaper = asyncio.ensure_future(_reap(app))
    try:
        yield
    finally:
        for t in (reaper, task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if app[SETTINGS].open_store:
            await store.close()


async def _reap(app: web.Application) -> None:
    store, settings = app[STORE], app[SETTINGS]
    while True:
        await asyncio.sleep(settings.reap_interval)
        try:
            count = await store.requeue_expired()
            if count:
                log.info("requeued %d job(s) whose lease expired", count)
        except TQueuesError as exc:
            log.warning("lease reaper: %s", exc)
        except Exception:
            log.exception("lease reaper failed")


def create_app(store: Store, settings: Settings | None = None) -> web.Application:
    """The dispatcher as an aiohttp application serving ``store``."""
    from . import compat, views

    settings = settings or Settings()
    app = web.Application(middlewares=[cors_middleware, errors_middleware], client_max_size=settings.max_body)
    app[STORE] = store
    app[SETTINGS] = settings
    app[HUB] = Hub(store)
    app.cleanup_ctx.append(_hub_ctx)
    for method, path, handler in (*compat.ROUTES, *views.ROUTES):
        app.router.add_route(method, path, handler)
    return app


def app_state(request: web.Request) -> tuple[Store, Settings, Hub]:
    app = request.app
    return app[STORE], app[SETTINGS], app[HUB]


__all__ = ["create_app", "Settings", "STORE", "SETTINGS", "HUB", "app_state", "Any"]
