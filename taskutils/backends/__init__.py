"""Where tasks go: the ports (``base``) and their implementation on App Engine's bundled services."""

from __future__ import annotations

from .appengine import AppEngineQueue
from .base import Queue


def queue(name: str) -> Queue:
    """The push queue called name, on the backend in use (App Engine's taskqueue SDK, the only one yet)."""
    return AppEngineQueue(name)
