"""The store of the backend in use (``settings.backend``), made once per backend."""

from __future__ import annotations

from .._sdk import require_sdk
from ..config import settings
from .base import Store

_stores: dict[str, Store] = {}


def store() -> Store:
    """The store of the backend in use, made on first use: bundled Datastore needs the SDK, the
    cloud one loads Cloud NDB."""
    found = _stores.get(settings.backend)
    if found is None:
        if settings.backend == "cloud":
            from .cloud_store import CloudStore

            found = _stores["cloud"] = CloudStore()
        elif settings.backend == "appengine":
            require_sdk("the appengine backend")
            from .appengine_store import AppEngineStore

            found = _stores["appengine"] = AppEngineStore()
        else:
            raise ValueError(f"unknown backend {settings.backend!r}")
    return found


def install(backend: str, replacement: Store) -> Store | None:
    """Make replacement the store of backend (to wrap it: a bench counting its calls); return the one it replaces."""
    previous = _stores.get(backend)
    _stores[backend] = replacement
    return previous
