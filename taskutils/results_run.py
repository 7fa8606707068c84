"""Running a submitted task: its record before and after, its callbacks, and a group's fan-in.

See ``taskutils.results`` for the design; ``run_handled`` is the handler's seam. This module
sits below ``taskutils.task``: the tasks it adds (callbacks, fan-in steps, cancelling) are
made through ``taskutils.results_port``, and ``complete_node`` and ``cancel_callbacks`` are
plain functions that run as tasks by their URL (the URLs of taskutils 0.2's task functions).
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
from dataclasses import dataclass
from typing import Any

from . import codec
from . import results_store as store
from ._sdk import PermanentTaskFailure as DeferredPermanentTaskFailure
from .current import current_task
from .exc import PermanentTaskFailure, ResultError
from .results_ids import LIMIT_KEY
from .results_port import TaskLike, tasks

log = logging.getLogger("taskutils.results")

PROGRESS_EVERY = 1.0  # set_progress writes at most once a second; the last value goes with the outcome


# -- callbacks -------------------------------------------------------------------------


class Then:
    """The body of a callback task: read the source's result, then call the callback with it."""

    def __init__(self, source: str, func: Callable[..., Any]) -> None:
        self.source = source
        self.func = func  # the task function itself when it pickles (by reference), else what it wraps

    def __call__(self, headers: Any = None) -> Any:
        """``headers`` is the request's, when the callback was made with ``includeheaders=True``."""
        layer = tasks()
        try:  # the source succeeded before this task was added: it is not there to read only if deleted
            value = layer.outcome(self.source)
        except (LookupError, TimeoutError) as e:
            raise ResultError(f"the source {self.source} of this callback has no result to read: {e}") from e
        func = layer.runs(self.func)  # obj.method: run on its instance, here
        return func(value) if headers is None else func(value, headers=headers)


def _portable(function: TaskLike) -> Any:
    """The task function when it pickles, else the callable it wraps (e.g. ``task(sum)``)."""
    try:
        codec.dumps(function)
    except Exception:
        return function.__wrapped__
    return function


@dataclass
class Callback:
    """A ``then`` callback: its handle id, the handle or group it waits on, and its task function."""

    handle_id: str
    source: str
    function: TaskLike

    @classmethod
    def make(cls, callback: Callable[[Any], Any], source: str) -> Callback:
        return cls(store.new_id(), source, tasks().task_function(callback))

    def sealed(self) -> tuple[str, bytes]:
        """The callback as its source's record keeps it; ValueError when it pickles too big to keep."""
        call = (_portable(self.function), dict(self.function.task_options))
        blob = bytes(store.seal(f"callback/{self.handle_id}", call))
        if len(blob) > store.MAX_CALLBACK:
            raise ValueError(
                f"then({self.function!r}): the callback pickles to {len(blob)} bytes and a handle keeps at "
                f"most {store.MAX_CALLBACK} per callback: pass a module-level function, or data it can look up"
            )
        return self.handle_id, blob

    @classmethod
    def unsealed(cls, sealed: tuple[str, bytes], source: str) -> Callback:
        handle_id, blob = sealed
        func, options = store.unseal(f"callback/{handle_id}", blob)
        return cls(handle_id, source, tasks().task_function(func, options))

    def pending_entity(self, status: str = store.PENDING) -> store.Entity:
        """Its own handle, recorded pending (or cancelled, when its source can no longer succeed)."""
        return store.write_handle(None, self.handle_id, {**store.new_record(), "s": status, "src": self.source})

    def enqueue(self) -> None:
        """Add the callback's task inside the running transaction, with the callable's own options."""
        options = dict(self.function.task_options)
        options.pop("name", None)
        options.pop("parent", None)
        options["transactional"] = True
        options.setdefault("logname", self.function.url_path)
        then = tasks().with_checked_options(Then(self.source, _portable(self.function)), options)
        enqueue(then, (), {}, self.handle_id)


def enqueue(function: TaskLike, args: tuple[Any, ...], kwargs: Mapping[str, Any], handle_id: str) -> None:
    """Add function(*args, **kwargs) as a call would, its task carrying the handle's headers, signed with them."""
    function.add_submitted(args, kwargs, handle_id)


def fire(callbacks: Iterable[tuple[str, bytes]], source: str) -> None:
    for sealed in callbacks:
        Callback.unsealed(sealed, source).enqueue()


def drop_callbacks(callbacks: Iterable[tuple[str, bytes]]) -> None:
    """Inside a transaction: the source can no longer succeed, so its callbacks' handles are to be cancelled.

    One task, added with the outcome, marks them cancelled, then their own callbacks, level by
    level; until it has run, their handles already read as cancelled (``TaskHandle.status``).
    """
    handle_ids = [handle_id for handle_id, _ in callbacks]
    if handle_ids:
        tasks().task_function(cancel_callbacks, {"transactional": True})(handle_ids)


def cancel_callbacks(handle_ids: list[str]) -> None:
    """A task: mark these callback handles cancelled where still pending; then theirs, in a task of their own."""
    after: list[str] = []
    for handle_id in handle_ids:
        after += store.transaction(_cancel_pending, handle_id)
    if after:
        tasks().task_function(cancel_callbacks)(after)


def _cancel_pending(handle_id: str) -> list[str]:
    entity = store.get(store.handle_key(handle_id))
    record = store.read_handle(entity, handle_id)
    if record is None or record["s"] != store.PENDING:
        return []
    record["s"] = store.CANCELLED
    store.put(store.write_handle(entity, handle_id, record))
    return [cb_id for cb_id, _ in record["cb"]]


# -- running ------------------------------------------------------------------------------


@dataclass
class _Run:
    ref: store.Ref
    progress: tuple[float, float] | None = None
    written: float = 0.0


_running: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("taskutils_running_handle", default=None)


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
        entity = store.get(ref.key)
        record = ref.read(entity)
        if record is not None and record["s"] == store.RUNNING:
            record["p"] = progress
            store.put(ref.write(entity, record)[0])

    store.transaction(txn)
    return True


def _ref_for_run(handle_id: str) -> store.Ref:
    """Where the run records itself: the handle's own entity, or its slot in its group (shape from the id)."""
    ref = store.ref_of(handle_id)
    if ref is None:  # the handler checked the id: a 0.2 child whose group is gone
        raise ResultError(f"task handle {handle_id}: its group is gone, so the run cannot be recorded")
    return ref


def run_handled(
    handle_id: str, environ: Mapping[str, Any], func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run a submitted task's call and record it on its handle: the task handler's seam.

    Returns the value, or raises what the call raised (the handler answers as for
    any task); a delivery of a run already finished or cancelled is skipped.
    """
    ref = _ref_for_run(handle_id)
    skipped = store.transaction(_start, ref, environ.get("PATH_INFO", ""))
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
        final = _is_final(error, environ)
        store.transaction(_fail, ref, run, error, traceback.format_exc(), final)
        raise
    finally:
        _running.reset(token)
    info = current_task()
    store.transaction(_succeed, ref, run, data, info.queue_name if info else "default")
    return value


def _await(coroutine: Any) -> Any:
    """Run an async task's coroutine to completion and return its value."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    out: list[Any] = []
    context = contextvars.copy_context()

    def run() -> None:
        try:
            out.append((True, context.run(asyncio.run, coroutine)))
        except BaseException as e:
            out.append((False, e))

    thread = threading.Thread(target=run, name="taskutils-async-task")
    thread.start()
    thread.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _is_final(error: BaseException, environ: Mapping[str, Any]) -> bool:
    """True when the queue will not run the task again: a permanent failure, or its last attempt."""
    if isinstance(error, (PermanentTaskFailure, DeferredPermanentTaskFailure)):
        return True
    limit = environ.get(LIMIT_KEY)
    info = current_task()
    return limit is not None and limit.isdigit() and info is not None and info.retry_count >= int(limit)


def _start(ref: store.Ref, url: str = "") -> str | None:
    entity = store.get(ref.key)
    record = ref.read(entity) or store.new_record()
    if record["s"] in store.FINAL:
        return str(record["s"])
    record["s"] = store.RUNNING
    record["a"] += 1
    record["u"], record["st"] = url, time.time()  # for the console: what runs, and when its last attempt began
    store.put(ref.write(entity, record)[0])
    return None


def _succeed(ref: store.Ref, run: _Run, data: bytes, queue: str) -> None:
    entity = store.get(ref.key)
    record = ref.read(entity) or store.new_record()
    if record["s"] in store.FINAL:
        return  # another delivery finished first: its result stands
    record["s"] = store.SUCCEEDED
    record["ft"] = time.time()
    record.pop("e", None)  # an earlier attempt's exception and traceback: the error line stays
    record.pop("t", None)
    if run.progress is not None:
        record["p"] = run.progress
    inline = store.INLINE_RESULT if ref.group_id is None else store.INLINE_CHILD_RESULT
    chunks = store.keep_result(record, ref.handle_id, data, inline)
    written, leaf_complete = ref.write(entity, record)
    store.put([written, *chunks])
    fire(record["cb"], ref.handle_id)
    if leaf_complete and ref.group_id is not None:
        advance(ref.group_id, 0, ref.leaf, ref.leaves, store.FAN, queue)


def _fail(ref: store.Ref, run: _Run, error: BaseException, trace: str, final: bool) -> None:
    entity = store.get(ref.key)
    record = ref.read(entity) or store.new_record()
    if record["s"] in store.FINAL:
        return
    record["s"] = store.FAILED if final else store.RETRYING
    record["ft"] = time.time()
    if run.progress is not None:
        record["p"] = run.progress
    store.record_error(record, error, trace)
    entities = [ref.write(entity, record)[0]]
    if final:
        drop_callbacks(record["cb"])
        if ref.group_id is not None:
            entities += end_group(ref.group_id, ref.index, store.FAILED)
    store.put(entities)


def end_group(group_id: str, index: int, status: str) -> list[store.Entity]:
    """Inside a transaction: the group entity marked failed or cancelled because of child index."""
    group = store.get(store.group_key(group_id))
    if group is None or group["status"] in store.FINAL:
        return []
    state = store.read_group(group)
    state["failed"] = index
    drop_callbacks(state["cb"])
    return [store.write_group(group, state, status)]


# -- fan-in -----------------------------------------------------------------------------------


def advance(group_id: str, level: int, index: int, leaves: int, fan: int, queue: str) -> None:
    """Inside a transaction: add the task that records node (level, index) of a group's tree as complete."""
    step = tasks().task_function(complete_node, {"queue": queue, "transactional": True})
    step(group_id, level, index, leaves, fan, queue)


def complete_node(group_id: str, level: int, index: int, leaves: int, fan: int, queue: str) -> None:
    """A task: node (level, index) of a group's tree is complete: record it one level up, once."""
    sizes = store.levels(leaves, fan)
    if level == len(sizes) - 1:
        store.transaction(_complete_group, group_id, index, sizes[-1])
        return
    parent = index // fan
    expected = min(fan, sizes[level] - parent * fan)
    key = store.node_key(group_id, level + 1, parent)

    def txn() -> None:
        node = store.get(key)
        if node is None:
            node = store.new_entity(key, ("done",))
            node["done"] = []
        done = list(node["done"] or [])
        if index in done:
            return
        node["done"] = [*done, index]
        store.put(node)
        if len(done) + 1 == expected:
            advance(group_id, level + 1, parent, leaves, fan, queue)

    store.transaction(txn)


def _complete_group(group_id: str, index: int, expected: int) -> None:
    group = store.get(store.group_key(group_id))
    if group is None or group["status"] in store.FINAL:
        return
    state = store.read_group(group)
    if index in state["done"]:
        return
    state["done"].append(index)
    status = None
    if len(state["done"]) == expected:
        status = store.SUCCEEDED
        fire(state["cb"], group_id)
    store.put(store.write_group(group, state, status))


def cancel_group(group_id: str) -> bool:
    """Mark the group cancelled, then every leaf, so that children not started are skipped."""

    def txn() -> tuple[bool, int]:
        group = store.get(store.group_key(group_id))
        if group is None:
            return False, 0
        if group["status"] in store.FINAL:
            return group["status"] == store.CANCELLED, 0
        state = store.read_group(group)
        drop_callbacks(state["cb"])
        store.put(store.write_group(group, state, store.CANCELLED))
        return True, group["leaves"]

    cancelled, leaves = store.transaction(txn)
    keys = [store.leaf_key(group_id, n) for n in range(leaves)]
    for start in range(0, len(keys), 20):  # a cross-group transaction touches at most 25 groups
        store.transaction(_mark_cancelled, group_id, start, keys[start : start + 20])
    return bool(cancelled)


def _mark_cancelled(group_id: str, first: int, keys: list[store.Key]) -> None:
    leaves = store.get_many(keys)
    for n, leaf in enumerate(leaves):
        if leaf is None:
            leaves[n] = leaf = store.write_leaf(None, group_id, first + n, {})
        leaf["cancelled"] = True
    store.put([leaf for leaf in leaves if leaf is not None])
