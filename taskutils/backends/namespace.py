"""A task's Datastore namespace on the cloud backend, carried in a header bound to its signature.

On App Engine's bundled services the taskqueue SDK sends the namespace a task was added in
(``X-AppEngine-Current-Namespace``) and ``wrap_wsgi_app`` restores it for the task. Cloud
Tasks does neither. So on the cloud backend a task added in a namespace other than the
default one (its Cloud NDB context's, or the store's ``in_namespace``) carries it in
``X-Taskutils-Namespace``; the payload is signed for it too, so no one who can post tasks
can move a task into another namespace; and the handler opens the task's Cloud NDB context
in it. A task's records (a spilled payload, its handle, its group) are then found where
the caller wrote them, and task code sees the namespace the caller had, as on App Engine.
"""

from __future__ import annotations

import re
from typing import Any

from ..config import settings

HEADER = "X-Taskutils-Namespace"
ENVIRON_KEY = "HTTP_X_TASKUTILS_NAMESPACE"
_VALID = re.compile(r"[0-9A-Za-z._-]{1,100}")  # Datastore's namespace names


def carried() -> str:
    """The namespace a task added here carries: "" on App Engine's bundled services (the SDK
    carries it there) and in the default namespace."""
    if settings.backend != "cloud":
        return ""
    from .cloud_store import current_namespace

    return current_namespace()


def carried_in(task_kwargs: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """task_kwargs with the namespace header added where a task carries one, and that namespace ("" if none)."""
    namespace = carried()
    if namespace:
        task_kwargs = {**task_kwargs, "headers": {**task_kwargs["headers"], HEADER: namespace}}
    return task_kwargs, namespace


def scope(namespace: str, signed_for: str) -> str:
    """What a payload added in namespace is signed for: ``signed_for`` bound to the namespace."""
    return f"namespace {namespace} {signed_for}" if namespace else signed_for


def checked(value: str) -> str:
    """A namespace from a request's header; ValueError unless it is a Datastore namespace name."""
    if not _VALID.fullmatch(value):
        raise ValueError(f"{value[:120]!r} is not a Datastore namespace")
    return value
