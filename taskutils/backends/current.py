"""The store of the backend in use (``settings.backend``), made once per backend."""

from __future__ import annotations

from ..config import settings
from .appengine_store import AppEngineStore
from .base import Store

_stores: dict[str, Store] = {"appengine": AppEngineStore()}


def store() -> Store:
    """The store of the backend in use; the cloud one loads Cloud NDB on first use."""
    found = _stores.get(settings.backend)
    if found is None:
        if settings.backend != "cloud":
            raise ValueError(f"unknown backend {settings.backend!r}")
        from .cloud_store import CloudStore

        found = _stores["cloud"] = CloudStore()
    return found


def install(backend: str, replacement: Store) -> Store | None:
    """Make replacement the store of backend (to wrap it: a bench counting its calls); return the one it replaces."""
    previous = _stores.get(backend)
    _stores[backend] = replacement
    return previous
