"""Results and fan-in: ``submit`` keeps a handle on a run, ``submit_map`` on a group of runs.

Design (what each step costs in Datastore, and why it is safe to deliver twice):

- **Nothing is written to submit.** ``submit`` adds the task as a call would, with the
  header ``X-Taskutils-Handle: <id>`` (and ``X-Taskutils-Retry-Limit`` when the task has
  ``retry_options.task_retry_limit``). The handle is recorded when its task first runs, as
  Celery's result backend does, so a transactional submit is just a transactional task:
  it commits or rolls back with the caller's transaction, with no extra entity group.
  Until it runs, ``TaskHandle.get(id)`` answers None and the handle ``submit`` returned
  answers "pending". ``then()`` and ``cancel()`` record a handle that has not run yet.
- **A run is two transactions** on its record: one before the function runs (skip it if
  cancelled or already finished, else ``running`` and one more attempt), one after
  (``succeeded`` with the pickled result, or ``retrying`` / ``failed`` with the pickled
  exception). Each is one read and one write. The second one finishes the run only if no
  other delivery did, so a duplicate delivery records one result, and the callbacks are
  added in that same transaction (transactional tasks): exactly once, with no task names,
  which Cloud Tasks forgets after about an hour.
- **A group writes one entity to submit:** ``_TaskutilsGroup`` (its size and shape).
  Children are ``<group>.<i>``; child ``i`` keeps its record in slot ``i // L`` of leaf
  ``i % L`` (``L`` leaves of at most 32 children, at least 16 leaves), so neighbouring
  children, which run at the same time, write different leaves. A child's run is the two
  transactions above on its leaf: two reads and two writes, whatever the group's size
  (a child whose result pickles to more than 8 KB writes it apart, in the same commit).
- **Fan-in is a tree, advanced by tasks.** The transaction that records the last child
  of a leaf also adds, transactionally, a task saying so; that task marks the leaf done in
  a node of the level above (16 per node), and the one that completes a node adds the task
  for the level above that, up to the group entity, which collects at most 16. The
  transaction that completes the group marks it succeeded and adds its ``then`` callbacks.
  No entity is written by more than 2 x 32 children or 16 tasks; nothing polls; each
  step is idempotent (a node records which children it has seen), so a duplicate delivery
  changes nothing. A failed child marks the group failed in its own transaction; its leaf
  then never completes, and the callback never runs.
- **Reading** a handle is one get (a child: its leaf); a group's status, progress and
  results read its leaves in one batched get.
- Results and exceptions are pickled (cloudpickle when needed) and framed by
  ``taskutils.codec``: signed when keys are configured, and checked before unpickling.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.appengine.api import taskqueue
from google.appengine.ext import ndb
from google.appengine.ext.deferred import PermanentTaskFailure as DeferredPermanentTaskFailure

from . import codec
from . import results_store as store
from .exc import PermanentTaskFailure, TaskCancelledError, TaskError, TaskRunError
from .handler import current_task
from .task import _MAX_TASKS_PER_ADD, _MAX_TRANSACTIONAL_TASKS_PER_ADD, TaskFunction, _add_batch, _discard_spills, task

if TYPE_CHECKING:
    from .handler import TaskInfo

log = logging.getLogger("taskutils.results")

HANDLE_HEADER = "X-Taskutils-Handle"
LIMIT_HEADER = "X-Taskutils-Retry-Limit"
GROUP_HEADER = "X-Taskutils-Group"  # "<total> <leaves>" on a group's children
_LIMIT_KEY = "HTTP_X_TASKUTILS_RETRY_LIMIT"
_GROUP_KEY = "HTTP_X_TASKUTILS_GROUP"

POLL_FIRST, POLL_MAX = 0.1, 2.0  # result(timeout): seconds between reads, growing 1.5x
PROGRESS_EVERY = 1.0  # set_progress writes at most once a second; the last value goes with the outcome
_RETRIES = 5  # transaction retries on contention


def _transaction(fn: Callable[[], Any]) -> Any:
    return ndb.transaction(fn, xg=True, retries=_RETRIES)


# -- where a handle's record lives --------------------------------------------


@dataclass(frozen=True)
class _Ref:
    """A handle's record: its own entity, or a slot of a group's leaf."""

    handle_id: str
    group_id: str | None = None
    index: int = 0
    total: int = 0
    leaves: int = 0

    @property
    def key(self) -> ndb.Key:
        if self.group_id is None:
            return store.handle_key(self.handle_id)
        return store.leaf_key(self.group_id, self.index % self.leaves)

    @property
    def leaf(self) -> int:
        return self.index % self.leaves

    @property
    def slot(self) -> int:
        return self.index // self.leaves

    def read(self, entity: Any) -> dict[str, Any] | None:
        """The record in entity (None when there is none), cancelled when its group's leaf says so."""
        if self.group_id is None:
            return store.handle_record(entity, self.handle_id)
        record = store.leaf_records(entity, self.group_id, self.leaf).get(self.slot)
        if entity is not None and entity.cancelled and (record is None or record["s"] == store.PENDING):
            record = {**(record or store.new_record()), "s": store.CANCELLED}
        return record

    def write(self, entity: Any, record: dict[str, Any]) -> Any:
        """The entity to put so that it holds record."""
        if self.group_id is None:
            return store.put_handle(entity, self.handle_id, record)
        records = store.leaf_records(entity, self.group_id, self.leaf)
        records[self.slot] = record
        return store.put_leaf(entity, self.group_id, self.leaf, records)

    def leaf_complete(self, entity: Any) -> bool:
        records = store.leaf_records(entity, self.group_id or "", self.leaf)
        done = sum(1 for r in records.values() if r["s"] == store.SUCCEEDED)
        return done == store.leaf_size(self.total, self.leaves, self.leaf)


def _ref_of(handle_id: str) -> _Ref | None:
    """The record of a handle id; None when the id names a child of a group that does not exist."""
    group_id, dot, index = handle_id.partition(".")
    if not dot:
        return _Ref(handle_id)
    if not index.isdigit():
        return None
    group = store.group_key(group_id).get()
    if group is None or int(index) >= group.total:
        return None
    return _Ref(handle_id, group_id, int(index), group.total, group.leaves)


# -- handles ------------------------------------------------------------------


class TaskHandle:
    """A handle on one submitted run: its status, its result, its callbacks.

    Get one from ``TaskFunction.submit``, ``GroupHandle.handles`` or ``TaskHandle.get(id)``.
    Every property reads Datastore afresh.
    """

    def __init__(self, handle_id: str, _ref: _Ref | None = None) -> None:
        self.id = handle_id
        self._ref = _ref or _ref_of(handle_id) or _Ref(handle_id)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id} {self.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @classmethod
    def get(cls, handle_id: str) -> TaskHandle | None:
        """The handle with this id; None when nothing is recorded for it (yet)."""
        ref = _ref_of(handle_id)
        if ref is None:
            return None
        if ref.group_id is None and store.handle_key(handle_id).get() is None:
            return None
        return cls(handle_id, ref)

    def _record(self) -> dict[str, Any]:
        ref = self._ref
        entity = ref.key.get()
        record = ref.read(entity) or store.new_record()
        source = record.get("src")
        if source is not None and record["s"] == store.PENDING:
            status = TaskHandle(source).status if "." in source else _source_status(source)
            if status in (store.FAILED, store.CANCELLED):
                record = {**record, "s": store.CANCELLED}
        return record

    @property
    def status(self) -> str:
        """ "pending", "running", "retrying", "succeeded", "failed" or "cancelled"."""
        return str(self._record()["s"])

    def done(self) -> bool:
        """True once the run succeeded, failed for good or was cancelled."""
        return self.status in store.FINAL

    @property
    def attempts(self) -> int:
        """How many times the task has started."""
        return int(self._record()["a"])

    @property
    def progress(self) -> float:
        """What the task last reported through set_progress(), as done/total; 1.0 once succeeded."""
        record = self._record()
        if record["s"] == store.SUCCEEDED:
            return 1.0
        if record.get("p"):
            done, total = record["p"]
            return done / total if total else 0.0
        return 0.0

    def result(self, timeout: float | None = 0) -> Any:
        """The return value, or the task's own exception raised again.

        Waits up to timeout seconds (None: for ever), reading Datastore every so often;
        TimeoutError when the run has not finished by then, TaskCancelledError when cancelled.
        """
        record = _wait(self._record, timeout, f"task handle {self.id}")
        return _outcome(record, self.id)

    def exception(self) -> BaseException | None:
        """The exception the run failed with (TaskCancelledError when cancelled); None otherwise."""
        record = self._record()
        if record["s"] not in (store.FAILED, store.CANCELLED):
            return None
        try:
            _outcome(record, self.id)
        except BaseException as e:
            return e
        return None

    def cancel(self) -> bool:
        """Cancel a run that has not started: its task is skipped when it arrives. False if too late."""
        ref = self._ref

        def txn() -> bool:
            entity = ref.key.get()
            record = ref.read(entity) or store.new_record()
            if record["s"] != store.PENDING:
                return record["s"] == store.CANCELLED
            record["s"] = store.CANCELLED
            entities = [ref.write(entity, record)]
            if ref.group_id is not None:
                entities += _fail_group(ref, cancelled=True)
            ndb.put_multi(entities)
            return True

        return bool(_transaction(txn))

    def then(self, callback: Callable[[Any], Any]) -> TaskHandle:
        """Run callback(result) as a task, once, after this run succeeded; return its handle.

        A task function keeps its own options; any other callable runs as ``task(callback)``.
        It fires at once if the run has already succeeded, never if it failed or was cancelled.
        """
        ref = self._ref
        cb = _Callback.make(callback, self.id)

        def txn() -> None:
            entity = ref.key.get()
            record = ref.read(entity) or store.new_record()
            if record["s"] == store.SUCCEEDED:
                cb.enqueue()
            elif record["s"] not in store.FINAL:
                if len(record["cb"]) >= store.MAX_CALLBACKS:
                    raise TaskError(f"handle {self.id} has {store.MAX_CALLBACKS} callbacks already")
                record["cb"].append(cb.sealed())
                ndb.put_multi([ref.write(entity, record), cb.pending_entity()])
                return
            cb.pending_entity().put()

        _transaction(txn)
        return TaskHandle(cb.handle_id)

    @classmethod
    def recent(cls, limit: int = 50) -> list[TaskHandle]:
        """The handles recorded last, newest first (children of groups are under their group)."""
        query = store.HandleEntity.query().order(-store.HandleEntity.created)
        return [cls(key.id()) for key in query.fetch(limit, keys_only=True)]


def _source_status(handle_id: str) -> str:
    entity = store.handle_key(handle_id).get()
    if entity is not None:
        return str(entity.status)
    group = store.group_key(handle_id).get()
    return str(group.status) if group is not None else store.PENDING


def _wait(read: Callable[[], dict[str, Any]], timeout: float | None, what: str) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = POLL_FIRST
    while True:
        record = read()
        if record["s"] in store.FINAL:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{what} is {record['s']}, not finished within {timeout} seconds")
        wait = pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic()))
        time.sleep(wait)
        pause = min(pause * 1.5, POLL_MAX)


def _outcome(record: dict[str, Any], handle_id: str) -> Any:
    if record["s"] == store.SUCCEEDED:
        return store.load_result(record, handle_id)
    if record["s"] == store.CANCELLED:
        raise TaskCancelledError(f"task handle {handle_id} was cancelled")
    error = codec.loads(record["e"]) if record.get("e") else None
    if isinstance(error, BaseException):
        raise error
    raise TaskRunError(record.get("l") or f"task handle {handle_id} failed")


# -- callbacks ----------------------------------------------------------------


class _Then:
    """The body of a callback task: read the source's result, then call the callback with it."""

    def __init__(self, source: str, func: Callable[[Any], Any]) -> None:
        self.source = source
        self.func = func

    def __call__(self) -> Any:
        if "." in self.source or store.handle_key(self.source).get() is not None:
            value = TaskHandle(self.source).result()
        else:
            value = GroupHandle(self.source).results()
        return self.func(value)


@dataclass
class _Callback:
    handle_id: str
    source: str
    function: TaskFunction[Any, Any]

    @classmethod
    def make(cls, callback: Callable[[Any], Any], source: str) -> _Callback:
        function = callback if isinstance(callback, TaskFunction) else task(callback)
        return cls(store.new_id(), source, function)

    def sealed(self) -> tuple[str, bytes]:
        call = (self.function.__wrapped__, dict(self.function.task_options))
        return self.handle_id, store.seal(f"callback/{self.handle_id}", call)

    @classmethod
    def unsealed(cls, sealed: tuple[str, bytes], source: str) -> _Callback:
        handle_id, blob = sealed
        func, options = store.unseal(f"callback/{handle_id}", blob)
        return cls(handle_id, source, task(func, **options))

    def pending_entity(self) -> store.HandleEntity:
        return store.put_handle(None, self.handle_id, {**store.new_record(), "src": self.source})

    def enqueue(self) -> None:
        """Add the callback's task inside the running transaction."""
        options = dict(self.function.task_options)
        options.pop("name", None)
        options.pop("parent", None)
        options["transactional"] = True
        options.setdefault("logname", self.function._suffix[1:])
        body = TaskFunction(_Then(self.source, self.function.__wrapped__), options)
        _enqueue(body, (), {}, self.handle_id)


def _fire(callbacks: Iterable[tuple[str, bytes]], source: str) -> None:
    for sealed in callbacks:
        _Callback.unsealed(sealed, source).enqueue()


# -- submitting -------------------------------------------------------------------


def _limit_of(function: TaskFunction[Any, Any]) -> int | None:
    retry = function.task_options.get("retry_options")
    return getattr(retry, "task_retry_limit", None)


def _headers(function: TaskFunction[Any, Any], handle_id: str) -> dict[str, str]:
    headers = {HANDLE_HEADER: handle_id}
    limit = _limit_of(function)
    if limit is not None:
        headers[LIMIT_HEADER] = str(limit)
    return headers


def _enqueue(function: TaskFunction[Any, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], handle_id: str) -> Any:
    return function.options(headers=_headers(function, handle_id))(*args, **kwargs)


def submit(function: TaskFunction[Any, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> TaskHandle:
    """Enqueue function(*args, **kwargs) as a call would, and return a handle on the run."""
    handle_id = store.new_id()
    _enqueue(function, args, kwargs, handle_id)
    return TaskHandle(handle_id, _Ref(handle_id))


def submit_map(function: TaskFunction[Any, Any], iterable: Iterable[Any]) -> GroupHandle:
    """One child per item, added in batches; one group entity written; return the group's handle."""
    if "name" in function.task_options:
        raise TypeError("submit_map() adds many tasks: a task function with name= can only add one")
    items = list(iterable)
    total = len(items)
    leaves = store.leaves_for(total)
    group_id = store.new_id()
    transactional = function._transactional
    group = store.GroupEntity(
        key=store.group_key(group_id),
        created=store.now(),
        total=total,
        leaves=leaves,
        fan=store.FAN,
        queue=function.task_options.get("queue", "default"),
        status=store.SUCCEEDED if total == 0 else store.PENDING,
    )
    store.put_group_state(group, {"done": [], "failed": None, "cb": []})
    (group.put if transactional else ndb.non_transactional(group.put))()
    base = _headers(function, group_id)
    base[GROUP_HEADER] = f"{total} {leaves}"
    size = _MAX_TRANSACTIONAL_TASKS_PER_ADD if transactional else _MAX_TASKS_PER_ADD
    by_url = function._named_by_url()
    check = getattr(function, "_check", None)
    batch: list[taskqueue.Task] = []
    try:
        for index, item in enumerate(items):
            if check is not None:
                check(function, (item,), {})
            headers = {**base, HANDLE_HEADER: f"{group_id}.{index}"}
            batch.append(function._build((item,), {}, by_url, headers=headers))
            if len(batch) == size:
                _add_batch(function._queue, batch, transactional)
                batch.clear()
        if batch:
            _add_batch(function._queue, batch, transactional)
    except BaseException:
        _discard_spills(batch, transactional)
        if not transactional:
            ndb.non_transactional(_cancel_group)(group_id)
        raise
    return GroupHandle(group_id, total, leaves)


# -- running ---------------------------------------------------------------------

_running: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("taskutils_running_handle", default=None)


@dataclass
class _Run:
    ref: _Ref
    progress: tuple[float, float] | None = None
    written: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def set_progress(done: float, total: float) -> bool:
    """Inside a submitted task: report done out of total on its handle; False anywhere else.

    Written at most once a second; the last value is written with the run's outcome.
    """
    run = _running.get()
    if run is None:
        return False
    run.progress = (float(done), float(total))
    if time.monotonic() - run.written < PROGRESS_EVERY:
        return True
    run.written = time.monotonic()
    ref, progress = run.ref, run.progress

    def txn() -> None:
        entity = ref.key.get()
        record = ref.read(entity)
        if record is not None and record["s"] == store.RUNNING:
            record["p"] = progress
            ref.write(entity, record).put()

    _transaction(txn)
    return True


def _ref_for_run(handle_id: str, environ: Mapping[str, Any]) -> _Ref:
    group_id, dot, index = handle_id.partition(".")
    if not dot:
        return _Ref(handle_id)
    total, leaves = (int(n) for n in environ[_GROUP_KEY].split())
    return _Ref(handle_id, group_id, int(index), total, leaves)


def run_handled(
    handle_id: str, environ: Mapping[str, Any], func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run a submitted task's call and record it on its handle: the handler's seam.

    Returns the value, or raises what the call raised (the handler answers as for any
    task); a run already finished or cancelled is skipped and returns None.
    """
    ref = _ref_for_run(handle_id, environ)
    info = current_task()
    skipped = _transaction(lambda: _start(ref))
    if skipped is not None:
        log.info("task handle %s is %s: this delivery is skipped", handle_id, skipped)
        return None
    run = _Run(ref)
    token = _running.set(run)
    try:
        value = func(*args, **kwargs)
        if inspect.iscoroutine(value):
            value = _await(value)
        data = store.dump_result(environ.get("PATH_INFO", handle_id), value)
    except BaseException as error:
        final = _is_final(error, environ, info)
        trace = traceback.format_exc()
        _transaction(lambda: _fail(ref, run, error, trace, final))
        raise
    finally:
        _running.reset(token)
    _transaction(lambda: _succeed(ref, run, data, info.queue_name if info else "default"))
    return value


def _await(coroutine: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    out: list[Any] = []
    errors: list[BaseException] = []
    context = contextvars.copy_context()

    def run() -> None:
        try:
            out.append(context.run(asyncio.run, coroutine))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, name="taskutils-async-task")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return out[0]


def _is_final(error: BaseException, environ: Mapping[str, Any], info: TaskInfo | None) -> bool:
    if isinstance(error, (PermanentTaskFailure, DeferredPermanentTaskFailure)):
        return True
    limit = environ.get(_LIMIT_KEY)
    return limit is not None and limit.isdigit() and info is not None and info.retry_count >= int(limit)


def _start(ref: _Ref) -> str | None:
    entity = ref.key.get()
    record = ref.read(entity) or store.new_record()
    if record["s"] in store.FINAL:
        return str(record["s"])
    record["s"] = store.RUNNING
    record["a"] += 1
    ref.write(entity, record).put()
    return None


def _succeed(ref: _Ref, run: _Run, data: bytes, queue: str) -> None:
    entity = ref.key.get()
    record = ref.read(entity) or store.new_record()
    if record["s"] in store.FINAL:
        return  # another delivery finished first: its result stands
    record["s"] = store.SUCCEEDED
    if run.progress is not None:
        record["p"] = run.progress
    inline = store.INLINE_RESULT if ref.group_id is None else store.INLINE_CHILD_RESULT
    chunks = store.keep_result(record, ref.handle_id, data, inline)
    written = ref.write(entity, record)
    ndb.put_multi([written, *chunks])
    _fire(record["cb"], ref.handle_id)
    if ref.group_id is not None and ref.leaf_complete(written):
        _advance(ref.group_id, 0, ref.leaf, ref.leaves, store.FAN, queue)


def _fail(ref: _Ref, run: _Run, error: BaseException, trace: str, final: bool) -> None:
    entity = ref.key.get()
    record = ref.read(entity) or store.new_record()
    if record["s"] in store.FINAL:
        return
    record["s"] = store.FAILED if final else store.RETRYING
    if run.progress is not None:
        record["p"] = run.progress
    store.record_error(record, error, trace)
    entities = [ref.write(entity, record)]
    if final and ref.group_id is not None:
        entities += _fail_group(ref)
    ndb.put_multi(entities)


def _fail_group(ref: _Ref, cancelled: bool = False) -> list[Any]:
    """The group entity marked failed (or cancelled) by one of its children, if it was not final."""
    group = store.group_key(ref.group_id or "").get()
    if group is None or group.status in store.FINAL:
        return []
    state = store.group_state(group)
    group.status = store.CANCELLED if cancelled else store.FAILED
    state["failed"] = ref.index
    return [store.put_group_state(group, state)]


# -- fan-in ----------------------------------------------------------------------


def _advance(group_id: str, level: int, index: int, leaves: int, fan: int, queue: str) -> None:
    """Inside a transaction: add the task that records node (level, index) as complete."""
    _complete_node.options(queue=queue, transactional=True)(group_id, level, index, leaves, fan, queue)


@task
def _complete_node(group_id: str, level: int, index: int, leaves: int, fan: int, queue: str) -> None:
    """Node (level, index) of a group's tree is complete: record it one level up."""
    sizes = store.levels(leaves, fan)
    if level == len(sizes) - 1:
        _transaction(lambda: _complete_group(group_id, index, sizes[-1]))
        return
    parent = index // fan
    expected = min(fan, sizes[level] - parent * fan)
    key = store.node_key(group_id, level + 1, parent)

    def txn() -> None:
        node = key.get() or store.NodeEntity(key=key, done=[])
        if index in node.done:
            return
        node.done = [*node.done, index]
        node.put()
        if len(node.done) == expected:
            _advance(group_id, level + 1, parent, leaves, fan, queue)

    _transaction(txn)


def _complete_group(group_id: str, index: int, expected: int) -> None:
    group = store.group_key(group_id).get()
    if group is None or group.status in store.FINAL:
        return
    state = store.group_state(group)
    if index in state["done"]:
        return
    state["done"].append(index)
    if len(state["done"]) == expected:
        group.status = store.SUCCEEDED
        _fire(state["cb"], group_id)
    store.put_group_state(group, state).put()


def _cancel_group(group_id: str) -> bool:
    def txn() -> bool:
        group = store.group_key(group_id).get()
        if group is None or group.status in store.FINAL:
            return bool(group is not None and group.status == store.CANCELLED)
        group.status = store.CANCELLED
        store.put_group_state(group, store.group_state(group)).put()
        return True

    if not _transaction(txn):
        return False
    group = store.group_key(group_id).get()
    keys = [store.leaf_key(group_id, n) for n in range(group.leaves)]
    for start in range(0, len(keys), 20):  # a cross-group transaction touches at most 25 groups
        part = keys[start : start + 20]
        _transaction(lambda part=part: _mark_cancelled(part))
    return True


def _mark_cancelled(keys: list[ndb.Key]) -> None:
    leaves = [leaf or store.LeafEntity(key=key) for key, leaf in zip(keys, ndb.get_multi(keys), strict=True)]
    for leaf in leaves:
        leaf.cancelled = True
    ndb.put_multi(leaves)


# -- groups -----------------------------------------------------------------------


class GroupHandle:
    """A handle on a ``submit_map``: its children's handles, status, progress and results."""

    def __init__(self, group_id: str, total: int | None = None, leaves: int | None = None) -> None:
        self.id = group_id
        if total is None or leaves is None:
            group = store.group_key(group_id).get()
            if group is None:
                raise LookupError(f"no task group {group_id}")
            total, leaves = group.total, group.leaves
        self.total: int = total
        self._leaves: int = leaves

    def __repr__(self) -> str:
        return f"<GroupHandle {self.id} {self.total} children>"

    @classmethod
    def get(cls, group_id: str) -> GroupHandle | None:
        """The group with this id; None when there is none."""
        group = store.group_key(group_id).get()
        return None if group is None else cls(group_id, group.total, group.leaves)

    @property
    def handles(self) -> list[TaskHandle]:
        """The children's handles, in item order."""
        return [
            TaskHandle(f"{self.id}.{i}", _Ref(f"{self.id}.{i}", self.id, i, self.total, self._leaves))
            for i in range(self.total)
        ]

    def _group(self) -> store.GroupEntity:
        group = store.group_key(self.id).get()
        if group is None:
            raise LookupError(f"task group {self.id} is gone")
        return group

    def _records(self) -> list[dict[str, Any] | None]:
        """Every child's record, in item order (None for a child that has not started)."""
        keys = [store.leaf_key(self.id, n) for n in range(self._leaves)]
        found: list[Any] = []
        for start in range(0, len(keys), 500):
            found += ndb.get_multi(keys[start : start + 500])
        by_leaf = [store.leaf_records(e, self.id, n) for n, e in enumerate(found)]
        return [by_leaf[i % self._leaves].get(i // self._leaves) for i in range(self.total)]

    @property
    def status(self) -> str:
        """ "pending", "running", "succeeded", "failed" or "cancelled"."""
        status = str(self._group().status)
        if status != store.PENDING:
            return status
        started = any(r is not None and r["s"] != store.PENDING for r in self._records())
        return store.RUNNING if started else store.PENDING

    def done(self) -> bool:
        return self._group().status in store.FINAL

    @property
    def progress(self) -> float:
        """Finished children / all children (1.0 for an empty group)."""
        if not self.total:
            return 1.0
        return self.counts()["finished"] / self.total

    def counts(self) -> dict[str, int]:
        """How many children are in each status, plus "finished" and "total"."""
        counts = dict.fromkeys(
            (store.PENDING, store.RUNNING, store.RETRYING, store.SUCCEEDED, store.FAILED, store.CANCELLED), 0
        )
        for record in self._records():
            counts[record["s"] if record is not None else store.PENDING] += 1
        counts["finished"] = counts[store.SUCCEEDED] + counts[store.FAILED] + counts[store.CANCELLED]
        counts["total"] = self.total
        return counts

    def results(self, timeout: float | None = 0) -> list[Any]:
        """The children's results in item order, or the first failed child's exception raised again.

        Waits like ``TaskHandle.result``; TaskCancelledError when the group was cancelled.
        """
        group = _wait(lambda: {"s": self._group().status}, timeout, f"task group {self.id}")
        if group["s"] == store.CANCELLED:
            raise TaskCancelledError(f"task group {self.id} was cancelled")
        if group["s"] == store.FAILED:
            failed = store.group_state(self._group())["failed"]
            TaskHandle(f"{self.id}.{failed}").result()
            raise TaskRunError(f"task group {self.id} failed")  # pragma: no cover - result() raised
        records = self._records()
        return [store.load_result(r or {}, f"{self.id}.{i}") for i, r in enumerate(records)]

    def cancel(self) -> bool:
        """Cancel the group: children that have not started are skipped; the callback never runs."""
        return _cancel_group(self.id)

    def then(self, callback: Callable[[list[Any]], Any]) -> TaskHandle:
        """Run callback(results in item order) as a task, once, after every child succeeded."""
        cb = _Callback.make(callback, self.id)
        key = store.group_key(self.id)

        def txn() -> None:
            group = key.get()
            if group.status == store.SUCCEEDED:
                cb.enqueue()
            elif group.status not in store.FINAL:
                state = store.group_state(group)
                if len(state["cb"]) >= store.MAX_CALLBACKS:
                    raise TaskError(f"task group {self.id} has {store.MAX_CALLBACKS} callbacks already")
                state["cb"].append(cb.sealed())
                ndb.put_multi([store.put_group_state(group, state), cb.pending_entity()])
                return
            cb.pending_entity().put()

        _transaction(txn)
        return TaskHandle(cb.handle_id)

    @classmethod
    def recent(cls, limit: int = 50) -> list[GroupHandle]:
        """The groups submitted last, newest first."""
        query = store.GroupEntity.query().order(-store.GroupEntity.created)
        return [cls(g.key.id(), g.total, g.leaves) for g in query.fetch(limit)]
