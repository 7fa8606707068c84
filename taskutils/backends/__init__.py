"""Where tasks go and where records live: the ports (``base``) and their implementations.

``queue`` and ``store`` give those of the backend in use (``settings.backend``): App Engine's
bundled services, or the cloud backend (Cloud Datastore through Cloud NDB).
"""

from __future__ import annotations

from typing import Any

from .._sdk import HAS_SDK, require_sdk
from ..config import settings
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
    if not HAS_SDK:
        return _NoSdkQueue(name)
    from .appengine import AppEngineQueue  # the taskqueue SDK: appengine-python-standard

    return AppEngineQueue(name)


class _NoSdkQueue:
    """The App Engine backend's queue where its SDK is not installed: a task function made
    before ``configure(backend="cloud")`` holds it until then; adding to it says what to install."""

    backend = "appengine"
    max_tasks_per_add = max_transactional_tasks_per_add = 1

    def __init__(self, name: str) -> None:
        self.name = name

    def add_task(self, task: Any, transactional: bool = False) -> Any:
        require_sdk("the appengine backend (the default)")

    def add_tasks(self, tasks: list[Any], transactional: bool = False) -> list[Any]:
        require_sdk("the appengine backend (the default)")
        return []
