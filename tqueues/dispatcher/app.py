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
from . import auth, ui
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
    auth: bool = False                   # require a token on every route but the health check
    tokens_file: str | None = None       # extra tokens, JSON (see auth.load_tokens_file)
    jwt_public_key: str | None = None    # PEM file: accept RS256 JWTs signed by its private key
    jwt_audience: str = "tqueues"
    rate_limit: float = 0.0              # requests per second per principal (0: no limit)
    rate_burst: float = 0.0              # bucket size (default: twice the rate)


STORE: web.AppKey[Store] = web.AppKey("store", Store)
SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
AUTH: web.AppKey[auth.Authenticator] = web.AppKey("auth", auth.Authenticator)
LIMITER: web.AppKey[auth.RateLimiter] = web.AppKey("limiter", auth.RateLimiter)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_answer(exc: TQueuesError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, JSON body and headers that answer a tqueues error (HTTP and websocket
    channels alike): 503 + Retry-After while the store is away, 429 + Retry-After past a
    rate limit, 401 with a Bearer challenge, else the error's own 4xx."""
    headers: dict[str, str] = {}
    if isinstance(exc, StoreUnavailable):
        status, headers = 503, {"Retry-After": "1"}
    elif isinstance(exc, auth.RateLimited):
        status, headers = 429, {"Retry-After": auth.retry_after_header(exc)}
    elif isinstance(exc, auth.Unauthorized):
        status, headers = 401, {"WWW-Authenticate": 'Bearer realm="tqueues"'}
    else:
        status = exc.status if 400 <= exc.status < 600 else 500
    # exc.to_json(), not error_response(..., **details): a detail named like one of its
    # parameters (Conflict(status=<job status>) from abort) would collide and escape as a 500.
    return status, exc.to_json(), headers


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": {"code", "message"}}``; nothing escapes as a 500 page."""
    try:
        return await handler(request)
    except TQueuesError as exc:
        status, body, headers = error_answer(exc)
        return json_response(body, status, headers)
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
    """CORS for the origins named by ``--allowed_domains`` (none by default).

    A listed origin is echoed with ``Access-Control-Allow-Credentials``; ``*`` allows any
    origin but never with credentials.
    """
    settings = request.app[SETTINGS]
    origin = request.headers.get("Origin")
    listed = origin is not None and origin_allowed(origin, settings.allowed_domains)
    wildcard = origin is not None and not listed and "*" in settings.allowed_domains
    if request.method == "OPTIONS" and (listed or wildcard) and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        response = await handler(request)
    if not response.prepared:
        if listed:
            response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        elif wildcard:
            response.headers["Access-Control-Allow-Origin"] = "*"
    return response


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    """True when ``origin`` is listed in ``allowed`` (as a host name or a full origin; ``*`` is
    not a listing)."""
    host = origin.split("://", 1)[-1].split(":", 1)[0].lower()
    for entry in allowed:
        entry = entry.strip().lower()
        if entry and entry != "*" and (entry == origin.lower() or entry == host):
            return True
    return False


def same_origin(request: web.Request, origin: str) -> bool:
    """True when ``origin`` is this dispatcher itself (its dashboard)."""
    return origin.split("://", 1)[-1].lower() == request.host.lower()


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Origins of websocket upgrades, then authentication, route scopes and rate limits."""
    if request.path.startswith(auth.OPEN_PREFIXES) or request.path == "/ui":
        return await handler(request)
    if ui.wants_dashboard(request):
        return await ui.redirect(request)
    settings = request.app[SETTINGS]
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"
    origin = request.headers.get("Origin")
    if websocket and origin is not None and not (
            same_origin(request, origin) or origin_allowed(origin, settings.allowed_domains)
            or "*" in settings.allowed_domains):
        raise auth.Forbidden("websocket connections from this origin are not allowed (see --allowed_domains)")
    resource = request.match_info.route.resource
    key = (request.method, resource.canonical if resource is not None else "")
    scopes = auth.ROUTE_SCOPES.get(key, auth.SCOPES)
    if scopes is None:
        return await handler(request)
    await admit(request, auth.bearer(request.headers, request.query, websocket), scopes)
    return await handler(request)


async def admit(request: web.Request, token: str | None, scopes: tuple[str, ...]) -> None:
    """Authenticate ``token``, require one of ``scopes``, count one request against the rate
    limit and record the principal on ``request`` (each message of the enqueue websocket is
    admitted this way too)."""
    principal = await request.app[AUTH].authenticate(token)
    if not principal.has(*scopes):
        raise auth.Forbidden(f"this token lacks the {' or '.join(scopes)} scope")
    request.app[LIMITER].check(principal.id if principal.kind != "anonymous" else f"addr:{request.remote}")
    request[auth.PRINCIPAL] = principal


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE]
    if app[SETTINGS].open_store:
        await store.open()
    from .views import STRICT_QUEUES

    await app[STRICT_QUEUES].load(store)
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


async def _shutdown(app: web.Application) -> None:
    await app[HUB].shutdown()


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
    from . import channel, compat, views

    settings = settings or Settings()
    app = web.Application(middlewares=[cors_middleware, errors_middleware, auth_middleware],
                          client_max_size=settings.max_body)
    app[STORE] = store
    app[SETTINGS] = settings
    app[HUB] = Hub(store)
    app[AUTH] = auth.Authenticator(
        store, enabled=settings.auth,
        file_tokens=auth.load_tokens_file(settings.tokens_file) if settings.tokens_file else {},
        jwt_key=auth.load_public_key(settings.jwt_public_key) if settings.jwt_public_key else None,
        jwt_audience=settings.jwt_audience)
    app[LIMITER] = auth.RateLimiter(settings.rate_limit, settings.rate_burst or 2 * settings.rate_limit)
    app[views.STRICT_QUEUES] = views.StrictQueues()
    app[HUB].observers.append(app[views.STRICT_QUEUES].observe)
    app.cleanup_ctx.append(_hub_ctx)
    app.on_shutdown.append(_shutdown)
    for method, path, handler in (*compat.ROUTES, *views.ROUTES, *channel.ROUTES, *ui.ROUTES):
        app.router.add_route(method, path, handler)
    return app


def app_state(request: web.Request) -> tuple[Store, Settings, Hub]:
    app = request.app
    return app[STORE], app[SETTINGS], app[HUB]


__all__ = ["create_app", "Settings", "STORE", "SETTINGS", "HUB", "AUTH", "LIMITER", "app_state", "Any"]
