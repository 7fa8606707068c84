"""Where tasks go and where records live: the ports (``base``) and their implementations.

``queue`` and ``store`` give those of the backend in use (``settings.backend``): App Engine's
bundled services, or the cloud backend (Cloud Datastore through Cloud NDB).
"""

from __future__ import annotations

from .appengine import AppEngineQueue
from .base import Queue, Store
from .current import store as store

__all__ = ["Queue", "Store", "queue", "store"]


def queue(name: str) -> Queue:
    """The push queue called name, on the backend in use (App Engine's taskqueue SDK, the only one yet)."""
    return AppEngineQueue(name)
