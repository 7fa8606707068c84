"""The @task decorator and the task function object it returns."""

from __future__ import annotations

import datetime
import functools
import inspect
import logging
import math
import os
import re
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from google.appengine.api import taskqueue
from google.appengine.runtime import apiproxy_errors

from . import codec
from .config import get_keyring, settings
from .controls.options import OPTIONS as CONTROL_OPTIONS
from .controls.options import Controls, check_combination, controls_of
from .exc import NoApiProxyError, PayloadError, TaskOptionError
from .hooks import TaskEvent, on_enqueue
from .tracing import current_trace, task_headers

if TYPE_CHECKING:
    from .results import GroupHandle, TaskHandle

log = logging.getLogger("taskutils.task")

P = ParamSpec("P")
R = TypeVar("R")

TAG_HEADER = "X-Taskutils-Tag"
LIBRARY_HEADERS: Mapping[str, str] = types.MappingProxyType({"Content-Type": "application/octet-stream"})

# Options passed straight to google.appengine.api.taskqueue.Task.
_TASK_KWARGS = ("countdown", "eta", "name", "target", "retry_options", "dispatch_deadline_usec")
_OPTIONS = (
    frozenset(_TASK_KWARGS + ("queue", "headers", "tag", "transactional", "includeheaders", "logname", "parent"))
    | CONTROL_OPTIONS
)
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_ESCAPED = re.compile(r"~([0-9a-f]{1,6})~")
_TASK_NAME = re.compile(r"[a-zA-Z0-9_-]{1,500}")
_LOGNAME_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token
_HEADER_TEXT = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")  # Latin-1 without control characters
_MAX_AHEAD = datetime.timedelta(days=30)  # App Engine refuses an ETA further ahead
_MAX_TASKS_PER_ADD = taskqueue.MAX_TASKS_PER_ADD
_MAX_TRANSACTIONAL_TASKS_PER_ADD = 5

# Cloud Tasks endpoints ("" for Google's, else the emulator's host:port) that answered a batch
# add with UNIMPLEMENTED: this process adds tasks there one by one from then on.
_no_batch_endpoints: set[str] = set()


_queue_add = taskqueue.Queue.add


class _Queue(taskqueue.Queue):  # type: ignore[misc]
    """A taskqueue.Queue that tells ``taskutils.hooks.on_enqueue`` what it added."""

    def add(self, task: Any, transactional: bool = False) -> Any:
        added = _queue_add(self, task, transactional)
        if on_enqueue.receivers:
            _announce(self.name, added)
        return added


def _announce(queue: str, added: taskqueue.Task | list[taskqueue.Task]) -> None:
    tasks = added if isinstance(added, list) else [added]
    if not tasks:
        return
    url, route = tasks[0].url.partition("?")[0], settings.route
    trace = current_trace()
    event = TaskEvent(
        "enqueue",
        url[len(route) + 1 :] if url.startswith(route + "/") else url,
        queue,
        task_name=tasks[0].name if len(tasks) == 1 else None,
        count=len(tasks),
        trace_id=trace.trace_id if trace is not None else None,
    )
    on_enqueue.send(event)


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


def _discard_spills(built: list[taskqueue.Task], transactional: bool, error: BaseException | None = None) -> None:
    """Delete the spilled payloads of built tasks the queue surely did not take (see spill.discard_unadded)."""
    if any(t.payload and t.payload[0] & codec.POINTER for t in built):
        from . import spill

        spill.discard_unadded(built, error, transactional=transactional)


def _check_type(name: str, value: object, types_: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, types_) or (isinstance(value, bool) and bool not in _as_tuple(types_)):
        raise TypeError(f"task option {name}= must be {what}, got {value!r}")


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check task options; raise TaskOptionError (a TypeError) for unknown ones, bad types and values."""
    try:
        return _validate_options(options)
    except TaskOptionError:
        raise
    except TypeError as e:
        raise TaskOptionError(str(e)) from None


def _validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
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
    if "countdown" in opts:
        _check_countdown(opts["countdown"])
    if "eta" in opts:
        _check_eta(opts["eta"])
    if "name" in opts and not _TASK_NAME.fullmatch(opts["name"]):
        raise TypeError(
            f"task option name= must be 1 to 500 of [a-zA-Z0-9_-], as App Engine requires, got {opts['name']!r}"
        )
    if opts.get("transactional") and "name" in opts:
        raise TypeError("a transactional task cannot be named: give transactional= or name=")
    if "parent" in opts and not opts.get("transactional"):
        raise TypeError("task option parent= places a spilled payload in a transaction: it needs transactional=True")
    if "logname" in opts:
        _check_logname(opts["logname"])
    if "headers" in opts:
        opts["headers"] = dict(opts["headers"])
        for name, value in opts["headers"].items():
            _check_header(name, value)
    if "tag" in opts and not _HEADER_TEXT.fullmatch(opts["tag"]):
        raise TypeError(
            f"task option tag= is sent as a header: Latin-1 without control characters, got {opts['tag']!r}"
        )
    controls = controls_of(opts)  # unique, debounce, exclusive, concurrency, key, rate: taskutils.controls
    if controls is not None:
        check_combination(opts, controls)
    return opts


def _check_countdown(countdown: float) -> None:
    # A negative countdown is due at once, as App Engine takes it (a computed delay may come out below 0).
    try:
        finite = math.isfinite(countdown)
    except OverflowError:  # an int too big for a float
        finite = False
    if not finite:
        raise TypeError(f"task option countdown= must be a finite number of seconds, got {countdown!r:.40}")
    if countdown > _MAX_AHEAD.total_seconds():
        raise TypeError(
            f"task option countdown= must be at most 30 days (2592000 s), as App Engine allows, got {countdown}"
        )


def _check_eta(eta: datetime.datetime) -> None:
    # A naive ETA is local time, as the taskqueue API reads it (UTC on App Engine).
    now = datetime.datetime.now() if eta.tzinfo is None else datetime.datetime.now(datetime.timezone.utc)
    if eta - now > _MAX_AHEAD:
        raise TypeError(f"task option eta= must be at most 30 days ahead, as App Engine allows, got {eta}")


def _check_logname(logname: str) -> None:
    segments = logname.split("/")
    if not all(_LOGNAME_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments):
        raise TypeError(
            "task option logname= must be a URL path of [A-Za-z0-9_.~-] segments, none empty, '.' or '..', "
            f"got {logname!r}"
        )


def _check_header(name: object, value: object) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise TypeError(f"task option headers=: {name!r} is not a header name (letters, digits and !#$%&'*+.^_`|~-)")
    if not isinstance(value, str) or not _HEADER_TEXT.fullmatch(value):
        raise TypeError(
            f"task option headers=: the value of {name} must be a string of Latin-1 without control characters, "
            f"got {value!r}"
        )


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


def name_of(func: Callable[..., Any]) -> tuple[str, str]:
    """The module and qualified name a callable is known by: a partial or a bound method by its function's."""
    while isinstance(func, functools.partial):
        func = func.func
    if isinstance(func, types.MethodType):
        func = func.__func__
    qualname = getattr(func, "__qualname__", None)
    module = getattr(func, "__module__", None)
    if not isinstance(qualname, str):  # an instance with __call__: its class's name
        qualname, module = type(func).__qualname__, type(func).__module__
    if not isinstance(module, str):  # a builtin method, e.g. [].append: its class's module
        owner = getattr(func, "__self__", None)
        module = owner.__name__ if isinstance(owner, types.ModuleType) else type(owner).__module__
    return module, qualname


def _escape_char(match: re.Match[str]) -> str:
    return f"~{ord(match.group()):x}~"


def _escape_name(name: str) -> str:
    return _NAME_UNSAFE.sub(_escape_char, name)


def encode_name(module: str, qualname: str) -> str:
    """module/qualname as a readable, URL-safe ([A-Za-z0-9_.~/-]) and reversible path.

    A character outside [A-Za-z0-9_] becomes ``~hex~`` (``café`` is ``caf~e9~``);
    a nested function's ``.<locals>.`` becomes ``/`` and ``<lambda>`` ``lambda``.
    ``decode_name`` gives back module and qualname exactly for any name without those.
    """
    parts = qualname.split(".")
    path = ""
    for i, part in enumerate(parts):
        if part == "<locals>" and 0 < i < len(parts) - 1:
            path += "/"
            continue
        if path and not path.endswith("/"):
            path += "."
        path += "lambda" if part == "<lambda>" else _escape_name(part)
    return ".".join(map(_escape_name, module.split("."))) + "/" + path


def _unescape_char(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 16))


def decode_name(path: str) -> tuple[str, str]:
    """The module and qualname of a by-URL task from the part of its URL after the route."""
    module, _, qualname = path.partition("/")
    if "~" in path:
        return _ESCAPED.sub(_unescape_char, module), _ESCAPED.sub(_unescape_char, qualname)
    return module, qualname


# Which code each URL path was given to, so that two callables never share one: a second lambda
# in one function gets ``.../lambda-2``. Only callables a worker cannot find by URL get a number.
_paths: dict[str, weakref.ref[Any]] = {}


def url_path_of(func: Callable[..., Any]) -> str:
    """The readable, URL-safe part of a task's URL after the route: module/function."""
    module, qualname = name_of(func)
    path = encode_name(module, qualname)
    code = getattr(func, "__code__", None)
    if code is None or "<" not in qualname:
        return path
    base, n = path, 1
    while True:
        claimed = _paths.get(path)
        owner = claimed() if claimed is not None else None
        if owner is None:
            _paths[path] = weakref.ref(code)
            return path
        if owner is code:
            return path
        n += 1
        path = f"{base}-{n}"


def resolve(module: str, qualname: str) -> Any:
    """The object named qualname in module, importing it if needed."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        __import__(module)
        obj = sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


_NO_API_ERRORS = (AssertionError, apiproxy_errors.RPCFailedError)


def _no_api_proxy(error: BaseException) -> NoApiProxyError | None:
    """NoApiProxyError when the SDK's error says no App Engine API is reachable here; None for any other.

    That is the SDK's ``No api proxy found`` (no stubs at all: a plain script), or, off App
    Engine, a call with no security ticket (``wrap_wsgi_app`` under ``flask run``).
    """
    message = str(error).lower()
    if isinstance(error, AssertionError):
        if "api proxy" not in message:
            return None
    elif not isinstance(error, apiproxy_errors.RPCFailedError) or "security ticket" not in message:
        return None
    elif os.environ.get("GAE_ENV") == "standard":
        return None  # on App Engine: a call outside a request, not a missing server
    return NoApiProxyError(
        "no App Engine API here to add the task to (the SDK says: "
        f"{error}). Outside App Engine, run the app with `python -m taskutils serve MODULE:APP`, "
        "or use the `task_testbed` pytest fixture in tests"
    )


class _ArgumentCheck:
    """Checks a call's arguments against the callable's signature, as Python itself would bind them.

    The check is a generated function with the same parameters and an empty body,
    so a call that fits costs one Python call; ``inspect.Signature.bind`` words the
    error of a call that does not.
    """

    __slots__ = ("includeheaders", "_signature", "_fits", "_name", "__weakref__")

    @classmethod
    def of(cls, func: Callable[..., Any], includeheaders: bool) -> _ArgumentCheck:
        """The check for func, made once per callable (``task(f, ...)`` and ``defer(f)`` on every call reuse it)."""
        try:
            found = _checks.get(func)
        except TypeError:  # unhashable or not weakly referenceable: make one each time
            return cls(func, includeheaders)
        if found is None or found.includeheaders != includeheaders:
            found = cls(func, includeheaders)
            try:
                _checks[func] = found
            except TypeError:
                pass
        return found

    def __init__(self, func: Callable[..., Any], includeheaders: bool) -> None:
        self.includeheaders = includeheaders
        self._name = name_of(func)[1]
        try:
            self._signature: inspect.Signature | None = inspect.signature(func, follow_wrapped=False)
        except (TypeError, ValueError):  # some builtins have no signature: Python checks at run time
            self._signature = None
        self._fits = _fits_function(self._signature) if self._signature is not None else None
        if includeheaders and self._signature is not None and not _takes_headers(self._signature):
            raise TypeError(
                f"task option includeheaders=True passes headers=, but {self._name}{self._signature} "
                "has no headers parameter or **kwargs"
            )

    def __call__(self, task: TaskFunction[Any, Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        if self.includeheaders:
            if "headers" in kwargs:
                raise TypeError(f"task {task._suffix[1:]}: headers= is given by the task request (includeheaders=True)")
            kwargs = {**kwargs, "headers": None}
        fits = self._fits
        if fits is None:
            return
        try:
            fits(*args, **kwargs)
        except TypeError:
            try:
                self._signature.bind(*args, **kwargs)  # type: ignore[union-attr]
            except TypeError as e:
                raise TypeError(f"task {task._suffix[1:]}: {e}, for {self._name}{self._signature}") from None


_checks: weakref.WeakKeyDictionary[Callable[..., Any], _ArgumentCheck] = weakref.WeakKeyDictionary()


def _takes_headers(signature: inspect.Signature) -> bool:
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return True
        if p.name == "headers" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            return True
    return False


def _fits_function(signature: inspect.Signature) -> Callable[..., None] | None:
    """A function with signature's parameters (defaults None) and an empty body; None if it cannot be made."""
    parts: list[str] = []
    kinds = inspect.Parameter
    star = False
    last_positional_only = -1
    for p in signature.parameters.values():
        if not p.name.isidentifier():
            return None
        if p.kind is kinds.POSITIONAL_ONLY:
            last_positional_only = len(parts)
        if p.kind is kinds.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.kind is kinds.VAR_POSITIONAL:
            parts.append("*" + p.name)
            star = True
        elif p.kind is kinds.VAR_KEYWORD:
            parts.append("**" + p.name)
        else:
            parts.append(p.name if p.default is p.empty else p.name + "=None")
    if last_positional_only >= 0:
        parts.insert(last_positional_only + 1, "/")
    namespace: dict[str, Any] = {}
    try:
        exec(f"def fits({', '.join(parts)}):\n    pass\n", namespace)  # noqa: S102 - names checked above
    except SyntaxError:
        return None
    return namespace["fits"]  # type: ignore[no-any-return]


class TaskFunction(Generic[P, R]):
    """A callable that enqueues a push task running the wrapped callable with its arguments."""

    __wrapped__: Callable[P, R]

    def __init__(self, func: Callable[P, R], options: Mapping[str, Any], check: _ArgumentCheck | None = None) -> None:
        functools.update_wrapper(self, func)
        self._check = check or _ArgumentCheck.of(func, bool(options.get("includeheaders")))
        self._options = types.MappingProxyType(dict(options))
        self._suffix = "/" + (options.get("logname") or url_path_of(func))
        self._queue = _Queue(options.get("queue", "default"))
        self._transactional = bool(options.get("transactional"))
        self._parent = options.get("parent")
        self._flags = codec.HEADERS if options.get("includeheaders") else 0
        headers = {**LIBRARY_HEADERS, **options.get("headers", {})}
        if "tag" in options:
            headers[TAG_HEADER] = options["tag"]
        self._task_kwargs: dict[str, Any] = {k: options[k] for k in _TASK_KWARGS if k in options}
        self._task_kwargs["headers"] = headers
        self._module, self._qualname = name_of(func)
        self._controls = controls_of(options)

    @property
    def controls(self) -> Controls | None:
        """Its control options (unique, debounce, exclusive, concurrency, rate), checked; None without any."""
        return self._controls

    @property
    def url_path(self) -> str:
        """The part of its URL after the route: module/function, or its logname."""
        return self._suffix[1:]

    @property
    def task_options(self) -> Mapping[str, Any]:
        """The options this task function enqueues with."""
        return self._options

    @property
    def url(self) -> str:
        """The URL its tasks are posted to, under the current route."""
        return settings.route + self._suffix

    def __repr__(self) -> str:
        if not self._options:
            return f"<task {self._suffix[1:]}>"
        return f"<task {self._suffix[1:]} {dict(self._options)!r}>"

    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return BoundTaskFunction(self, instance)

    def __reduce__(self) -> str | tuple[Any, ...]:
        if self._named_by_url():
            return self._qualname
        return (TaskFunction, (self.__wrapped__, dict(self._options)))

    def _named_by_url(self) -> bool:
        """True when a worker can find the callable from the URL alone, and finds this very one."""
        parts = self._by_url_name
        if not parts:
            return False
        found: Any = sys.modules.get(self._module)
        try:
            if found is None:
                found = resolve(self._module, self._qualname)
            else:
                for part in parts:
                    found = getattr(found, part)
        except Exception:
            return False
        if isinstance(found, TaskFunction):
            found = found.__wrapped__
        return found is self.__wrapped__

    @functools.cached_property
    def _by_url_name(self) -> tuple[str, ...]:
        """The qualname's parts when the URL names module and qualname exactly (no logname, nothing
        nested, not __main__); () otherwise."""
        if self._module == "__main__" or "logname" in self._options or "<" in self._qualname:
            return ()
        if decode_name(self._suffix[1:]) != (self._module, self._qualname):
            return ()
        return tuple(self._qualname.split("."))

    def options(self, **options: Any) -> TaskFunction[P, R]:
        """A new task function with these options merged over the current ones."""
        merged = merge_options(self._options, validate_options(options))
        same_check = bool(merged.get("includeheaders")) == self._check.includeheaders
        return TaskFunction(self.__wrapped__, merged, self._check if same_check else None)

    def _build(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        by_url: bool | None = None,
        headers: Mapping[str, str] | None = None,
        scope: Callable[[str], str] | None = None,
    ) -> taskqueue.Task:
        if by_url is None:
            by_url = self._named_by_url()
        func = None if by_url else self.__wrapped__
        data = codec.dumps_call(self._suffix[1:], func, args, kwargs, transactional=self._transactional)
        return self._task_of(data, by_url, headers, scope)

    def _task_of(
        self,
        data: bytes,
        by_url: bool,
        headers: Mapping[str, str] | None = None,
        scope: Callable[[str], str] | None = None,
        countdown: float | None = None,
    ) -> taskqueue.Task:
        """The task carrying a pickled call: framed (signed) in its payload, or spilled to Datastore.

        ``scope(path)`` is what the payload is signed for instead of its URL path (a handle's
        task: taskutils.results_ids); ``countdown`` replaces the task's own (a debounced run).
        """
        task_kwargs = self._task_kwargs
        trace = task_headers()  # the trace this task joins (taskutils.tracing); under the task's own headers
        if trace:
            task_kwargs = {**task_kwargs, "headers": {**trace, **task_kwargs["headers"], **(headers or {})}}
        elif headers:  # a handle's headers (taskutils.results), merged over the task's own
            task_kwargs = {**task_kwargs, "headers": {**task_kwargs["headers"], **headers}}
        if countdown is not None:  # a debounced run's delay (taskutils.controls), over the task's own
            task_kwargs = {k: v for k, v in task_kwargs.items() if k not in ("eta", "countdown")}
            task_kwargs["countdown"] = countdown
        path = settings.route + self._suffix
        signed_for = path if scope is None else scope(path)
        flags = self._flags | (codec.BY_URL if by_url else 0)
        keyring = get_keyring()
        if len(data) < taskqueue.MAX_PUSH_TASK_SIZE_BYTES:
            try:
                return taskqueue.Task(payload=codec.frame(signed_for, data, flags, keyring), url=path, **task_kwargs)
            except taskqueue.TaskTooLargeError:
                pass  # the URL and headers tipped it over: spill
        from . import spill

        transactional = self._transactional
        pointer = spill.store(
            self._suffix[1:],
            data,
            transactional=transactional,
            parent=self._parent,
            task_kwargs=task_kwargs,
            digest=bool(keyring),
        )
        try:
            payload = codec.frame(signed_for, pointer, flags | codec.POINTER, keyring)
            return taskqueue.Task(payload=payload, url=path, **task_kwargs)
        except BaseException:
            spill.delete(pointer, transactional=transactional)
            raise

    def _pickle_items(self, items: Iterable[Any], by_url: bool, head: tuple[Any, ...] = ()) -> list[bytes]:
        """Every item's call pickled, before anything is added: a PayloadError names the item."""
        name, func, transactional = self._suffix[1:], None if by_url else self.__wrapped__, self._transactional
        pickled = []
        for index, item in enumerate(items):
            try:
                pickled.append(codec.dumps_call(name, func, (*head, item), {}, transactional=transactional))
            except PayloadError as e:
                raise type(e)(f"item {index}: {e}") from e
        return pickled

    def _task_maker(self, by_url: bool) -> Callable[[bytes], taskqueue.Task]:
        """``_task_of(data, by_url)`` for many items, with what does not change per item worked out once."""
        path = settings.route + self._suffix
        flags = self._flags | (codec.BY_URL if by_url else 0)
        keyring = get_keyring()
        prefix = None if keyring else codec.frame(path, b"", flags, keyring)  # unsigned: just the header byte
        task_kwargs = self._task_kwargs
        trace = task_headers()  # the trace every task of this map joins (taskutils.tracing)
        if trace:
            task_kwargs = {**task_kwargs, "headers": {**trace, **task_kwargs["headers"]}}
        limit = taskqueue.MAX_PUSH_TASK_SIZE_BYTES

        def make(data: bytes) -> taskqueue.Task:
            if len(data) < limit:
                payload = prefix + data if prefix is not None else codec.frame(path, data, flags, keyring)
                try:
                    return taskqueue.Task(payload=payload, url=path, **task_kwargs)
                except taskqueue.TaskTooLargeError:
                    pass  # the URL and headers tipped it over: _task_of spills it
            return self._task_of(data, by_url)

        return make

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> taskqueue.Task:
        """Enqueue one push task that calls the wrapped callable with these arguments.

        Raises TypeError when the arguments do not fit the callable's signature;
        nothing is enqueued then.
        """
        self._check(self, args, kwargs)
        try:
            if self._controls is not None:
                return self._controlled(args, kwargs)[0]  # type: ignore[return-value]
            built = self._build(args, kwargs)
            try:
                return self._queue.add(built, transactional=self._transactional)
            except BaseException as e:
                _discard_spills([built], self._transactional, e)
                raise
        except _NO_API_ERRORS as e:
            no_proxy = _no_api_proxy(e)
            if no_proxy is None:
                raise
            raise no_proxy from e

    def _controlled(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], submit: bool = False
    ) -> tuple[taskqueue.Task | None, str | None]:
        """A call of a task function with control options: taskutils.controls decides whether it adds a task."""
        from .controls.call import call

        return call(self, args, kwargs, submit, _Handles(self))

    def add_call(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        scope: Callable[[str], str] | None = None,
        transactional: bool | None = None,
        countdown: float | None = None,
    ) -> taskqueue.Task:
        """Add this call's task now, with these extra headers, past its control options: their seam."""
        transactional = self._transactional if transactional is None else transactional
        by_url = self._named_by_url()
        func = None if by_url else self.__wrapped__
        data = codec.dumps_call(self._suffix[1:], func, args, kwargs, transactional=self._transactional)
        built = self._task_of(data, by_url, headers, scope, countdown)
        try:
            return self._queue.add(built, transactional=transactional)
        except BaseException as e:
            _discard_spills([built], self._transactional, e)
            raise

    def map(self, iterable: Iterable[Any]) -> list[taskqueue.Task]:
        """Enqueue one task per item, the item its single argument; return the added tasks in order.

        Every item is pickled before anything is added, so an argument that cannot
        travel (or is too big) raises here, naming its item, with nothing enqueued.
        Tasks go in batches of at most 100 per queue RPC (5 when transactional).
        Where Cloud Tasks has no batch add (an emulator, an older backend), they
        are added one by one instead, and this process remembers it.
        """
        return self._map(iterable, ())

    def _map(self, iterable: Iterable[Any], head: tuple[Any, ...]) -> list[taskqueue.Task]:
        if "name" in self._options:
            raise TypeError("map() adds many tasks: a task function with name= can only add one")
        controls = self._controls
        if controls is not None and controls.at_call:
            raise TypeError("map() cannot add unique= or debounce= tasks: call the task function once per item")
        if controls is not None:  # exclusive, concurrency, rate: every task carries its item's keys
            iterable = list(iterable)
        transactional = self._transactional
        size = _MAX_TRANSACTIONAL_TASKS_PER_ADD if transactional else _MAX_TASKS_PER_ADD
        by_url = self._named_by_url()
        self._check(self, (*head, None), {})  # one positional argument per task: it fits for every item or none
        pickled = self._pickle_items(iterable, by_url, head)
        make = self._task_maker(by_url)
        if controls is not None:
            from .controls.call import item_headers

            heads = iter(item_headers(self, [(*head, item) for item in iterable]))  # type: ignore[union-attr]

            def make(data: bytes) -> taskqueue.Task:
                headers, scope = next(heads)
                return self._task_of(data, by_url, headers, scope)

        added: list[taskqueue.Task] = []
        batch: list[taskqueue.Task] = []  # built, not sent yet
        sent: list[taskqueue.Task] = []  # the batch handed to the queue last
        try:
            for data in pickled:
                batch.append(make(data))
                if len(batch) == size:
                    sent, batch = batch, []
                    added += _add_batch(self._queue, sent, transactional)
            if batch:
                sent, batch = batch, []
                added += _add_batch(self._queue, sent, transactional)
        except BaseException as e:
            _discard_spills(batch, transactional)
            _discard_spills(sent, transactional, e)
            no_proxy = _no_api_proxy(e) if isinstance(e, _NO_API_ERRORS) else None
            if no_proxy is not None:
                raise no_proxy from e
            raise
        return added

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Enqueue as a call does and return a handle on the run: its status, result and callbacks."""
        if self._controls is not None:
            self._check(self, args, kwargs)
            from .results import TaskHandle

            return TaskHandle(self._controlled(args, kwargs, submit=True)[1])  # type: ignore[arg-type]
        from .results import submit

        return submit(self, args, kwargs)

    def submit_map(self, iterable: Iterable[Any]) -> GroupHandle:
        """One child per item, added in batches as map() adds them; return a handle on the group."""
        if self._controls is not None:
            raise TypeError("submit_map() cannot add tasks with control options: submit() each item")
        from .results import submit_map

        return submit_map(self, iterable)


class _Handles:
    """How taskutils.controls records a controlled run on a handle: taskutils.results' ids, headers and scope."""

    def __init__(self, function: TaskFunction[Any, Any]) -> None:
        self.function = function

    def new_id(self, due: float) -> str:
        from .results_ids import new_handle_id

        return new_handle_id(due)

    def task(self, handle_id: str) -> tuple[Mapping[str, str], Callable[[str], str]]:
        from .results import headers_for, scope_for

        headers = headers_for(self.function, handle_id)
        return headers, scope_for(headers)


class BoundTaskFunction:
    """A task function read through an instance (``obj.method``): the instance travels as its first argument.

    Calling it, ``options``, ``map``, ``submit`` and ``submit_map`` all keep the
    instance; anything else is the task function's own.
    """

    __slots__ = ("__func__", "__self__")

    def __init__(self, function: TaskFunction[Any, Any], instance: object) -> None:
        self.__func__ = function
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> taskqueue.Task:
        return self.__func__(self.__self__, *args, **kwargs)

    def options(self, **options: Any) -> BoundTaskFunction:
        """The same method with these options merged over its own, still bound to the instance."""
        return BoundTaskFunction(self.__func__.options(**options), self.__self__)

    def map(self, iterable: Iterable[Any]) -> list[taskqueue.Task]:
        """One task per item: ``method(item)`` on this instance."""
        return self.__func__._map(iterable, (self.__self__,))

    def submit(self, *args: Any, **kwargs: Any) -> TaskHandle:
        return self.__func__.submit(self.__self__, *args, **kwargs)

    def submit_map(self, iterable: Iterable[Any]) -> GroupHandle:
        from .results import submit_map

        return submit_map(self.__func__, iterable, (self.__self__,))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__func__, name)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundTaskFunction) and other.__func__ == self.__func__ and other.__self__ is self.__self__
        )

    def __hash__(self) -> int:
        return hash((self.__func__, id(self.__self__)))

    def __repr__(self) -> str:
        return f"<bound {self.__func__!r} of {self.__self__!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (BoundTaskFunction, (self.__func__, self.__self__))


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
        if isinstance(func, types.MethodType) and isinstance(func.__func__, TaskFunction):
            func = BoundTaskFunction(func.__func__, func.__self__)  # type: ignore[assignment]
        if isinstance(func, BoundTaskFunction):  # obj.method: the same method, the instance kept
            return func.options(**opts)  # type: ignore[return-value]
        if isinstance(func, classmethod):
            raise TypeError(
                f"@task over @classmethod ({func.__func__.__qualname__}): swap them, "
                "@classmethod on top and @task under it"
            )
        if isinstance(func, staticmethod):  # keep it static: a task function bound to no instance
            return staticmethod(decorator(func.__func__))  # type: ignore[return-value]
        if not callable(func):
            raise TypeError(f"task() needs a callable, got {func!r}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"task() cannot run generator function {name_of(func)[1]}: a task's return value is dropped, "
                "so its body would never run; make it a plain function"
            )
        return TaskFunction(func, opts)

    return decorator if f is None else decorator(f)
