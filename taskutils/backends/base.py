"""The ports between taskutils and the services it runs on; each backend implements them.

Code above a port never asks which backend it runs on. ``taskutils.backends.queue``
gives the queue of the backend in use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from google.appengine.api import taskqueue


class Queue(Protocol):
    """A named push queue: adds built tasks and gives back the tasks it added."""

    name: str
    backend: str  # the backend it belongs to, as settings.backend names it
    max_tasks_per_add: int  # at most this many tasks in one add_tasks
    max_transactional_tasks_per_add: int  # ... when they are added in a transaction

    def add_task(self, task: taskqueue.Task, transactional: bool = False) -> taskqueue.Task:
        """Add one task; the backend's error when the queue refuses it (a name taken, a queue unknown)."""
        ...

    def add_tasks(self, tasks: list[taskqueue.Task], transactional: bool = False) -> list[taskqueue.Task]:
        """Add tasks in as few calls as the backend allows; the added tasks, in order."""
        ...


class Trust(Protocol):
    """Decides, before a task request's body is read, that the queue sent it.

    On App Engine the handler trusts the ``X-AppEngine-*`` headers App Engine strips
    from outside requests (checked inline, on the hot path); off App Engine, with a
    ``target``, ``backends.oidc.OidcTrust`` checks the OIDC token Cloud Tasks attaches.
    """

    def verify(self, environ: Mapping[str, Any]) -> str:
        """Who sent the request when it is trusted; ``UntrustedRequestError`` saying why not, otherwise."""
        ...
