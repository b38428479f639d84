"""Pluggable stores behind one contract (:mod:`tqueues.store.base`)."""

from __future__ import annotations

from ..errors import BackendNotAvailable, ConfigurationError
from .base import Outcome, Store, Subscription, redact

__all__ = ["Outcome", "Store", "Subscription", "open_store", "redact", "DEFAULT_URL"]

DEFAULT_URL = "sqlite:///./tqueues.db"


def _sqlite(url: str, pool_size: int | None = None) -> Store:
    from .sqlite import SQLiteStore

    return SQLiteStore(url)


def _postgres(url: str, pool_size: int | None = None) -> Store:
    try:
        from .postgres import PostgresStore
    except ImportError as exc:  # pragma: no cover - asyncpg is a dependency
        raise BackendNotAvailable(f"the PostgreSQL store needs asyncpg ({exc})") from None
    return PostgresStore(url, pool_size=pool_size)


def _rethinkdb(url: str, pool_size: int | None = None) -> Store:
    try:
        from .rethinkdb import RethinkDBStore, r
    except ImportError as exc:  # pragma: no cover - the module imports its driver lazily itself
        raise BackendNotAvailable(f"the RethinkDB store cannot be loaded ({exc})") from None
    if r is None:
        raise BackendNotAvailable("the RethinkDB store needs the rethinkdb driver: pip install 'tqueues[rethinkdb]'")
    return RethinkDBStore(url, pool_size=pool_size)


BACKENDS = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
    "rethinkdb": _rethinkdb,
}


def open_store(url: str, *, pool_size: int | None = None) -> Store:
    """A store for ``url``, chosen by its scheme; its driver is imported only now.

    ``pool_size`` bounds the connections of a server backend (ignored by SQLite). The store is
    not connected yet: ``await store.open()`` (or ``async with``).
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"store URL {url!r} has no scheme; use sqlite:///PATH")
    try:
        factory = BACKENDS[scheme.lower()]
    except KeyError:
        raise ConfigurationError(f"unknown store scheme {scheme!r}; known: {', '.join(sorted(BACKENDS))}") from None
    return factory(url, pool_size=pool_size)
