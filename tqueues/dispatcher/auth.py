"""Authentication, authorisation and rate limits of the dispatcher.

Who may do what
    A request presents ``Authorization: Bearer <token>`` (websockets from a browser may pass
    ``?token=`` instead). Two kinds of token are accepted:

    * **tqueues tokens** ``tq_<id>_<secret>``, made by ``tqueues token create`` and kept in the
      store as a SHA-256 hash (the token itself is shown once and never stored), or listed in
      a ``--tokens-file``;
    * **JWTs** signed with RS256 and checked against ``--jwt-public-key``: the algorithm is
      pinned (``none`` and HS256 are refused), ``exp`` and ``aud`` are required. Claims:
      ``scope`` (space-separated) or ``scopes``, ``queues`` and ``methods`` (globs), ``sub``.

    A principal holds scopes (``submit``, ``work``, ``read``, ``admin``; ``admin`` implies the
    others), the queue globs it may touch and the method globs it may enqueue. Each route
    names the scopes that open it (:data:`ROUTE_SCOPES`); handlers then check the queues and
    jobs the request touches. Failing authentication is 401, lacking a right is 403; neither
    answer repeats what was presented.

Leases
    With authentication on, the lease tokens a principal receives start with its id, so a
    ``work`` token can only heartbeat, complete or release the leases it was handed.
"""

from __future__ import annotations

import asyncio
import collections
import fnmatch
import hashlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from aiohttp import web

from .. import models
from ..errors import Forbidden, InvalidRequest, NotFound, RateLimited, Unauthorized

log = logging.getLogger("tqueues.dispatcher.auth")

SCOPES = ("submit", "work", "read", "admin")
TOKEN_PREFIX = "tq_"
CACHE_SECONDS = 1.0        # a revoked token stops working within this long
MAX_RATE_KEYS = 10_000     # principals tracked by the rate limiter (least recently seen dropped)


@dataclass(frozen=True)
class Principal:
    """Who made a request and what it may do."""

    id: str
    scopes: frozenset[str]
    queues: tuple[str, ...] = ("*",)
    methods: tuple[str, ...] = ("*",)
    kind: str = "token"

    def has(self, *scopes: str) -> bool:
        return "admin" in self.scopes or any(scope in self.scopes for scope in scopes)

    @property
    def all_queues(self) -> bool:
        return "*" in self.queues

    def queue_allowed(self, queue: str) -> bool:
        # "*" (every queue: no token, or an unrestricted one) matches without a pattern match
        return "*" in self.queues or any(fnmatch.fnmatchcase(queue, glob) for glob in self.queues)

    def method_allowed(self, method: str) -> bool:
        return "*" in self.methods or any(fnmatch.fnmatchcase(method, glob) for glob in self.methods)

    @property
    def lease_prefix(self) -> str:
        return "" if self.kind == "anonymous" else f"{self.id}."


ANONYMOUS = Principal("anonymous", frozenset(SCOPES), kind="anonymous")

# Where the middleware keeps the principal of a request (typed key where aiohttp has them).
PRINCIPAL: Any = web.RequestKey("principal", Principal) if hasattr(web, "RequestKey") else "tqueues.principal"


# ---------------------------------------------------------------------------- tokens

def hash_token(token: str) -> str:
    """The stored form of a token (tokens are long and random, so a plain SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh ``(token, id)``: ``tq_<id>_<secret>``."""
    token_id = secrets.token_hex(6)
    return f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}", token_id


def token_id_of(token: str) -> str | None:
    """The id inside a tqueues token, or None when ``token`` is not shaped like one."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token[len(TOKEN_PREFIX):].partition("_")
    return token_id if sep and token_id and secret else None


def check_scopes(scopes: Iterable[Any]) -> list[str]:
    given = list(scopes)
    if not given or not all(isinstance(scope, str) and scope in SCOPES for scope in given):
        raise InvalidRequest(f"scope: each must be one of {', '.join(SCOPES)}", field="scope")
    return sorted(set(given))


def check_globs(globs: Iterable[Any], name: str) -> list[str]:
    given = list(globs)
    for glob in given:
        if not isinstance(glob, str) or not glob or len(glob) > 256:
            raise InvalidRequest(f"{name}: globs must be strings of 1-256 characters", field=name)
    return list(dict.fromkeys(given)) or ["*"]


async def create_token(store: Any, scopes: Iterable[str], queues: Iterable[str] = ("*",),
                       methods: Iterable[str] = ("*",), name: str | None = None,
                       expires_in: float | None = None) -> tuple[str, dict[str, Any]]:
    """Make a token and store its hash; ``(token, record)``. The token is not kept anywhere."""
    token, token_id = new_token()
    record = await store.create_token({
        "id": token_id, "hash": hash_token(token), "name": name, "scopes": check_scopes(scopes),
        "queues": check_globs(queues, "queue"), "methods": check_globs(methods, "method"),
        "expires_at": models.now() + expires_in if expires_in else None})
    return token, record


def load_tokens_file(path: str) -> dict[str, Principal]:
    """Tokens given in a JSON file: ``[{"token", "scopes", "queues"?, "methods"?, "name"?}]``.

    Keyed by the token's hash, so the tokens themselves are not kept in memory.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            entries = models.loads(handle.read())
    except OSError as exc:
        raise InvalidRequest(f"--tokens-file {path}: {exc.strerror}") from None
    except ValueError:
        raise InvalidRequest(f"--tokens-file {path}: not JSON") from None
    if not isinstance(entries, list):
        raise InvalidRequest(f"--tokens-file {path}: a JSON list of tokens is required")
    out: dict[str, Principal] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or len(entry["token"]) < 16:
            raise InvalidRequest(f"--tokens-file {path}: entry {index} needs a token of 16 characters or more")
        out[hash_token(entry["token"])] = Principal(
            id=str(entry.get("name") or f"file{index}"), scopes=frozenset(check_scopes(entry.get("scopes") or [])),
            queues=tuple(check_globs(entry.get("queues") or ["*"], "queue")),
            methods=tuple(check_globs(entry.get("methods") or ["*"], "method")), kind="file")
    return out


# ---------------------------------------------------------------------------- authentication

@dataclass
class Authenticator:
    """Turns a presented token into a Principal (or refuses it)."""

    store: Any
    enabled: bool = False
    file_tokens: dict[str, Principal] = field(default_factory=dict)
    jwt_key: Any = None
    jwt_audience: str = "tqueues"
    _cache: dict[str, tuple[float, Principal | None]] = field(default_factory=dict)

    async def authenticate(self, token: str | None) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        if not token:
            raise Unauthorized()
        digest = hash_token(token)
        if digest in self.file_tokens:
            return self.file_tokens[digest]
        if token.count(".") == 2 and self.jwt_key is not None:
            return self._jwt(token)
        token_id = token_id_of(token)
        if token_id is None:
            raise Unauthorized("the token is not valid")
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is None or cached[0] < now:
            principal = await self._lookup(token_id, digest)
            if len(self._cache) > MAX_RATE_KEYS:
                self._cache.clear()
            self._cache[digest] = (now + CACHE_SECONDS, principal)
        else:
            principal = cached[1]
        if principal is None:
            raise Unauthorized("the token is not valid")
        return principal

    async def _lookup(self, token_id: str, digest: str) -> Principal | None:
        try:
            record = await self.store.token(token_id)
        except NotFound:
            return None
        if not hmac.compare_digest(record["hash"], digest) or record["revoked_at"] is not None:
            return None
        if record["expires_at"] is not None and record["expires_at"] < models.now():
            return None
        return Principal(id=record["id"], scopes=frozenset(record["scopes"]), queues=tuple(record["queues"]),
                         methods=tuple(record["methods"]))

    def _jwt(self, token: str) -> Principal:
        import jwt

        try:
            claims = jwt.decode(token, self.jwt_key, algorithms=["RS256"], audience=self.jwt_audience,
                                options={"require": ["exp", "aud"]})
        except jwt.PyJWTError:
            raise Unauthorized("the token is not valid") from None
        raw_scopes = claims.get("scopes", claims.get("scope", ""))
        scopes = raw_scopes.split() if isinstance(raw_scopes, str) else raw_scopes
        if not isinstance(scopes, list) or not all(s in SCOPES for s in scopes) or not scopes:
            raise Unauthorized("the token names no valid scope")
        queues = claims.get("queues") or ["*"]
        methods = claims.get("methods") or ["*"]
        if not all(isinstance(q, str) for q in queues) or not all(isinstance(m, str) for m in methods):
            raise Unauthorized("the token's queues and methods must be lists of strings")
        subject = str(claims.get("sub") or "jwt")[:64].replace(".", "_")
        return Principal(id=f"jwt-{subject}", scopes=frozenset(scopes), queues=tuple(queues), methods=tuple(methods),
                         kind="jwt")


def load_public_key(path: str) -> Any:
    """The RS256 verification key from a PEM file (needs the ``cryptography`` package)."""
    try:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key
    except ImportError:
        raise InvalidRequest("JWT verification needs PyJWT and cryptography: pip install 'tqueues[jwt]'") from None
    try:
        with open(path, "rb") as handle:
            key = load_pem_public_key(handle.read())
    except OSError as exc:
        raise InvalidRequest(f"--jwt-public-key {path}: {exc.strerror}") from None
    except ValueError:
        raise InvalidRequest(f"--jwt-public-key {path}: not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise InvalidRequest(f"--jwt-public-key {path}: an RSA public key is required (RS256)")
    return key


def bearer(headers: Any, query: Any, websocket: bool) -> str | None:
    """The token a request presents (``?token=`` only on websocket upgrades, where browsers
    cannot set headers)."""
    header = headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if websocket:
        return query.get("token") or None
    return None


# ---------------------------------------------------------------------------- authorisation

# Which scopes open each route; handlers check queues and jobs on top. None: open to all.
ROUTE_SCOPES: dict[tuple[str, str], tuple[str, ...] | None] = {
    ("POST", "/api/v1/jobs"): ("submit",),
    ("GET", "/api/v1/enqueue"): ("submit",),
    ("GET", "/api/v1/jobs"): ("read", "submit"),
    ("GET", "/api/v1/jobs/{id}"): ("read", "submit", "work"),
    ("PATCH", "/api/v1/jobs/{id}"): ("work",),
    ("POST", "/api/v1/jobs/{id}/abort"): ("admin",),
    ("POST", "/api/v1/jobs/{id}/retry"): ("admin",),
    ("GET", "/api/v1/jobs/{id}/executions"): ("read", "submit"),
    ("GET", "/api/v1/jobs/{id}/logs"): ("read", "submit"),
    ("POST", "/api/v1/jobs/{id}/complete"): ("work",),
    ("POST", "/api/v1/jobs/{id}/fail"): ("work",),
    ("POST", "/api/v1/jobs/{id}/heartbeat"): ("work",),
    ("POST", "/api/v1/jobs/{id}/release"): ("work",),
    ("POST", "/api/v1/logs"): ("work",),
    ("POST", "/api/v1/claim"): ("work",),
    ("POST", "/api/v1/complete"): ("work",),
    ("POST", "/api/v1/heartbeat"): ("work",),
    ("POST", "/api/v1/release"): ("work",),
    ("GET", "/api/v1/queues"): ("read",),
    ("PUT", "/api/v1/queues/{name}"): ("admin",),
    ("POST", "/api/v1/queues/{name}/pause"): ("admin",),
    ("POST", "/api/v1/queues/{name}/resume"): ("admin",),
    ("POST", "/api/v1/workers"): ("work",),
    ("GET", "/api/v1/workers"): ("read",),
    ("POST", "/api/v1/workers/{id}/stop"): ("admin",),
    ("GET", "/api/v1/stats"): ("read",),
    ("POST", "/api/v1/prune"): ("admin",),
    ("GET", "/api/v1/events"): ("read", "submit", "work"),   # workers follow aborts of their queues
    ("GET", "/api/v1/tokens"): ("admin",),
    ("POST", "/api/v1/tokens"): ("admin",),
    ("DELETE", "/api/v1/tokens/{id}"): ("admin",),
    ("GET", "/api/v1/openapi.json"): SCOPES,
    ("GET", "/api/v1/health"): None,
    ("GET", "/api/v1/me"): SCOPES,
    # the TQueues root API
    ("GET", "/"): ("work",),
    ("POST", "/"): ("submit",),
    ("PUT", "/"): ("admin",),
    ("PATCH", "/"): ("work",),
    ("DELETE", "/"): ("work",),
    ("GET", "/ws"): ("read", "submit"),
}
OPEN_PREFIXES = ("/ui/",)   # the dashboard's static files: it asks for a token itself


def principal_of(request: Any) -> Principal:
    return request.get(PRINCIPAL, ANONYMOUS)


def require_queue(request: Any, queue: str) -> None:
    if not principal_of(request).queue_allowed(queue):
        raise Forbidden(f"this token does not allow queue {queue!r}")


def require_queues(request: Any, queues: Iterable[str]) -> None:
    for queue in queues:
        require_queue(request, queue)


def require_all_queues(request: Any, what: str) -> None:
    if not principal_of(request).all_queues:
        raise Forbidden(f"this token is limited to some queues: {what} needs a queue filter")


def require_method(request: Any, method: str) -> None:
    if not principal_of(request).method_allowed(method):
        raise Forbidden(f"this token does not allow method {method!r}")


def require_lease(request: Any, lease: str | None) -> None:
    """A work principal may only use the leases it was handed."""
    principal = principal_of(request)
    if principal.kind == "anonymous" or "admin" in principal.scopes:
        return
    if lease is None or not lease.startswith(principal.lease_prefix):
        raise Forbidden("this lease was not handed to this token")


# ---------------------------------------------------------------------------- rate limits

class RateLimiter:
    """A token bucket per principal (per client address when anonymous), bounded in memory."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def check(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, stamp = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited(retry_after=(1.0 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > MAX_RATE_KEYS:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


def retry_after_header(exc: RateLimited) -> str:
    return str(max(1, math.ceil(exc.retry_after)))


__all__ = ["ANONYMOUS", "Authenticator", "Forbidden", "Principal", "RateLimited", "RateLimiter", "ROUTE_SCOPES",
           "Unauthorized", "asyncio"]
