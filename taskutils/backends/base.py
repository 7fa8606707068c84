"""The ports between taskutils and the services it runs on; each backend implements them.

Code above a port never asks which backend it runs on. ``taskutils.backends.queue``
gives the queue of the backend in use, ``taskutils.backends.store`` its store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from google.appengine.api import taskqueue

T = TypeVar("T")


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


class Store(Protocol):
    """Where taskutils keeps its records: Datastore, bundled or Cloud.

    Entities are dicts of property values with a ``key()`` method; a property listed as
    unindexed is left out of the indexes (a blob or text longer than 1,500 bytes must be).
    Reads and writes take ``transactional``: None joins the transaction running (the
    store's own, in ``transaction``), True joins the caller's transaction and requires
    one (App Engine's ndb, or Cloud NDB), False runs outside any transaction.
    """

    Contended: tuple[type[BaseException], ...]  # what a transaction raises when it kept colliding

    def key(self, kind: str, name_or_id: str | int, parent: Any = None) -> Any:
        """The key of kind named (a str) or numbered (an int), under parent, in the current namespace."""
        ...

    def adopt_key(self, key: Any) -> Any:
        """The store's key for a key of the backend's ndb (a task's ``parent``)."""
        ...

    def key_to_str(self, key: Any) -> str:
        """A printable form of key that ``key_from_str`` reads back (the spill pointer carries it)."""
        ...

    def key_from_str(self, text: str) -> Any:
        """The key ``key_to_str`` wrote; ValueError (or the backend's error) for anything else."""
        ...

    def entity(self, key: Any, unindexed: tuple[str, ...] = ()) -> Any:
        """A new, unwritten entity with this key: a dict with ``key()``."""
        ...

    def blob(self, data: bytes) -> Any:
        """data as a value an unindexed property holds, up to the entity's 1 MiB."""
        ...

    def text(self, value: str) -> Any:
        """value as long text an unindexed property holds."""
        ...

    def get(self, keys: list[Any], *, transactional: bool | None = None) -> list[Any]:
        """The entities of keys, in order, None where there is none."""
        ...

    def put(self, entities: list[Any], *, transactional: bool | None = None) -> None:
        """Write entities; should a write fail, every write in flight has ended when the error is raised."""
        ...

    def delete(self, keys: list[Any], *, transactional: bool | None = None) -> None:
        """Delete the entities of keys (a key with no entity is fine)."""
        ...

    def transaction(self, fn: Callable[..., T], *args: Any, retries: int = 5) -> T:
        """fn(*args) in a cross-group transaction of its own, retried on contention; a caller's is set aside."""
        ...

    def in_transaction(self) -> bool:
        """True inside a transaction of the caller's (or of the store's own)."""
        ...

    def transaction_scope(self) -> object | None:
        """The caller's running transaction, as an object that lives as long as it; None outside one."""
        ...

    def query(
        self,
        kind: str,
        *,
        where: tuple[str, str, Any] | None = None,
        newest_first: str | None = None,
        keys_only: bool = False,
        limit: int | None = None,
        batch_size: int = 500,
    ) -> Iterator[Any]:
        """Entities (or keys) of kind in the current namespace, with one filter ``(property, op, value)``
        or ordered by a property, descending; read ``batch_size`` at a time as they are iterated."""
        ...

    def namespaces(self) -> list[str]:
        """Every namespace that holds an entity, "" for the default one."""
        ...

    def in_namespace(self, namespace: str) -> AbstractContextManager[None]:
        """Within it, keys are made and queries run in namespace."""
        ...
