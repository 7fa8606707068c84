"""The call side of controls: what a call of a controlled task function does before (or instead of) adding.

``unique`` and ``debounce`` read and write one entity in a transaction that also
adds the task (a transactional add), so a task exists exactly when its marker
says so; with ``transactional=True`` that is the caller's own transaction.
``exclusive``, ``concurrency`` and ``rate`` cost nothing here: the task carries
its keys in a header and the run side decides when it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .._sdk import taskqueue
from . import keys, spec, store
from .options import Controls

Scope = Callable[[str], str]  # a URL path -> what the payload is signed for


class Handles(Protocol):
    """How a run is recorded on a handle (``taskutils.results``): its id, and the headers and signing scope
    of a task that carries it."""

    def new_id(self, due: float) -> str: ...
    def task(self, handle_id: str) -> tuple[Mapping[str, str], Scope]: ...


class TaskFunction(Protocol):
    """What the call side needs of a task function (``taskutils.task.TaskFunction``)."""

    @property
    def controls(self) -> Controls | None: ...
    @property
    def url_path(self) -> str: ...
    @property
    def task_options(self) -> Mapping[str, Any]: ...
    def add_call(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        scope: Scope | None = None,
        transactional: bool | None = None,
        countdown: float | None = None,
    ) -> taskqueue.Task: ...


log = logging.getLogger("taskutils.controls")

PENDING_GRACE = 3600.0  # a marker whose task was not seen this long after it was due frees its key


def header_of(
    function: TaskFunction, controls: Controls, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The run-side part of the controls header of one call: lease and rate keys, what a put-back keeps."""
    options = function.task_options
    path = function.url_path
    found: dict[str, Any] = {}
    limit = controls.limit
    if limit is not None:
        key_fn = controls.exclusive if callable(controls.exclusive) else controls.key
        with_args = bool(controls.exclusive) and key_fn is None  # concurrency without key=: every run of the task
        name, readable = keys.key_of("lease", path, key_fn, args, kwargs, with_args)
        found["l"] = [name, limit, spec.lease_for(options), readable]
    if controls.rate is not None:
        name, _ = keys.key_of("rate", path, controls.key, args, kwargs, with_args=False)
        found["r"] = [name, *controls.rate]
    kept = spec.queue_kwargs(options)
    if kept:
        found["q"] = kept
    limit_attempts = getattr(options.get("retry_options"), "task_retry_limit", None)
    if limit_attempts is not None:
        found["rl"] = limit_attempts
    return found


def call(
    function: TaskFunction,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    submit: bool,
    handles: Handles,
) -> tuple[taskqueue.Task | None, str | None]:
    """Call (or submit) a controlled task function whose arguments were checked.

    Returns the task added (None when the call joined a pending run) and the id of the
    handle on the run that carries the call (None for a plain call that needs none).
    """
    controls = function.controls
    assert controls is not None
    header = header_of(function, controls, args, kwargs)
    if controls.unique:
        return _unique(function, controls, header, args, kwargs, handles)
    if controls.debounce is not None:
        return _debounce(function, controls, header, args, kwargs, handles)
    if not submit:
        headers, scope = _signed(header, None, None)
        return function.add_call(args, kwargs, headers=headers, scope=scope), None
    handle_id = handles.new_id(store.now() + _due_in(function))
    headers, scope = _signed(header, *handles.task(handle_id))
    return function.add_call(args, kwargs, headers=headers, scope=scope), handle_id


def _signed(
    header: Mapping[str, Any], handle: Mapping[str, str] | None, scope: Scope | None
) -> tuple[dict[str, str], Scope | None]:
    """The task's headers, and what its payload is signed for: its handle's scope, bound to its controls.

    With keys, a request whose controls header was changed or removed fails the payload's
    signature (``spec.scope``), so no one who can post tasks can make a run skip its key or
    its lease.
    """
    headers = {spec.HEADER: spec.dumps(header)} if header else {}
    if handle is not None:
        headers.update(handle)
    if not header:
        return headers, scope
    text = headers[spec.HEADER]
    if scope is None:
        return headers, lambda path: spec.scope(text, path)
    inner = scope
    return headers, lambda path: spec.scope(text, inner(path))


def _due_in(function: TaskFunction, countdown: float | None = None) -> float:
    """Seconds until the task's first run is due."""
    options = function.task_options
    if countdown is not None:
        return countdown
    if options.get("countdown") is not None:
        return max(0.0, float(options["countdown"]))
    if options.get("eta") is not None:
        import datetime

        eta = options["eta"]
        now = datetime.datetime.now(eta.tzinfo) if eta.tzinfo else datetime.datetime.now()
        return max(0.0, (eta - now).total_seconds())
    return 0.0


def _in_transaction(function: TaskFunction, body: Any) -> Any:
    """body(connection or None) in the caller's transaction (transactional=True) or in one of its own."""
    if function.task_options.get("transactional"):
        return store.in_callers_transaction(body)
    return store.transaction(body, None)


def _unique(
    function: TaskFunction,
    controls: Controls,
    header: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    handles: Handles,
) -> tuple[taskqueue.Task | None, str]:
    name, readable = keys.key_of("unique", function.url_path, controls.unique, args, kwargs)
    handle_id = handles.new_id(store.now() + _due_in(function))
    header = {**header, "u": [name, handle_id, spec.lease_for(function.task_options)]}
    until = store.now() + _due_in(function) + PENDING_GRACE + spec.lease_for(function.task_options)

    def body(connection: Any) -> tuple[str, taskqueue.Task | None]:
        marker = store.State(store.UNIQUE_KIND, name, connection)
        state = marker.read()
        if marker.exists and state.get("until", 0) > store.now():
            return state["h"], None
        marker.state = {"h": handle_id, "until": until}
        marker.write(readable)
        headers, scope = _signed(header, *handles.task(handle_id))
        return handle_id, function.add_call(args, kwargs, headers=headers, scope=scope, transactional=True)

    found, added = _in_transaction(function, body)
    if added is None:
        log.debug("unique key of %s held by run %s: no task added", function.url_path, found)
    return added, found


def _debounce(
    function: TaskFunction,
    controls: Controls,
    header: dict[str, Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    handles: Handles,
) -> tuple[taskqueue.Task | None, str]:
    assert controls.debounce is not None
    seconds = controls.debounce
    name, readable = keys.key_of("debounce", function.url_path, controls.key, args, kwargs)
    token = handles.new_id(store.now() + seconds)  # the run's handle id, too
    header = {**header, "d": [name, token, spec.lease_for(function.task_options)]}
    sealed = store.seal(f"debounce/{name}", (args, kwargs))
    until = store.now() + seconds + PENDING_GRACE + spec.lease_for(function.task_options)

    def body(connection: Any) -> tuple[str, taskqueue.Task | None]:
        entity = store.State(store.DEBOUNCE_KIND, name, connection)
        state = entity.read()
        state["c"] = sealed  # the last call's arguments: the pending run takes these
        if state.get("p") and state.get("pu", 0) > store.now():
            entity.write(readable)
            return state["p"], None
        state["p"], state["pu"] = token, until
        entity.write(readable)
        headers, scope = _signed(header, *handles.task(token))
        return token, function.add_call(
            args, kwargs, headers=headers, scope=scope, transactional=True, countdown=seconds
        )

    found, added = _in_transaction(function, body)
    return added, found


def item_headers(function: TaskFunction, calls: list[tuple[Any, ...]]) -> list[tuple[dict[str, str], Scope | None]]:
    """The controls headers of map()'s tasks, and what each payload is signed for, one per item's arguments."""
    controls = function.controls
    assert controls is not None
    return [_signed(header_of(function, controls, args, {}), None, None) for args in calls]
