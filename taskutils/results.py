"""Results and fan-in: ``submit`` keeps a handle on a run, ``submit_map`` on a group of runs.

Design (what each step costs in Datastore, and why it is safe to deliver twice):

- **Nothing is written to submit.** ``submit`` adds the task as a call would, with the
  header ``X-Taskutils-Handle: <id>`` (and ``X-Taskutils-Retry-Limit`` when the task has
  ``retry_options.task_retry_limit``). The handle is recorded when its task first runs, as
  Celery's result backend does, so a transactional submit is just a transactional task:
  it commits or rolls back with the caller's transaction, with no extra entity group.
  Until it runs, ``TaskHandle.get(id)`` answers "pending" all the same: the id says the
  app issued it (``taskutils.results_ids``: signed with the key ring when keys are set).
  ``then()`` and ``cancel()`` record a handle that has not run yet.
- **A run is two transactions** on its record: one before the function runs (skip it if
  cancelled or already finished, else ``running`` and one more attempt), one after
  (``succeeded`` with the pickled result, or ``retrying`` / ``failed`` with the pickled
  exception). Each is one read and one write. The second one finishes the run only if no
  other delivery did, so a duplicate delivery records one result, and the callbacks are
  added in that same transaction (transactional tasks): exactly once, with no task names,
  which Cloud Tasks forgets after about an hour.
- **A group writes one entity to submit:** ``_TaskutilsGroup`` (its size and shape,
  which its id carries too). Children are ``<group>.<i>``; child ``i`` keeps its record in slot ``i // L`` of leaf
  ``i % L`` (``L`` leaves of at most 32 children, at least 8 leaves), so neighbouring
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
- **Why not the alternatives.** One counter entity that every child increments caps a
  group at about one child per second (one write per second per entity group). Sharded
  counters need every shard read to know the total: O(shards) per child. A count query
  over the children's entities costs O(children) per child, O(n^2) in all. Polling for the
  last child (Celery's ``chord_unlock``) wastes work and races. The tree costs each child
  its two transactions, and the whole group about n/32 + n/512 + ... fan-in tasks.
- **Reading** a handle is one get (a child: its leaf); a group's status, progress and
  results read its leaves in one batched get.
- Results and exceptions are pickled (cloudpickle when needed) and framed by
  ``taskutils.codec``: signed when keys are configured, and checked before unpickling.
  A submitted task's payload is signed for its URL, handle id and retry limit together,
  so with keys no request can make a run record on another handle, or take another
  retry limit; a child's shape comes from its (signed) id, never from a header.
- ``sweep`` keeps a source that succeeded until its callbacks finished, since they read
  its result; and it remembers its cutoff, so that an issued id with no record that was
  due before it answers None.
- All of it goes through the store of the backend in use (``taskutils.backends.store``):
  on App Engine the low-level ``google.appengine.api.datastore`` API, whose transactions
  cost a fraction of ndb's in CPU; on the cloud backend Cloud Datastore. Entities are
  listed in ``taskutils.results_store``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from . import codec, results_ids
from . import results_store as store
from .exc import TaskCancelledError, TaskError, TaskRunError
from .results_port import TaskLike
from .results_run import Callback, cancel_group, drop_callbacks, end_group, enqueue
from .results_run import run_handled as run_handled
from .results_run import set_progress as set_progress

__all__ = ["GroupHandle", "TaskHandle", "set_progress"]

POLL_FIRST, POLL_MAX = 0.1, 2.0  # result(timeout): seconds between reads, growing 1.5 times each time


class TaskHandle:
    """A handle on one submitted run: its status, its result, its callbacks.

    Get one from ``TaskFunction.submit``, ``GroupHandle.handles`` or ``TaskHandle.get(id)``.
    Every property reads Datastore afresh (one get).
    """

    def __init__(self, handle_id: str, _ref: store.Ref | None = None) -> None:
        self.id = handle_id
        self._ref = _ref or store.ref_of(handle_id) or store.Ref(handle_id)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    @classmethod
    def get(cls, handle_id: str) -> TaskHandle | None:
        """The handle with this id, "pending" until its task runs; None for an id this app never issued.

        Answers from the moment ``submit`` (or ``submit_map``) returned, in any process:
        the id says it was issued (signed with the key ring when keys are set). None as
        well once ``sweep`` deleted the handle or its group. TypeError when handle_id is
        not a str, ValueError when it is not the form of a handle id.
        """
        ref = store.ref_of(handle_id, read_group=True)
        if ref is None:
            return None
        if ref.group_id is None:
            entity, marker = store.get_many([store.handle_key(handle_id), store.swept_key()])
            if entity is None and not store.may_be_pending(handle_id, marker):
                return None
        return cls(handle_id, ref)

    def _record(self) -> dict[str, Any]:
        record = self._ref.read(store.get(self._ref.key)) or store.new_record()
        source = record.get("src")
        if (
            source is not None
            and record["s"] == store.PENDING
            and _status_of(source) in (store.FAILED, store.CANCELLED)
        ):
            record = {**record, "s": store.CANCELLED}  # a callback whose source failed never runs
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
        """How many times its task has started."""
        return int(self._record()["a"])

    @property
    def progress(self) -> float:
        """What the task last reported through ``set_progress()``, as done/total; 1.0 once it succeeded."""
        record = self._record()
        if record["s"] == store.SUCCEEDED:
            return 1.0
        done, total = record.get("p") or (0.0, 0.0)
        return done / total if total else 0.0

    def result(self, timeout: float | None = 0) -> Any:
        """The return value, or the task's own exception raised again.

        Waits up to timeout seconds (None: for ever), reading Datastore every so often;
        TimeoutError when the run has not finished by then, TaskCancelledError when cancelled.
        """
        return _outcome(_wait(self._record, timeout, f"task handle {self.id}"), self.id)

    def exception(self) -> BaseException | None:
        """The exception the run failed with (TaskCancelledError when cancelled); None otherwise."""
        record = self._record()
        if record["s"] not in (store.FAILED, store.CANCELLED):
            return None
        try:
            _outcome(record, self.id)
        except BaseException as e:  # noqa: BLE001 - the task's own exception, whatever it is
            return e
        return None

    @property
    def error_line(self) -> str | None:
        """``Type: message`` of the last failed attempt, None when none failed."""
        return self._record().get("l")

    def cancel(self) -> bool:
        """Cancel a run that has not started: its task is skipped when it arrives. False when too late."""
        ref = self._ref

        def txn() -> bool:
            entity = store.get(ref.key)
            record = ref.read(entity) or store.new_record()
            if record["s"] != store.PENDING:
                return bool(record["s"] == store.CANCELLED)
            record["s"] = store.CANCELLED
            entities = [ref.write(entity, record)[0]]
            drop_callbacks(record["cb"])
            if ref.group_id is not None:  # a group with a cancelled child can no longer succeed
                entities += end_group(ref.group_id, ref.index, store.CANCELLED)
            store.put(entities)
            return True

        return bool(store.transaction(txn))

    def then(self, callback: Callable[[Any], Any]) -> TaskHandle:
        """Run callback(result) as a task, once, after this run succeeded; return the callback's handle.

        A task function keeps its own options; any other callable runs as ``task(callback)``.
        It fires at once if the run has already succeeded, never if it failed or was cancelled.
        """
        ref, cb = self._ref, Callback.make(callback, self.id)

        def txn() -> None:
            entity = store.get(ref.key)
            record = ref.read(entity) or store.new_record()
            if record["s"] in store.FINAL and record["s"] != store.SUCCEEDED:
                store.put(cb.pending_entity(store.CANCELLED))
                return
            if len(record["cb"]) >= store.MAX_CALLBACKS:
                raise TaskError(f"task handle {self.id} has {store.MAX_CALLBACKS} callbacks already")
            # Kept after success too, so that sweep keeps the result until the callback has read it.
            record["cb"].append(cb.sealed())
            store.put([ref.write(entity, record)[0], cb.pending_entity()])
            if record["s"] == store.SUCCEEDED:
                cb.enqueue()

        store.transaction(txn)
        return TaskHandle(cb.handle_id, store.Ref(cb.handle_id))

    @classmethod
    def recent(cls, limit: int = 50) -> list[TaskHandle]:
        """The handles recorded last, newest first (a group's children are under their group)."""
        keys = store.recent(store.HANDLE_KIND, limit, keys_only=True)
        return [cls(key.name(), store.Ref(key.name())) for key in keys]


def _status_of(handle_id: str) -> str:
    """The status of a handle (as TaskHandle.status reads it: a callback of a callback too) or a group."""
    if not store.is_group(handle_id):
        return TaskHandle(handle_id).status
    entity = store.get(store.group_key(handle_id))
    return str(entity["status"]) if entity is not None else store.PENDING


def _wait(read: Callable[[], dict[str, Any]], timeout: float | None, what: str) -> dict[str, Any]:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = POLL_FIRST
    while True:
        record = read()
        if record["s"] in store.FINAL:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{what} is {record['s']}, not finished within {timeout} seconds")
        time.sleep(pause if deadline is None else min(pause, max(0.0, deadline - time.monotonic())))
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


class GroupHandle:
    """A handle on a ``submit_map``: its children's handles, status, progress, results and callback."""

    def __init__(self, group_id: str, total: int | None = None, leaves: int | None = None) -> None:
        self.id = group_id
        if total is None or leaves is None:
            group = store.get(store.group_key(group_id))
            if group is None:
                raise LookupError(f"no task group {group_id}")
            total, leaves = group["total"], group["leaves"]
        self.total: int = total
        self._leaves: int = leaves

    def __repr__(self) -> str:
        return f"<GroupHandle {self.id} of {self.total}>"

    @classmethod
    def get(cls, group_id: str) -> GroupHandle | None:
        """The group with this id; None when there is none (a malformed id included). TypeError for a non-str."""
        try:
            found = results_ids.parse(group_id)
        except ValueError:
            return None
        if found.group is not None or not (found.legacy or group_id.startswith("g")) or not results_ids.issued(found):
            return None
        group = store.get(store.group_key(group_id))
        return None if group is None else cls(group_id, group["total"], group["leaves"])

    @property
    def handles(self) -> list[TaskHandle]:
        """The children's handles, in item order."""
        gid, total, leaves = self.id, self.total, self._leaves
        return [TaskHandle(f"{gid}.{i}", store.Ref(f"{gid}.{i}", gid, i, total, leaves)) for i in range(total)]

    def _group(self) -> store.Entity:
        group = store.get(store.group_key(self.id))
        if group is None:
            raise LookupError(f"task group {self.id} is gone")
        return group

    def _records(self) -> list[dict[str, Any] | None]:
        """Every child's record in item order (None for a child that has not started)."""
        leaves = store.get_many([store.leaf_key(self.id, n) for n in range(self._leaves)])
        by_leaf = [store.read_leaf(e, self.id, n) for n, e in enumerate(leaves)]
        cancelled = [bool(e is not None and e.get("cancelled")) for e in leaves]
        records: list[dict[str, Any] | None] = []
        for i in range(self.total):
            record = by_leaf[i % self._leaves].get(i // self._leaves)
            if cancelled[i % self._leaves] and (record is None or record["s"] == store.PENDING):
                record = {**store.new_record(), "s": store.CANCELLED}
            records.append(record)
        return records

    @property
    def status(self) -> str:
        """ "pending", "running", "succeeded", "failed" or "cancelled"."""
        status = str(self._group()["status"])
        if status != store.PENDING:
            return status
        started = any(r is not None and r["s"] != store.PENDING for r in self._records())
        return store.RUNNING if started else store.PENDING

    def done(self) -> bool:
        """True once every child succeeded, or the group failed or was cancelled."""
        return self._group()["status"] in store.FINAL

    @property
    def progress(self) -> float:
        """Finished children / all children, as a float (1.0 for an empty group)."""
        return self.counts()["finished"] / self.total if self.total else 1.0

    def counts(self) -> dict[str, int]:
        """How many children are in each status, and "finished" and "total"."""
        statuses = (store.PENDING, store.RUNNING, store.RETRYING, store.SUCCEEDED, store.FAILED, store.CANCELLED)
        counts = dict.fromkeys(statuses, 0)
        for record in self._records():
            counts[record["s"] if record is not None else store.PENDING] += 1
        counts["finished"] = counts[store.SUCCEEDED] + counts[store.FAILED] + counts[store.CANCELLED]
        counts["total"] = self.total
        return counts

    def results(self, timeout: float | None = 0) -> list[Any]:
        """The children's results in item order, or the failed child's exception raised again.

        Waits like ``TaskHandle.result``; TaskCancelledError when the group was cancelled.
        """
        status = _wait(lambda: {"s": self._group()["status"]}, timeout, f"task group {self.id}")["s"]
        if status == store.CANCELLED:
            raise TaskCancelledError(f"task group {self.id} was cancelled")
        if status == store.FAILED:
            failed = store.read_group(self._group())["failed"]
            TaskHandle(f"{self.id}.{failed}").result()
            raise TaskRunError(f"task group {self.id} failed")
        return [store.load_result(r or {}, f"{self.id}.{i}") for i, r in enumerate(self._records())]

    def cancel(self) -> bool:
        """Cancel the group: children that have not started are skipped and the callback never runs."""
        return cancel_group(self.id)

    def then(self, callback: Callable[[list[Any]], Any]) -> TaskHandle:
        """Run callback(results in item order) as a task, once, after every child succeeded."""
        cb, key = Callback.make(callback, self.id), store.group_key(self.id)

        def txn() -> None:
            group = store.get(key)
            if group is None:
                raise LookupError(f"task group {self.id} is gone")
            if group["status"] in store.FINAL and group["status"] != store.SUCCEEDED:
                store.put(cb.pending_entity(store.CANCELLED))
                return
            state = store.read_group(group)
            if len(state["cb"]) >= store.MAX_CALLBACKS:
                raise TaskError(f"task group {self.id} has {store.MAX_CALLBACKS} callbacks already")
            # Kept after success too, so that sweep keeps the results until the callback has read them.
            state["cb"].append(cb.sealed())
            store.put([store.write_group(group, state), cb.pending_entity()])
            if group["status"] == store.SUCCEEDED:
                cb.enqueue()

        store.transaction(txn)
        return TaskHandle(cb.handle_id, store.Ref(cb.handle_id))

    @classmethod
    def recent(cls, limit: int = 50) -> list[GroupHandle]:
        """The groups submitted last, newest first."""
        return [cls(g.key().name(), g["total"], g["leaves"]) for g in store.recent(store.GROUP_KIND, limit)]


def submit(function: TaskLike, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> TaskHandle:
    """Enqueue function(*args, **kwargs) as a call would, and return a handle on the run."""
    handle_id = results_ids.new_handle_id(results_ids.due(function.task_options))
    enqueue(function, args, kwargs, handle_id)
    return TaskHandle(handle_id, store.Ref(handle_id))


def start_group(options: Mapping[str, Any], total: int, transactional: bool) -> GroupHandle:
    """Write the entity of a new group of total children of a task function with these options; its handle.

    Written in the caller's transaction when transactional, else outside any. The
    children's tasks are then added by ``TaskFunction.submit_map``.
    """
    leaves = store.leaves_for(total)
    group_id = results_ids.new_group_id(results_ids.due(options), total, leaves)
    group = store.new_group_entity(group_id, total, leaves, options.get("queue", "default"))
    store.put(group, transactional=transactional)
    return GroupHandle(group_id, total, leaves)
