"""The dispatcher: an aiohttp application in front of a store."""

from __future__ import annotations

from .app import AUTH, HUB, LIMITER, SETTINGS, STORE, Settings, create_app

__all__ = ["create_app", "Settings", "STORE", "SETTINGS", "HUB", "AUTH", "LIMITER"]
