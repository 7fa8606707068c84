"""Where tasks go and where records live: the ports (``base``) and their implementations.

``queue`` and ``store`` give those of the backend in use (``settings.backend``): App Engine's
bundled services, or the cloud backend (Cloud Datastore through Cloud NDB).
"""

from __future__ import annotations

from ..config import settings
from .appengine import AppEngineQueue
from .base import Queue, Store
from .current import store as store

__all__ = ["Queue", "Store", "queue", "store"]

_cloud_queues: dict[str, Queue] = {}


def queue(name: str) -> Queue:
    """The push queue called name on the backend in use: the taskqueue SDK's, or Cloud Tasks' (backend="cloud").

    A task function keeps its queue, and makes a new one if ``configure`` changes the backend later.
    """
    if settings.backend == "cloud":
        found = _cloud_queues.get(name)
        if found is None:
            from .cloud import CloudQueue  # the [cloud] extra's packages load on first use

            found = _cloud_queues[name] = CloudQueue(name)
        return found
    return AppEngineQueue(name)
