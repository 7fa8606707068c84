"""The cloud backend's store: Cloud Datastore (Firestore in Datastore mode) through Cloud NDB.

``CloudStore`` implements ``taskutils.backends.base.Store`` with Cloud NDB's public
API, so that a write can join the caller's ``google.cloud.ndb`` transaction and the
store's own transactions are Cloud NDB transactions (a task added in one is staged in
it). Each kind is an ``ndb.Expando`` made here, its properties indexed unless the
entity says otherwise (or the value cannot be: bytes, long text); an entity read back
keeps the unindexed properties its kind was last made with in this process. Entities
go in and out as dicts (``CloudEntity``), keys as ``CloudKey`` (with App Engine's
``kind()``, ``name()``, ``id()``, ``parent()``).

Cloud NDB needs a client context: a call with none active opens one for its time,
with a client made once per process for ``settings.cloud.resolved_project()`` (the
client honours ``DATASTORE_EMULATOR_HOST``). Datetimes are naive UTC, as bundled
Datastore gives them.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

from google.api_core import exceptions as core_exceptions
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import ndb
from google.cloud.ndb import metadata

from ..config import settings

T = TypeVar("T")

log = logging.getLogger("taskutils.cloud_store")

_client: ndb.Client | None = None
_warned: list[bool] = []
_no_credentials: list[tuple[str | None, str | None]] = []  # where tasks last found no credentials
_client_lock = threading.Lock()
_namespace: contextvars.ContextVar[str | None] = contextvars.ContextVar("taskutils_cloud_namespace", default=None)
_models: dict[str, type[ndb.Expando]] = {}
_unindexed: dict[str, frozenset[str]] = {}  # by kind: what entity() was told, for entities read back
MAX_INDEXED = 1500  # bytes of an indexed text value
# Bytes of entities written in one commit outside a transaction: Cloud Datastore takes 10 MiB,
# its emulator's gRPC server 4 MiB.
MAX_COMMIT = 3 * 1000 * 1000


def client() -> ndb.Client:
    """The Cloud NDB client taskutils opens contexts with, made once per process."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = ndb.Client(project=settings.cloud.resolved_project())
    return _client


def reset_client() -> None:
    """Forget the client, so that the next call makes one for the project (and emulator) configured then."""
    global _client
    _client = None
    _no_credentials.clear()


def _credentials_source() -> tuple[str | None, str | None]:
    """What decides whether a client finds credentials: tasks found none for these values."""
    return os.environ.get("DATASTORE_EMULATOR_HOST"), os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")


def context() -> AbstractContextManager[Any]:
    """The caller's Cloud NDB context when one is active, else a new one for the time of the ``with``."""
    if ndb.get_context(raise_context_error=False) is not None:
        return nullcontext()
    return client().context()  # taskutils' own kinds skip its caches: their models say so


def current_namespace() -> str:
    """The namespace taskutils' keys are made in here ("" for the default one): the store's
    ``in_namespace``, else the active Cloud NDB context's."""
    namespace = _namespace.get()
    if namespace is not None:
        return namespace
    active = ndb.get_context(raise_context_error=False)
    return (active.get_namespace() or "") if active is not None else ""


def task_context(namespace: str = "") -> AbstractContextManager[Any]:
    """What the handler runs a task in: ``context()`` in the namespace the task was added in
    (``taskutils.backends.namespace``), or none where no credentials for Datastore are found.

    A task that does not use Datastore still runs there (a test with only a Cloud Tasks
    emulator); one that does gets the credentials error from its first Datastore call.
    """
    try:
        active = ndb.get_context(raise_context_error=False)
        if active is not None:  # the app's middleware opened one: the task runs in it, in its namespace
            if (active.get_namespace() or "") == namespace:
                return nullcontext()
            return active.new(namespace=namespace).use()  # type: ignore[no-any-return]
        if _client is None and _no_credentials and _no_credentials[0] == _credentials_source():
            return nullcontext()  # looking again would ask the metadata server each time: about 2 ms a task
        return client().context(namespace=namespace or None)  # type: ignore[no-any-return]
    except DefaultCredentialsError as e:
        _no_credentials[:] = [_credentials_source()]
        if not _warned:
            _warned.append(True)
            log.warning("tasks run without a Cloud NDB context: no credentials for Cloud Datastore (%s)", e)
        return nullcontext()


class CloudKey:
    """A Cloud NDB key seen through App Engine's low-level Key (``kind()``, ``name()``, ``id()``, ``parent()``)."""

    __slots__ = ("ndb_key",)

    def __init__(self, ndb_key: ndb.Key) -> None:
        self.ndb_key = ndb_key

    def kind(self) -> str:
        return str(self.ndb_key.kind())

    def name(self) -> str | None:
        return self.ndb_key.string_id()  # type: ignore[no-any-return]

    def id(self) -> int | None:
        return self.ndb_key.integer_id()  # type: ignore[no-any-return]

    def parent(self) -> CloudKey | None:
        parent = self.ndb_key.parent()
        return None if parent is None else CloudKey(parent)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CloudKey) and other.ndb_key == self.ndb_key

    def __hash__(self) -> int:
        return hash(self.ndb_key)

    def __repr__(self) -> str:
        return f"CloudKey({self.ndb_key!r})"


class CloudEntity(dict[str, Any]):
    """An entity as a dict of its properties, with its key and the properties left out of indexes."""

    def __init__(self, key: CloudKey, unindexed: tuple[str, ...] | frozenset[str] = ()) -> None:
        super().__init__()
        self._key = key
        self.unindexed = frozenset(unindexed)

    def key(self) -> CloudKey:
        return self._key


def _model(kind: str) -> type[ndb.Expando]:
    """The Expando class of kind: no cache, unindexed by default; "key" readable as a stored name."""
    model = _models.get(kind)
    if model is None:
        model = type(
            "TaskutilsRecord" + kind.lstrip("_"),
            (ndb.Expando,),
            {
                "_get_kind": classmethod(lambda cls, kind=kind: kind),
                "_use_cache": False,
                "_use_global_cache": False,
                "_default_indexed": False,
                "stored_key_": ndb.GenericProperty("key", indexed=False),  # "key" is the model's own attribute
            },
        )
        _models[kind] = model
    return model


def _indexable(value: Any) -> bool:
    """False for a value Datastore cannot index: bytes, or text over 1,500 bytes."""
    if isinstance(value, bytes):
        return False
    return not isinstance(value, str) or len(value) <= MAX_INDEXED // 4 or len(value.encode()) <= MAX_INDEXED


def _to_model(entity: CloudEntity) -> ndb.Expando:
    key = entity.key().ndb_key
    model = _model(key.kind())(key=key)
    model._clone_properties()
    for name, value in entity.items():
        prop = ndb.GenericProperty(
            name,
            indexed=name not in entity.unindexed and _indexable(value),
            repeated=isinstance(value, (list, tuple)),
        )
        prop._code_name = name
        model._properties[name] = prop
        prop._set_value(model, list(value) if isinstance(value, tuple) else value)
    return model


def _naive(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc)
        return datetime.datetime(
            value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond
        )
    return value


def _from_model(model: ndb.Expando | None) -> CloudEntity | None:
    if model is None:
        return None
    key = CloudKey(model.key)
    entity = CloudEntity(key, _unindexed.get(key.kind(), ()))  # Cloud NDB does not say which were indexed
    for name, prop in model._properties.items():
        value = prop._get_value(model)
        if value is not None or name != "key":  # every kind declares "key": absent, it reads None
            entity[name] = _naive(value)
    return entity


def _size(entity: CloudEntity) -> int:
    return sum(len(v) for v in entity.values() if isinstance(v, (bytes, str))) + 200


def _commits(entities: list[CloudEntity], models: list[ndb.Expando]) -> Iterator[list[ndb.Expando]]:
    """models in runs whose entities stay under a commit's 10 MiB (a spilled payload's megabyte chunks)."""
    batch: list[ndb.Expando] = []
    size = 0
    for entity, model in zip(entities, models, strict=True):
        grown = _size(entity)
        if batch and size + grown > MAX_COMMIT:
            yield batch
            batch, size = [], 0
        batch.append(model)
        size += grown
    if batch:
        yield batch


def _pages(query: ndb.Query, *, keys_only: bool, limit: int | None, batch_size: int) -> Iterator[Any]:
    """The query's results, batch_size at a time as they are iterated: a sweep over a million
    records holds one page of them, and each page is read in a context of its own."""
    cursor, left = None, limit
    while left is None or left > 0:
        size = batch_size if left is None else min(batch_size, left)
        with context():
            found, cursor, more = query.fetch_page(size, start_cursor=cursor, keys_only=keys_only, use_cache=False)
        for item in found:
            yield CloudKey(item) if keys_only else _from_model(item)
        if left is not None:
            left -= len(found)
        if not (more and found and cursor):
            return


def _scoped(fn: Callable[..., T], transactional: bool | None) -> Callable[..., T]:
    """fn, run in the transaction running (None), the caller's (True, required) or none (False)."""
    if transactional is False:
        return ndb.non_transactional()(fn)  # type: ignore[no-any-return]
    if transactional and not ndb.in_transaction():
        raise ndb.exceptions.BadRequestError("a transactional write needs a running Cloud NDB transaction")
    return fn


class CloudStore:
    """Cloud Datastore through Cloud NDB; keys are ``CloudKey``, entities ``CloudEntity``."""

    Contended: tuple[type[BaseException], ...] = (core_exceptions.RetryError, core_exceptions.Aborted)

    def key(self, kind: str, name_or_id: str | int, parent: CloudKey | None = None) -> CloudKey:
        if parent is not None:
            return CloudKey(ndb.Key(kind, name_or_id, parent=parent.ndb_key))
        found = self._client()
        return CloudKey(
            ndb.Key(
                kind,
                name_or_id,
                project=found.project,
                database=found.database,
                namespace=self._current_namespace(),
            )
        )

    def _client(self) -> ndb.Client:
        context = ndb.get_context(raise_context_error=False)
        return context.client if context is not None else client()

    def _current_namespace(self) -> str | None:
        return current_namespace() or None

    def adopt_key(self, key: Any) -> CloudKey:
        """The store's key for a ``google.cloud.ndb.Key`` (a task's ``parent``)."""
        return key if isinstance(key, CloudKey) else CloudKey(key)

    def key_to_str(self, key: CloudKey) -> str:
        return key.ndb_key.urlsafe().decode("ascii")  # type: ignore[no-any-return]

    def key_from_str(self, text: str) -> CloudKey:
        return CloudKey(ndb.Key(urlsafe=text.encode("ascii"), database=self._client().database))

    def entity(self, key: CloudKey, unindexed: tuple[str, ...] = ()) -> CloudEntity:
        found = CloudEntity(key, unindexed)
        if _unindexed.get(key.kind()) != found.unindexed:
            _unindexed[key.kind()] = found.unindexed
        return found

    def blob(self, data: bytes) -> bytes:
        return bytes(data)

    def text(self, value: str) -> str:
        return value

    def get(self, keys: list[Any], *, transactional: bool | None = None) -> list[Any]:
        if not keys:
            return []
        for key in keys:
            _model(key.kind())

        def read() -> list[Any]:
            return [_from_model(m) for m in ndb.get_multi([k.ndb_key for k in keys], use_cache=False)]

        with context():
            return _scoped(read, transactional)()

    def put(self, entities: list[Any], *, transactional: bool | None = None) -> None:
        if not entities:
            return
        models = [_to_model(e) for e in entities]

        def write() -> None:
            if ndb.in_transaction():  # written by the transaction's commit, whose limit is the caller's to keep
                ndb.put_multi(models, use_cache=False)
                return
            for batch in _commits(entities, models):  # Cloud NDB fills a commit by count, not by size
                ndb.put_multi(batch, use_cache=False)

        with context():
            _scoped(write, transactional)()

    def delete(self, keys: list[Any], *, transactional: bool | None = None) -> None:
        if not keys:
            return

        def remove() -> None:
            ndb.delete_multi([k.ndb_key for k in keys], use_cache=False)

        with context():
            _scoped(remove, transactional)()

    def transaction(self, fn: Callable[..., T], *args: Any, retries: int = 5) -> T:
        def run() -> T:
            return ndb.transaction(lambda: fn(*args), retries=retries, xg=True)  # type: ignore[no-any-return]

        with context():
            return ndb.non_transactional()(run)()  # type: ignore[no-any-return]

    def in_transaction(self) -> bool:
        return ndb.get_context(raise_context_error=False) is not None and bool(ndb.in_transaction())

    def transaction_scope(self) -> object | None:
        """The caller's running transaction (its Cloud NDB context), None outside one."""
        return ndb.get_context() if self.in_transaction() else None

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
        _model(kind)
        with context():
            query = ndb.Query(
                kind=kind,
                namespace=self._current_namespace() or "",  # now: the pages are read later, maybe elsewhere
                filters=None if where is None else ndb.FilterNode(*where),
                orders=None if newest_first is None else [-ndb.GenericProperty(newest_first)],
            )
        return _pages(query, keys_only=keys_only, limit=limit, batch_size=batch_size)

    def namespaces(self) -> list[str]:
        with context():
            return [n or "" for n in metadata.get_namespaces()]

    @contextmanager
    def in_namespace(self, namespace: str) -> Iterator[None]:
        token = _namespace.set(namespace)
        try:
            yield
        finally:
            _namespace.reset(token)
