"""The @task decorator and the task function object it returns."""

from __future__ import annotations

import functools
import inspect
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from . import codec, results_port
from ._sdk import taskqueue
from .backends import queue
from .backends.adding import NO_API_ERRORS, discard_spills, no_api_proxy
from .backends.base import Queue
from .backends.namespace import carried_in
from .backends.namespace import scope as namespace_scope
from .config import get_keyring, settings
from .controls.options import Controls, controls_of
from .exc import PayloadError
from .naming import decode_name as decode_name
from .naming import encode_name as encode_name
from .naming import name_of as name_of
from .naming import resolve as resolve
from .naming import url_path_of as url_path_of
from .options import TASK_KWARGS
from .options import merge_options as merge_options
from .options import validate_options as validate_options
from .results_ids import HANDLE_HEADER, headers_for, new_handle_id, scope_for
from .tracing import task_headers

if TYPE_CHECKING:
    from .results import GroupHandle, TaskHandle

P = ParamSpec("P")
R = TypeVar("R")

TAG_HEADER = "X-Taskutils-Tag"
LIBRARY_HEADERS: Mapping[str, str] = types.MappingProxyType({"Content-Type": "application/octet-stream"})


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
        self._queue_in_use = queue(options.get("queue", "default"))
        self._transactional = bool(options.get("transactional"))
        self._parent = options.get("parent")
        self._flags = codec.HEADERS if options.get("includeheaders") else 0
        headers = {**LIBRARY_HEADERS, **options.get("headers", {})}
        if "tag" in options:
            headers[TAG_HEADER] = options["tag"]
        self._task_kwargs: dict[str, Any] = {k: options[k] for k in TASK_KWARGS if k in options}
        self._task_kwargs["headers"] = headers
        self._module, self._qualname = name_of(func)
        self._controls = controls_of(options)

    @property
    def _queue(self) -> Queue:
        """Its queue on the backend in use (``configure(backend=...)`` may come after the task function is made)."""
        found = self._queue_in_use
        if found.backend != settings.backend:
            found = self._queue_in_use = queue(found.name)
        return found

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
        task_kwargs, namespace = carried_in(task_kwargs)  # the cloud backend's namespace, bound to the signature
        path = settings.route + self._suffix
        signed_for = namespace_scope(namespace, path if scope is None else scope(path))
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
        task_kwargs, namespace = carried_in(task_kwargs)  # as _task_of
        signed_for = namespace_scope(namespace, path)
        limit = taskqueue.MAX_PUSH_TASK_SIZE_BYTES

        def make(data: bytes) -> taskqueue.Task:
            if len(data) < limit:
                payload = prefix + data if prefix is not None else codec.frame(signed_for, data, flags, keyring)
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
                return self._queue.add_task(built, self._transactional)
            except BaseException as e:
                discard_spills([built], self._transactional, e)
                raise
        except NO_API_ERRORS as e:
            no_proxy = no_api_proxy(e)
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
            return self._queue.add_task(built, transactional)
        except BaseException as e:
            discard_spills([built], self._transactional, e)
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
        size = self._queue.max_transactional_tasks_per_add if transactional else self._queue.max_tasks_per_add
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
                    added += self._queue.add_tasks(sent, transactional)
            if batch:
                sent, batch = batch, []
                added += self._queue.add_tasks(sent, transactional)
        except BaseException as e:
            discard_spills(batch, transactional)
            discard_spills(sent, transactional, e)
            no_proxy = no_api_proxy(e) if isinstance(e, NO_API_ERRORS) else None
            if no_proxy is not None:
                raise no_proxy from e
            raise
        return added

    def add_submitted(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], handle_id: str) -> None:
        """Add this call's task as a call would, carrying the handle's headers, signed with them: results' seam."""
        self._check(self, args, kwargs)
        transactional = self._transactional
        headers = headers_for(self._options, handle_id)
        try:
            built = self._build(args, kwargs, headers=headers, scope=scope_for(headers))
            try:
                self._queue.add_task(built, transactional)
            except BaseException as e:
                discard_spills([built], transactional, e)
                raise
        except NO_API_ERRORS as e:
            no_proxy = no_api_proxy(e)
            if no_proxy is None:
                raise
            raise no_proxy from e

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Enqueue as a call does and return a handle on the run: its status, result and callbacks."""
        from .results import TaskHandle, submit  # with handles, Datastore's modules load: on first use

        if self._controls is not None:
            self._check(self, args, kwargs)
            return TaskHandle(self._controlled(args, kwargs, submit=True)[1])  # type: ignore[arg-type]
        return submit(self, args, kwargs)

    def submit_map(self, iterable: Iterable[Any]) -> GroupHandle:
        """One child per item, added in batches as map() adds them; return a handle on the group."""
        if self._controls is not None:
            raise TypeError("submit_map() cannot add tasks with control options: submit() each item")
        return self._submit_map(iterable, ())

    def _submit_map(self, iterable: Iterable[Any], head: tuple[Any, ...]) -> GroupHandle:
        """One child per item, ``head`` before each item (the instance, for a method); one group entity written.

        Every item is pickled before anything is written or added.
        """
        from .results import start_group

        if "name" in self._options:
            raise TypeError("submit_map() adds many tasks: a task function with name= can only add one")
        items = list(iterable)
        transactional, queue = self._transactional, self._queue
        if transactional and len(items) > queue.max_transactional_tasks_per_add:
            raise taskqueue.TooManyTasksError(
                f"submit_map(transactional=True) adds every child inside your transaction, and App Engine takes at "
                f"most {queue.max_transactional_tasks_per_add} tasks in one transaction: {len(items)} items given"
            )
        by_url = self._named_by_url()
        self._check(self, (*head, None), {})  # one positional argument per child: it fits every item or none
        pickled = self._pickle_items(items, by_url, head)
        group = start_group(self._options, len(items), transactional)
        base = headers_for(self._options, group.id)
        size = queue.max_transactional_tasks_per_add if transactional else queue.max_tasks_per_add
        batch: list[taskqueue.Task] = []
        sent: list[taskqueue.Task] = []
        try:
            for index, data in enumerate(pickled):
                headers = {**base, HANDLE_HEADER: f"{group.id}.{index}"}
                batch.append(self._task_of(data, by_url, headers, scope_for(headers)))
                if len(batch) == size:
                    sent, batch = batch, []
                    queue.add_tasks(sent, transactional)
            if batch:
                sent, batch = batch, []
                queue.add_tasks(sent, transactional)
        except BaseException as e:
            discard_spills(batch, transactional)
            discard_spills(sent, transactional, e)
            if not transactional:  # the children added so far are skipped when they arrive
                group.cancel()
            no_proxy = no_api_proxy(e) if isinstance(e, AssertionError) else None
            if no_proxy is not None:
                raise no_proxy from e
            raise
        return group


class _Handles:
    """How taskutils.controls records a controlled run on a handle: taskutils.results' ids, headers and scope."""

    def __init__(self, function: TaskFunction[Any, Any]) -> None:
        self.function = function

    def new_id(self, due: float) -> str:
        return new_handle_id(due)

    def task(self, handle_id: str) -> tuple[Mapping[str, str], Callable[[str], str]]:
        headers = headers_for(self.function.task_options, handle_id)
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
        return self.__func__._submit_map(iterable, (self.__self__,))

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


class _ResultsLayer:
    """What taskutils.results, below this module, needs of it (``taskutils.results_port.TaskLayer``)."""

    def task_function(
        self, func: Callable[..., Any], options: Mapping[str, Any] | None = None
    ) -> TaskFunction[..., Any]:
        return func if isinstance(func, TaskFunction) else task(func, **(options or {}))

    def with_checked_options(self, func: Callable[..., Any], options: Mapping[str, Any]) -> TaskFunction[..., Any]:
        return TaskFunction(func, options)

    def runs(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if isinstance(func, BoundTaskFunction):
            return functools.partial(func.__func__.__wrapped__, func.__self__)
        return func.__wrapped__ if isinstance(func, TaskFunction) else func

    def outcome(self, source: str) -> Any:
        from .results import GroupHandle, TaskHandle
        from .results_store import is_group

        return GroupHandle(source).results() if is_group(source) else TaskHandle(source).result()


results_port.plug(_ResultsLayer())
