"""The @task decorator and the task function object it returns."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

from google.appengine.api import taskqueue

from . import codec
from .config import get_keyring, settings

log = logging.getLogger("taskutils.task")

P = ParamSpec("P")
R = TypeVar("R")

TAG_HEADER = "X-Taskutils-Tag"
LIBRARY_HEADERS: Mapping[str, str] = types.MappingProxyType({"Content-Type": "application/octet-stream"})

# Options passed straight to google.appengine.api.taskqueue.Task.
_TASK_KWARGS = ("countdown", "eta", "name", "target", "retry_options", "dispatch_deadline_usec")
_OPTIONS = frozenset(_TASK_KWARGS + ("queue", "headers", "tag", "transactional", "includeheaders", "logname", "parent"))
_URL_UNSAFE = re.compile(r"[^A-Za-z0-9_.~/-]")
_MAX_TASKS_PER_ADD = taskqueue.MAX_TASKS_PER_ADD
_MAX_TRANSACTIONAL_TASKS_PER_ADD = 5

# Cloud Tasks endpoints ("" for Google's, else the emulator's host:port) that answered a batch
# add with UNIMPLEMENTED: this process adds tasks there one by one from then on.
_no_batch_endpoints: set[str] = set()


def _cloud_tasks_endpoint() -> str | None:
    """Where the SDK sends push tasks when it uses Cloud Tasks; None on the App Engine Task Queue."""
    if os.environ.get("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "").lower() != "true":
        return None
    return os.environ.get("CLOUD_TASKS_EMULATOR_HOST", "")


def _is_unimplemented(error: taskqueue.Error) -> bool:
    """True when the SDK's error wraps gRPC UNIMPLEMENTED / HTTP 501: the backend has no batch RPC."""
    try:
        from google.api_core.exceptions import MethodNotImplemented
    except ImportError:
        return False
    return isinstance(error.__cause__, MethodNotImplemented)


def _add_batch(queue: taskqueue.Queue, batch: list[taskqueue.Task], transactional: bool) -> list[taskqueue.Task]:
    """Add tasks in one queue RPC, or one by one where Cloud Tasks has no batch add."""
    endpoint = None if transactional or len(batch) == 1 else _cloud_tasks_endpoint()
    if endpoint is None or endpoint not in _no_batch_endpoints:
        try:
            return queue.add(batch, transactional=transactional)
        except taskqueue.Error as e:
            if endpoint is None or not _is_unimplemented(e):
                raise
            _no_batch_endpoints.add(endpoint)
            log.warning(
                "Cloud Tasks at %s has no BatchCreateTasks (%s): adding tasks one by one from now on",
                endpoint or "its default endpoint",
                e,
            )
    return [t if t.was_enqueued else queue.add(t) for t in batch]


def _discard_spills(built: list[taskqueue.Task], transactional: bool) -> None:
    """Delete the spilled payloads of built tasks that were not added (not needed when transactional)."""
    if not transactional:
        from . import spill

        for t in built:
            if not t.was_enqueued:
                spill.discard(t.payload)


def _check_type(name: str, value: object, types_: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, types_) or (isinstance(value, bool) and bool not in _as_tuple(types_)):
        raise TypeError(f"task option {name}= must be {what}, got {value!r}")


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check task options; raise TypeError for unknown ones, bad types and contradictions."""
    unknown = set(options) - _OPTIONS
    if unknown:
        raise TypeError(
            f"unknown task option(s): {', '.join(sorted(unknown))}; expected some of: {', '.join(sorted(_OPTIONS))}"
        )
    opts = {k: v for k, v in options.items() if v is not None}
    checks: dict[str, tuple[type | tuple[type, ...], str]] = {
        "queue": (str, "a queue name"),
        "countdown": ((int, float), "a number of seconds"),
        "eta": (datetime.datetime, "a datetime"),
        "name": (str, "a task name"),
        "target": (str, "a service or version name"),
        "retry_options": (taskqueue.TaskRetryOptions, "a taskqueue.TaskRetryOptions"),
        "dispatch_deadline_usec": (int, "a number of microseconds"),
        "headers": (Mapping, "a mapping of header names to values"),
        "tag": (str, "a string"),
        "transactional": (bool, "True or False"),
        "includeheaders": (bool, "True or False"),
        "logname": (str, "a URL path"),
    }
    for name, value in opts.items():
        if name in checks:
            _check_type(name, value, *checks[name])
    if "countdown" in opts and "eta" in opts:
        raise TypeError("task options countdown= and eta= contradict each other: give one")
    if opts.get("countdown", 0) < 0:
        raise TypeError(f"task option countdown= must not be negative, got {opts['countdown']}")
    if opts.get("transactional") and "name" in opts:
        raise TypeError("a transactional task cannot be named: give transactional= or name=")
    if "parent" in opts and not opts.get("transactional"):
        raise TypeError("task option parent= places a spilled payload in a transaction: it needs transactional=True")
    if "logname" in opts and not re.fullmatch(r"[A-Za-z0-9_.~-][A-Za-z0-9_.~/-]*", opts["logname"]):
        raise TypeError(f"task option logname= must be a URL path of [A-Za-z0-9_.~/-], got {opts['logname']!r}")
    if "headers" in opts:
        opts["headers"] = dict(opts["headers"])
    return opts


def merge_options(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Options of base overridden by extra, checked; headers are merged, countdown and eta replace each other."""
    merged = dict(base)
    if "countdown" in extra or "eta" in extra:
        merged.pop("countdown", None)
        merged.pop("eta", None)
    if "transactional" in extra and not extra["transactional"]:
        merged.pop("parent", None)
    merged.update(extra)
    if "headers" in base and "headers" in extra:
        merged["headers"] = {**base["headers"], **extra["headers"]}
    return validate_options(merged)  # a merge can contradict, e.g. transactional= over name=


def url_path_of(func: Callable[..., Any]) -> str:
    """The readable, URL-safe part of a task's URL after the route: module/function."""
    module = getattr(func, "__module__", None) or type(func).__module__
    qualname = getattr(func, "__qualname__", None) or type(func).__qualname__
    name = qualname.replace(".<locals>.", "/").replace("<lambda>", "lambda")
    return _URL_UNSAFE.sub("_", f"{module}/{name}")


def resolve(module: str, qualname: str) -> Any:
    """The object named qualname in module, importing it if needed."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        __import__(module)
        obj = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class TaskFunction(Generic[P, R]):
    """A callable that enqueues a push task running the wrapped callable with its arguments."""

    __wrapped__: Callable[P, R]

    def __init__(self, func: Callable[P, R], options: Mapping[str, Any]) -> None:
        functools.update_wrapper(self, func)
        self._options = types.MappingProxyType(dict(options))
        self._suffix = "/" + (options.get("logname") or url_path_of(func))
        self._queue = taskqueue.Queue(options.get("queue", "default"))
        self._transactional = bool(options.get("transactional"))
        self._parent = options.get("parent")
        self._flags = codec.HEADERS if options.get("includeheaders") else 0
        headers = {**LIBRARY_HEADERS, **options.get("headers", {})}
        if "tag" in options:
            headers[TAG_HEADER] = options["tag"]
        self._task_kwargs: dict[str, Any] = {k: options[k] for k in _TASK_KWARGS if k in options}
        self._task_kwargs["headers"] = headers
        self._module = getattr(func, "__module__", None)
        self._qualname = getattr(func, "__qualname__", None)

    @property
    def task_options(self) -> Mapping[str, Any]:
        """The options this task function enqueues with."""
        return self._options

    @property
    def url(self) -> str:
        """The URL its tasks are posted to, under the current route."""
        return settings.route + self._suffix

    def __repr__(self) -> str:
        return f"<task {self._suffix[1:]} {dict(self._options)!r}>"

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return types.MethodType(self, instance)

    def __reduce__(self) -> str | tuple[Any, ...]:
        if self._named_by_url():
            return self._qualname  # type: ignore[return-value]
        return (TaskFunction, (self.__wrapped__, dict(self._options)))

    def _named_by_url(self) -> bool:
        """True when a worker can find the callable from the URL alone."""
        if self._module in (None, "__main__") or self._qualname is None or "logname" in self._options:
            return False
        try:
            found = resolve(self._module, self._qualname)
        except Exception:
            return False
        if isinstance(found, TaskFunction):
            found = found.__wrapped__
        return found is self.__wrapped__

    def options(self, **options: Any) -> TaskFunction[P, R]:
        """A new task function with these options merged over the current ones."""
        return TaskFunction(self.__wrapped__, merge_options(self._options, validate_options(options)))

    def _build(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], by_url: bool | None = None) -> taskqueue.Task:
        if by_url is None:
            by_url = self._named_by_url()
        func = None if by_url else self.__wrapped__
        data = codec.dumps_call(self._suffix[1:], func, args, kwargs, transactional=self._transactional)
        path = settings.route + self._suffix
        flags = self._flags | (codec.BY_URL if by_url else 0)
        keyring = get_keyring()
        if len(data) < taskqueue.MAX_PUSH_TASK_SIZE_BYTES:
            try:
                return taskqueue.Task(payload=codec.frame(path, data, flags, keyring), url=path, **self._task_kwargs)
            except taskqueue.TaskTooLargeError:
                pass  # the URL and headers tipped it over: spill
        from . import spill

        pointer = spill.store(self._suffix[1:], data, transactional=self._transactional, parent=self._parent)
        payload = codec.frame(path, pointer, flags | codec.POINTER, keyring)
        return taskqueue.Task(payload=payload, url=path, **self._task_kwargs)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> taskqueue.Task:
        """Enqueue one push task that calls the wrapped callable with these arguments."""
        built = self._build(args, kwargs)
        try:
            return self._queue.add(built, transactional=self._transactional)
        except BaseException:
            _discard_spills([built], self._transactional)
            raise

    def map(self, iterable: Iterable[Any]) -> list[taskqueue.Task]:
        """Enqueue one task per item, the item its single argument; return the added tasks in order.

        Tasks go in batches of at most 100 per queue RPC (5 when transactional).
        Where Cloud Tasks has no batch add (an emulator, an older backend), they
        are added one by one instead, and this process remembers it.
        """
        if "name" in self._options:
            raise TypeError("map() adds many tasks: a task function with name= can only add one")
        transactional = self._transactional
        size = _MAX_TRANSACTIONAL_TASKS_PER_ADD if transactional else _MAX_TASKS_PER_ADD
        by_url = self._named_by_url()
        added: list[taskqueue.Task] = []
        batch: list[taskqueue.Task] = []
        try:
            for item in iterable:
                batch.append(self._build((item,), {}, by_url))
                if len(batch) == size:
                    added += _add_batch(self._queue, batch, transactional)
                    batch.clear()
            if batch:
                added += _add_batch(self._queue, batch, transactional)
        except BaseException:
            _discard_spills(batch, transactional)
            raise
        return added


@overload
def task(f: Callable[P, R], /, **options: Any) -> TaskFunction[P, R]: ...
@overload
def task(f: None = None, /, **options: Any) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...


def task(f: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Make a callable run as an App Engine push task: ``@task``, ``@task(queue="q")`` or ``task(f, ...)``.

    Options are checked now: an unknown one, a wrong type or a contradiction
    raises TypeError here rather than at call time.
    """
    opts = validate_options(options)

    def decorator(func: Callable[P, R]) -> TaskFunction[P, R]:
        if isinstance(func, TaskFunction):
            return TaskFunction(func.__wrapped__, merge_options(func.task_options, opts))
        if not callable(func):
            raise TypeError(f"task() needs a callable, got {func!r}")
        return TaskFunction(func, opts)

    return decorator if f is None else decorator(f)
