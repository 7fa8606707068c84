"""Durable local state for ``serve --storage DIR``: queued tasks and Datastore entities in SQLite.

Google's stubs stay the queue and the datastore; this module persists their state
around them, so that a restart or a crash (``kill -9``) loses nothing that was added:

- :class:`TaskJournal` watches a :class:`TaskQueueServiceStub`'s queues and writes
  every added task (the whole task: URL, method, headers, payload, ETA, retry
  count), every retry (new ETA and retry count), every deletion and the name of
  every named task (its tombstone) to ``DIR/tasks.sqlite3``. ``attach`` first
  puts the journaled tasks back into the stub with their names, ETAs and retry
  counts. A task leaves the journal only once its run answered 2xx (or it ran
  out of retries), so every added task runs at least once.
- :class:`SqliteDatastoreStub` is Google's ``DatastoreFileStub`` with a
  write-through journal in ``DIR/datastore.sqlite3`` instead of a pickle
  rewritten whole: each applied put or delete is one row, committed when the
  RPC that made it returns.

Both databases are in WAL mode with ``synchronous=NORMAL``: a committed write
survives the process being killed; a power cut may lose the last commits but
leaves the files sound. :class:`Storage` ties it together and holds an exclusive
lock on ``DIR`` so that two servers never share it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.appengine.api import datastore_file_stub
from google.appengine.api.taskqueue import taskqueue_service_bytes_pb2 as taskqueue_service_pb2
from google.appengine.api.taskqueue import taskqueue_stub
from google.appengine.datastore import datastore_stub_util, entity_bytes_pb2

from ..exc import StorageInUseError

try:
    import fcntl
except ImportError:  # Windows: no lock on the folder
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("taskutils.local.storage")

TASKS_DB = "tasks.sqlite3"
DATASTORE_DB = "datastore.sqlite3"
LOCK_FILE = "lock"
SIGNING_KEY_FILE = "signing.key"
_FORCE_COMMIT_AFTER = 1.0  # seconds: commit even while other RPCs keep writing

Task = taskqueue_service_pb2.TaskQueueQueryTasksResponse.Task


class _Journal:
    """One SQLite database in WAL mode, written by many threads through one connection.

    Writes made inside :meth:`rpc` are committed together when the last RPC in
    flight returns (so one RPC's writes are atomic); writes outside any RPC are
    committed at once.
    """

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(schema)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._dirty = False
        self._closed = False
        self._warned = False
        self._last_commit = time.monotonic()

    def write(self, sql: str, params: tuple[Any, ...] | list[tuple[Any, ...]], many: bool = False) -> None:
        """Run one statement; commit now unless an RPC in flight will."""
        with self._lock:
            if self._closed:
                if not self._warned:
                    self._warned = True
                    log.warning("%s is closed: changes made while the server stops are not kept", self.path)
                return
            if not self._dirty:
                self._db.execute("BEGIN")
                self._dirty = True
            if many:
                self._db.executemany(sql, params)  # type: ignore[arg-type]
            else:
                self._db.execute(sql, params)
            if self._in_flight == 0:
                self._commit()

    def _commit(self) -> None:
        if self._dirty:
            self._db.execute("COMMIT")
            self._dirty = False
        self._last_commit = time.monotonic()

    @contextlib.contextmanager
    def rpc(self) -> Iterator[None]:
        """Group the writes of one RPC: committed when no RPC is left in flight."""
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if (
                    self._dirty
                    and not self._closed
                    and (self._in_flight == 0 or time.monotonic() - self._last_commit > _FORCE_COMMIT_AFTER)
                ):
                    self._commit()

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """All rows of a query."""
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError(f"{self.path} is closed")
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        """Commit what is left and close the database."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._commit()
                self._db.close()


_TASKS_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    eta_usec INTEGER NOT NULL,
    retry_count INTEGER NOT NULL,
    task BLOB NOT NULL,
    PRIMARY KEY (queue, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (
    queue TEXT NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (queue, name)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_CHOSEN_NAME = re.compile(r"task(\d+)")
MAX_TOMBSTONES = 100_000  # names given by the app kept taken, the newest (as the server keeps them in memory)
NAMES_RESERVED = 1_000  # the stub's own task-name counter is journaled once per this many names


class TaskJournal(_Journal):
    """The queued tasks of a taskqueue stub, kept in SQLite and restored into the stub."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _TASKS_SCHEMA)
        self._chosen: set[str] = set()  # names the stub chose itself: no tombstone needed
        self._chosen_lock = threading.Lock()
        self._reserved = 0  # the stub's counter may reach this before the journal is told again

    def attach(self, stub: taskqueue_stub.TaskQueueServiceStub) -> int:
        """Restore the journaled tasks into the stub, then journal its changes. Returns the tasks restored.

        Call it before the stub's background execution starts.
        """
        group = stub._GetGroup()
        self._watch_group(group)
        group._ReloadQueuesFromYaml()
        self._watch_stub(stub)
        restored = self._restore(group)
        for queue in list(group._queues.values()):
            if queue is not None:
                self._watch_queue(queue)
        eta = min((q.Oldest() or 0 for q in group._queues.values() if q is not None and q.Oldest()), default=None)
        if eta:
            stub._UpdateNextEventTime(taskqueue_stub._UsecToSec(eta))
        return restored

    def queued(self) -> int:
        """How many tasks the journal holds."""
        return int(self.read("SELECT count(*) FROM tasks")[0][0])

    # -- restore ------------------------------------------------------------------------

    def _restore(self, group: Any) -> int:
        rows = self.read("SELECT queue, name, task FROM tasks")
        self.write("DELETE FROM tombstones WHERE rowid <= (SELECT max(rowid) FROM tombstones) - ?", (MAX_TOMBSTONES,))
        tombstones = self.read("SELECT queue, name FROM tombstones ORDER BY rowid")
        counter = self.read("SELECT value FROM counters WHERE name = 'next_task_id'")
        if counter:
            # Names up to the reserved value may have been used: start after them all.
            group._next_task_id = max(group._next_task_id, int(counter[0][0]))
        restored = 0
        missing: dict[str, int] = {}
        for queue_name, name in tombstones:
            queue = self._queue(group, queue_name)
            if queue is not None:
                queue.task_name_archive.add(name)
        for queue_name, name, blob in rows:
            queue = self._queue(group, queue_name)
            if queue is None:
                missing[queue_name] = missing.get(queue_name, 0) + 1
                continue
            task = Task.FromString(blob)
            with queue._lock:
                if queue._LocateTaskByName(name) is None:
                    taskqueue_stub._Queue._InsertTask(queue, task)  # the stub's own method: not journaled again
                    restored += 1
            match = _CHOSEN_NAME.fullmatch(name)
            if match:
                group._next_task_id = max(group._next_task_id, int(match.group(1)) + 1)
        for queue_name, count in missing.items():
            log.warning(
                "%d tasks kept in %s for queue %r, which is not defined: left there", count, self.path, queue_name
            )
        return restored

    @staticmethod
    def _queue(group: Any, queue_name: str) -> Any:
        if group._ValidateQueueName(queue_name) != taskqueue_service_pb2.TaskQueueServiceError.OK:
            return None
        return group._queues.get(queue_name)

    # -- watching the stub --------------------------------------------------------------

    def _watch_group(self, group: Any) -> None:
        construct = group._ConstructQueue
        choose = group._ChooseTaskName

        def construct_queue(queue_name: str, *args: Any, **kwargs: Any) -> None:
            construct(queue_name, *args, **kwargs)
            self._watch_queue(group._queues[str(queue_name)])

        def choose_task_name() -> str:
            name = str(choose())
            with self._chosen_lock:
                self._chosen.add(name)
                reserve = group._next_task_id > self._reserved
                if reserve:
                    self._reserved = group._next_task_id + NAMES_RESERVED
            if reserve:
                self.write("INSERT OR REPLACE INTO counters VALUES ('next_task_id', ?)", (self._reserved,))
            return name

        group._ConstructQueue = construct_queue
        group._ChooseTaskName = choose_task_name

    def _watch_stub(self, stub: Any) -> None:
        make_sync_call = stub.MakeSyncCall
        delete_task = stub.DeleteTask
        flush_queue = stub.FlushQueue

        def rpc(*args: Any, **kwargs: Any) -> Any:
            with self.rpc():
                return make_sync_call(*args, **kwargs)

        def delete_without_tombstone(queue_name: str, task_name: str) -> None:
            delete_task(queue_name, task_name)
            self.write("DELETE FROM tombstones WHERE queue = ? AND name = ?", (str(queue_name), str(task_name)))

        def flush(queue_name: str) -> None:
            flush_queue(queue_name)
            self.write("DELETE FROM tombstones WHERE queue = ?", (str(queue_name),))

        stub.MakeSyncCall = rpc
        stub.DeleteTask = delete_without_tombstone
        stub.FlushQueue = flush

    def _watch_queue(self, queue: Any) -> None:
        if getattr(queue, "_taskutils_journal", None) is self:
            return
        queue._taskutils_journal = self
        queue_name = str(queue.queue_name)
        insert = queue._InsertTask
        delete = queue._DeleteNoAcquireLock
        reschedule = queue._PostponeTaskInsertOnly
        purge = queue.PurgeQueue

        def insert_task(task: Any) -> None:
            insert(task)
            name = task.task_name.decode() if isinstance(task.task_name, bytes) else str(task.task_name)
            with self._chosen_lock:
                chosen = name in self._chosen
                self._chosen.discard(name)
            self._put(queue_name, name, task)
            if not chosen:
                self.write("INSERT OR IGNORE INTO tombstones VALUES (?, ?)", (queue_name, name))

        def delete_task(name: Any) -> Any:
            result = delete(name)
            if result == taskqueue_service_pb2.TaskQueueServiceError.OK:
                text = name.decode() if isinstance(name, bytes) else str(name)
                self.write("DELETE FROM tasks WHERE queue = ? AND name = ?", (queue_name, text))
            return result

        def reschedule_task(task: Any, new_eta_usec: int) -> None:
            reschedule(task, new_eta_usec)  # a retry (retry count raised just before), a run-now, a lease
            name = task.task_name.decode() if isinstance(task.task_name, bytes) else str(task.task_name)
            self._put(queue_name, name, task)

        def purge_queue() -> None:
            purge()
            self.write("DELETE FROM tasks WHERE queue = ?", (queue_name,))

        queue._InsertTask = insert_task
        queue._DeleteNoAcquireLock = delete_task
        queue._PostponeTaskInsertOnly = reschedule_task
        queue.PurgeQueue = purge_queue

    def _put(self, queue_name: str, name: str, task: Any) -> None:
        self.write(
            "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?)",
            # Partial: the stub leaves a run log's timings unset, though the message declares them required.
            (queue_name, name, int(task.eta_usec), int(task.retry_count), task.SerializePartialToString()),
        )


class ApplyOnCommit(datastore_stub_util.MasterSlaveConsistencyPolicy):
    """Every commit is applied before the RPC returns (strong consistency), so it is journaled then.

    Google's high-replication policies keep committed writes in memory until a
    query grooms them; the master/slave policy would rewrite the whole file stub
    on every commit. This one applies the commit's own entity groups, nothing else.
    """

    def _OnCommit(self, txn: Any) -> None:  # noqa: N802 - the policy's interface
        for tracker in txn._GetAllTrackers():
            with tracker._meta_data._write_lock:
                tracker._meta_data.CatchUp()


_DATASTORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (key TEXT PRIMARY KEY, entity BLOB NOT NULL) WITHOUT ROWID;
"""


class SqliteDatastoreStub(datastore_file_stub.DatastoreFileStub):
    """Google's datastore file stub, every applied write journaled to SQLite as it happens.

    Reads and queries are the file stub's, from memory; the journal is read once,
    when the stub is made. Commits apply at once (:class:`ApplyOnCommit`): what a
    Put or Commit RPC wrote is on disk when it returns.
    """

    def __init__(self, app_id: str, journal: _Journal, **kwargs: Any) -> None:
        self._taskutils_journal: _Journal | None = None  # not yet: the base constructor clears and reads
        kwargs["consistency_policy"] = ApplyOnCommit()
        super().__init__(app_id, None, save_changes=False, use_atexit=False, **kwargs)
        for (blob,) in journal.read("SELECT entity FROM entities"):
            entity = entity_bytes_pb2.EntityProto.FromString(blob)
            self._StoreRecord(datastore_stub_util._FromStorageEntity(entity))
            last = entity.key.path.element[-1]
            if last.id:
                self._SetMaxId(last.id)
        self._taskutils_journal = journal

    def _row_key(self, key: Any) -> str:
        app_kind, _, k = self._GetEntityLocation(key)  # as the stub files it: app, namespace, kind, path
        return repr((app_kind, k))

    def entity_count(self) -> int:
        """How many entities are stored, every app and namespace."""
        return sum(len(entities) for entities in self._GetAllEntities().values())

    def MakeSyncCall(self, service: str, call: str, request: Any, response: Any, request_id: Any = None) -> Any:  # noqa: N802
        journal = self._taskutils_journal
        if journal is None:
            return super().MakeSyncCall(service, call, request, response, request_id)
        with journal.rpc():
            return super().MakeSyncCall(service, call, request, response, request_id)

    def _StoreRecord(self, record: Any, insert: bool = False) -> None:  # noqa: N802
        super()._StoreRecord(record, insert)
        journal = self._taskutils_journal
        if journal is not None:
            entity = datastore_stub_util._ToStorageEntity(record)
            journal.write(
                "INSERT OR REPLACE INTO entities VALUES (?, ?)",
                (self._row_key(record.entity.key), entity.SerializeToString()),
            )

    def _Delete(self, key: Any) -> None:  # noqa: N802
        super()._Delete(key)
        journal = self._taskutils_journal
        if journal is not None:
            journal.write("DELETE FROM entities WHERE key = ?", (self._row_key(key),))


class Storage:
    """A folder that keeps the local server's queued tasks and Datastore entities across restarts.

    ``Storage(DIR)`` creates the folder if needed and locks it (a second server on
    the same folder raises :class:`~taskutils.exc.StorageInUseError`). Then
    :meth:`datastore_stub` makes the datastore stub and :meth:`attach` restores and
    journals a taskqueue stub; :meth:`close` after the server stopped. ``kept`` tells
    a stop summary whether the tasks still queued are kept.
    """

    kept = True

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.directory / LOCK_FILE, "a+")  # noqa: SIM115 - held until close()
        try:
            if fcntl is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            self._lock_file.close()
            raise StorageInUseError(f"{self.directory} is used by another server") from e
        self.tasks = TaskJournal(self.directory / TASKS_DB)
        self._datastore_journal = _Journal(self.directory / DATASTORE_DB, _DATASTORE_SCHEMA)
        self.datastore: SqliteDatastoreStub | None = None
        self.restored_tasks = 0

    def datastore_stub(self, app_id: str, **kwargs: Any) -> SqliteDatastoreStub:
        """The datastore stub for this folder (keyword arguments go to ``DatastoreFileStub``)."""
        self.datastore = SqliteDatastoreStub(app_id, self._datastore_journal, **kwargs)
        return self.datastore

    def attach(self, stub: taskqueue_stub.TaskQueueServiceStub) -> int:
        """Put the kept tasks back into the stub and journal its changes; returns how many came back."""
        self.restored_tasks = self.tasks.attach(stub)
        log.info(
            "storage %s: %d queued tasks and %d entities restored",
            self.directory,
            self.restored_tasks,
            self.datastore.entity_count() if self.datastore is not None else 0,
        )
        return self.restored_tasks

    def signing_key(self) -> bytes:
        """The key to sign payloads with when none is configured, kept here (mode 0600).

        Kept tasks carry payloads signed before the restart: a new random key per
        process would refuse them all.
        """
        path = self.directory / SIGNING_KEY_FILE
        with contextlib.suppress(FileNotFoundError):
            key = path.read_bytes()
            if len(key) >= 32:
                return key
        key = secrets.token_bytes(32)
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, path)
        return key

    def queued(self) -> int:
        """How many tasks are kept, waiting to run."""
        return self.tasks.queued()

    def close(self) -> None:
        """Commit and close both databases and release the folder."""
        for close in (self.tasks.close, self._datastore_journal.close, self._lock_file.close):
            with contextlib.suppress(sqlite3.Error, OSError):
                close()


def queued_in(directory: str | os.PathLike[str]) -> int:
    """How many tasks a storage folder keeps (0 if it keeps none), read without locking it."""
    path = Path(directory) / TASKS_DB
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT count(*) FROM tasks").fetchone()[0])
    except sqlite3.Error:
        return 0
