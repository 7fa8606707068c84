"""Where tasks go: the ports (``base``) and their implementations (App Engine's bundled services, the cloud)."""

from __future__ import annotations

from ..config import settings
from .appengine import AppEngineQueue
from .base import Queue

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
