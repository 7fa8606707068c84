"""The WSGI handler that runs tasks posted under the route: ``taskutils.app``."""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import inspect
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import webapp2

from . import codec, logs, results_ids
from ._sdk import PermanentTaskFailure as DeferredPermanentTaskFailure
from ._sdk import SingularTaskFailure, require_sdk
from .backends.base import Trust
from .backends.namespace import ENVIRON_KEY as NAMESPACE_KEY
from .backends.namespace import HEADER as NAMESPACE_HEADER
from .backends.namespace import checked as checked_namespace
from .backends.namespace import scope as namespace_scope
from .config import get_keyring, settings
from .controls.spec import CRON_PATH
from .controls.spec import ENVIRON_KEY as CONTROLS_KEY
from .controls.spec import HEADER as CONTROLS_HEADER
from .controls.spec import scope as controls_scope
from .current import TaskInfo as TaskInfo
from .current import current_task as current_task
from .defer import DEFERRED_URL, run_deferred
from .exc import (
    CertsUnavailableError,
    CorruptPayloadError,
    MissingTaskCodeError,
    PermanentTaskFailure,
    RetryTaskException,
    RunPutBack,
    SignatureError,
    SpilledPayloadMissingError,
    UntrustedRequestError,
)
from .hooks import TaskEvent, on_failure, on_retry, on_start, on_success
from .naming import decode_name, resolve
from .results_ids import HANDLE_KEY as HANDLE_KEY
from .results_ids import LIMIT_KEY as LIMIT_KEY
from .task import TAG_HEADER, TaskFunction
from .tracing import OTEL_MODULE, Scope, scope, task_span, traced

log = logging.getLogger("taskutils.handler")

MAX_BODY = 1 << 20
MAX_LENGTH_DIGITS = 20  # a longer Content-Length is no length a body can have (and int() refuses thousands)
TASKQUEUE_SOURCE = "0.1.0.2"
EXC_INFO_KEY = "taskutils.exc_info"
OIDC_MODULE = "taskutils.backends.oidc"  # imported on the cloud backend's first HTTP task: it needs cryptography
_modules = sys.modules
ERROR_HEADER = "X-Taskutils-Error"
ERROR_LINE_MAX = 200
# A task asking to be retried, and a task whose code is not deployed (yet), answer neither 503
# nor 429: Cloud Tasks reads those as "overloaded" and slows the whole queue down.
RETRY_STATUS = HTTPStatus.REQUEST_TIMEOUT  # what deferred answers for SingularTaskFailure
MISSING_CODE_STATUS = HTTPStatus.INTERNAL_SERVER_ERROR

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive view of a request's headers."""

    def __init__(self, environ: Mapping[str, Any]) -> None:
        items = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                items[key[5:].replace("_", "-").lower()] = value
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
                items[key.replace("_", "-").lower()] = value
        self._items = items

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: object) -> str:
    """text with control characters escaped (``\\x0a``): safe in one log line."""
    text = text if isinstance(text, str) else str(text)
    return _CONTROL.sub(_escape_char, text)


def error_line(error: BaseException) -> str:
    """``ExceptionType: message`` on one ASCII line of at most 200 characters, for the answer's header."""
    try:
        message = str(error)
    except Exception:
        message = "<unprintable>"
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    text = _CONTROL.sub(_escape_char, text)
    return text if len(text) <= ERROR_LINE_MAX else text[: ERROR_LINE_MAX - 3] + "..."


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _eta(value: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc) if value else None
    except (ValueError, OverflowError):
        return None


_TAG_KEY = "HTTP_" + TAG_HEADER.upper().replace("-", "_")


def _task_info(environ: Mapping[str, Any]) -> TaskInfo:
    """What the queue says about the task: App Engine's headers, or those Cloud Tasks gives an HTTP task."""
    get = environ.get
    queue = get("HTTP_X_APPENGINE_QUEUENAME") or get("HTTP_X_CLOUDTASKS_QUEUENAME", "")
    return TaskInfo(
        task_name=get("HTTP_X_APPENGINE_TASKNAME") or get("HTTP_X_CLOUDTASKS_TASKNAME", ""),
        queue_name=queue.rsplit("/", 1)[-1],
        retry_count=_int(get("HTTP_X_APPENGINE_TASKRETRYCOUNT") or get("HTTP_X_CLOUDTASKS_TASKRETRYCOUNT")),
        execution_count=_int(get("HTTP_X_APPENGINE_TASKEXECUTIONCOUNT") or get("HTTP_X_CLOUDTASKS_TASKEXECUTIONCOUNT")),
        eta=_eta(get("HTTP_X_APPENGINE_TASKETA") or get("HTTP_X_CLOUDTASKS_TASKETA")),
        tag=get(_TAG_KEY),
    )


def _read_body(environ: Mapping[str, Any], length: int) -> bytes:
    stream = environ["wsgi.input"]
    chunks = []
    while length > 0:
        chunk = stream.read(length)
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _find_callable(path: str) -> Callable[..., Any]:
    """The callable a module-level task's URL names: route/module/qualname, escapes undone."""
    try:
        module, qualname = decode_name(path[len(settings.route) + 1 :])
        found = resolve(module, qualname)
    except Exception as e:
        raise MissingTaskCodeError(f"cannot find the task {path}: {type(e).__name__}: {e}") from e
    return found.__wrapped__ if isinstance(found, TaskFunction) else found


def _run_coroutine(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Run an async task to completion, on a thread of its own if this one already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    context = contextvars.copy_context()  # current_task() inside the coroutine, too
    errors: list[BaseException] = []

    def run() -> None:
        try:
            context.run(asyncio.run, coroutine)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, name="taskutils-async-task")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _load_call(path: str, flags: int, data: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    try:
        call = codec.loads(data)
    except (ImportError, AttributeError) as e:
        raise MissingTaskCodeError(f"cannot load the code of {path}: {e}") from e
    except Exception as e:
        raise CorruptPayloadError(f"cannot unpickle {path}: {type(e).__name__}: {e}") from e
    try:
        if flags & codec.BY_URL:
            args, kwargs = call
            func = _find_callable(path)
        else:
            func, args, kwargs = call
    except (TypeError, ValueError) as e:
        raise CorruptPayloadError(f"payload of {path} is not a call") from e
    return func, args, kwargs


class _Run(Scope):
    """One task request; ``answer()`` checks it, runs it and returns the HTTP status.

    While it is handled it is the current ``taskutils.tracing.scope``: what
    ``current_task()``, log records and tasks added by the run read.
    """

    __slots__ = ("path", "body", "pointer", "namespace", "outcome", "error_line", "_info", "started")

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.path: str = environ.get("PATH_INFO", "")
        self.body = b""
        self.pointer: bytes | None = None
        self.namespace = ""  # the cloud backend's Datastore namespace the task was added in
        self.outcome: tuple[str, int, BaseException | None] | None = None  # None: refused before running
        self.error_line: str | None = None
        self._info: TaskInfo | None = None
        self.started = time.perf_counter()

    @property
    def handle_id(self) -> str | None:
        return self.environ.get(HANDLE_KEY)

    @property
    def info(self) -> TaskInfo:
        """What the queue said about the task, read from the request when first asked."""
        if self._info is None:
            self._info = _task_info(self.environ)
        return self._info

    def refuse(self, status: HTTPStatus, why: str) -> HTTPStatus:
        log.warning("refused %s %s: %s", escape(self.environ.get("REQUEST_METHOD")), escape(self.path), escape(why))
        return status

    def answer(self) -> HTTPStatus:
        environ = self.environ
        if settings.backend == "cloud" and settings.cloud.target is not None:  # off App Engine: the token decides
            refused = self.verify_token()
            if refused is not None:
                return refused
        elif settings.backend == "cloud" and os.environ.get("K_SERVICE"):
            # Cloud Run (Knative) without a target: the X-AppEngine-* headers are anyone's to send there.
            return self.refuse(
                HTTPStatus.FORBIDDEN,
                "on Cloud Run tasks need a target (configure(target=..., service_account=...)): "
                "without one nothing proves who sent a task",
            )
        elif "HTTP_X_APPENGINE_TASKNAME" not in environ or "HTTP_X_APPENGINE_QUEUENAME" not in environ:
            return self.refuse(HTTPStatus.FORBIDDEN, "no X-AppEngine-TaskName/QueueName headers")
        elif environ.get("REMOTE_ADDR") != TASKQUEUE_SOURCE and os.environ.get("GAE_ENV") == "standard":
            # wrap_wsgi_app copies X-AppEngine-User-IP into REMOTE_ADDR; without bundled services
            # nothing does, and the header (which App Engine sets on every request) is the source.
            if environ.get("HTTP_X_APPENGINE_USER_IP") != TASKQUEUE_SOURCE:
                return self.refuse(
                    HTTPStatus.FORBIDDEN, f"source address {environ.get('REMOTE_ADDR')} is not the queue"
                )
        length = environ.get("CONTENT_LENGTH")
        if not length or len(length) > MAX_LENGTH_DIGITS or not (length.isascii() and length.isdigit()):
            return self.refuse(HTTPStatus.BAD_REQUEST, "missing or invalid Content-Length")
        size = int(length)
        if size > MAX_BODY:
            return self.refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes")
        if settings.backend != "cloud":
            self.outcome = _OK
            self.body = _read_body(environ, size)
            return self.run(self.body)
        namespace = environ.get(NAMESPACE_KEY)
        if namespace is not None:
            try:
                self.namespace = checked_namespace(namespace)
            except ValueError as e:
                return self.refuse(HTTPStatus.BAD_REQUEST, f"{NAMESPACE_HEADER} header: {e}")
        self.outcome = _OK
        self.body = _read_body(environ, size)
        from .backends.cloud_store import task_context  # task code uses google.cloud.ndb as a request would

        with task_context(self.namespace):  # the namespace the task was added in, as on App Engine
            return self.run(self.body)

    def verify_token(self) -> HTTPStatus | None:
        """An HTTP task's OIDC token (``taskutils.backends.oidc``): None when it proves an allowed
        sender, else the answer. The ``X-AppEngine-*`` and ``X-CloudTasks-*`` headers prove nothing
        here (anyone can send them to a URL) and are only read for the log line and ``TaskInfo``."""
        try:
            oidc: Any = _modules.get(OIDC_MODULE)
            if oidc is None:
                from .backends import oidc
            trust: Trust = oidc.trust(settings.cloud)
            trust.verify(self.environ)
        except UntrustedRequestError as e:
            return self.refuse(HTTPStatus.FORBIDDEN, f"OIDC token: {e}")
        except (CertsUnavailableError, ImportError) as e:
            # No token can be checked yet: 500, never 503 or 429, which Cloud Tasks reads as "overloaded"
            # and answers by slowing the whole queue down. Any other non-2xx is retried with the task's
            # own backoff, so the task runs once the certs (or the [cloud] extra) are back.
            log.error("cannot check the OIDC token of %s: %s", escape(self.path), escape(error_line(e)))
            return HTTPStatus.INTERNAL_SERVER_ERROR
        return None

    def run(self, body: bytes) -> HTTPStatus:
        handle_id = self.environ.get(HANDLE_KEY)
        signed_for = self.path
        if handle_id is not None:  # added by submit(): signed for its handle id too
            try:
                signed_for = results_ids.checked_scope(self.path, handle_id, self.environ.get(LIMIT_KEY))
            except ValueError as e:
                self.outcome = (f"refused: {e}", logging.WARNING, None)
                return HTTPStatus.BAD_REQUEST
            except SignatureError as e:
                self.outcome = (f"refused: {e}", logging.WARNING, None)
                return HTTPStatus.FORBIDDEN
        controls = self.environ.get(CONTROLS_KEY)
        if controls is not None:  # signed for its controls too (taskutils.controls.spec.scope)
            try:
                signed_for = controls_scope(controls, signed_for)
            except ValueError as e:
                self.outcome = (f"refused: {CONTROLS_HEADER} header: {e}", logging.WARNING, None)
                return HTTPStatus.BAD_REQUEST
        if self.namespace:  # the cloud backend's: signed for it too (taskutils.backends.namespace)
            signed_for = namespace_scope(self.namespace, signed_for)
        try:
            flags, data = codec.unframe(signed_for, body, get_keyring())
            if flags & codec.POINTER:
                from . import spill

                self.pointer = data
                data = spill.load(data, signed=bool(flags & codec.SIGNED))
            func, args, kwargs = _load_call(self.path, flags, data)
            if flags & codec.HEADERS:
                kwargs["headers"] = Headers(self.environ)
            if controls is not None:  # unique, debounce, exclusive, concurrency, rate: taskutils.controls says when
                from .controls.run import run_controlled

                run_controlled(controls, self.environ, self.info, body, func, args, kwargs, self.start)
            elif handle_id is None and OTEL_MODULE not in _modules and not on_start.receivers:  # the hot path
                result = func(*args, **kwargs)
                if result is not None and inspect.iscoroutine(result):
                    _run_coroutine(result)
            else:
                self.start(func, args, kwargs)
        except RunPutBack as e:  # added again for later, with the same payload: not a failed attempt
            self.pointer = None  # the task put back still reads the spilled payload
            self.outcome = (str(e), logging.INFO, None)
            return HTTPStatus.OK
        except SignatureError as e:
            self.outcome = (f"refused: {e}", logging.WARNING, None)
            return HTTPStatus.FORBIDDEN
        except (PermanentTaskFailure, DeferredPermanentTaskFailure) as e:
            self.fail(e, "dropped: permanent failure", logging.ERROR, trace=True)
            return self.finish(HTTPStatus.OK)
        except (CorruptPayloadError, SpilledPayloadMissingError) as e:
            self.fail(e, f"dropped: {e}", logging.ERROR)
            return self.finish(HTTPStatus.OK)
        except MissingTaskCodeError as e:
            self.fail(e, f"retry: {e}", logging.ERROR, answered=True)
            return self.finish(MISSING_CODE_STATUS)
        except (RetryTaskException, SingularTaskFailure) as e:
            self.fail(e, "retry requested", logging.INFO, answered=True)
            return self.finish(RETRY_STATUS)
        except BaseException as e:  # SystemExit, KeyboardInterrupt...: the task's, never the server's
            self.fail(e, "failed", logging.ERROR, trace=True, answered=True)
            return self.finish(HTTPStatus.INTERNAL_SERVER_ERROR)
        if on_success.receivers:
            on_success.send(self.event("success"))
        if self.pointer is not None:
            return self.finish(HTTPStatus.OK)
        return HTTPStatus.OK

    def start(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Start the call: announced to on_start, recorded on its handle when submitted, in a span when
        the app uses OpenTelemetry."""
        if on_start.receivers:
            on_start.send(self.event("start"))
        handle_id = self.environ.get(HANDLE_KEY)
        if OTEL_MODULE in _modules:
            with task_span(self, f"task {self.function}", self.span_attributes()):
                self.call_once(handle_id, func, args, kwargs)
        else:
            self.call_once(handle_id, func, args, kwargs)

    def call_once(
        self, handle_id: str | None, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if handle_id is not None:  # added by submit(): the run is recorded on its handle
            from .results_run import run_handled

            run_handled(handle_id, self.environ, func, args, kwargs)
        else:
            result = func(*args, **kwargs)
            if result is not None and inspect.iscoroutine(result):
                _run_coroutine(result)

    @property
    def function(self) -> str:
        """The task's URL path after the route."""
        route = settings.route
        return self.path[len(route) + 1 :] if self.path.startswith(route + "/") else self.path

    def event(self, signal: str, error: BaseException | None = None) -> TaskEvent:
        """What taskutils.hooks receivers get about this run."""
        info, trace = self.info, self.trace
        return TaskEvent(
            signal,
            self.function,
            info.queue_name,
            info.task_name,
            info.retry_count,
            self.handle_id,
            duration=None if signal == "start" else time.perf_counter() - self.started,
            error=error,
            trace_id=trace.trace_id if trace is not None else None,
        )

    def span_attributes(self) -> dict[str, Any]:
        info = self.info
        attributes: dict[str, Any] = {
            "messaging.system": "gcp_cloud_tasks",
            "messaging.operation": "process",
            "messaging.destination.name": info.queue_name,
            "messaging.message.id": info.task_name,
            "taskutils.function": self.function,
            "taskutils.retry_count": info.retry_count,
        }
        if self.handle_id is not None:
            attributes["taskutils.handle_id"] = self.handle_id
        return attributes

    def finish(self, status: HTTPStatus) -> HTTPStatus:
        """Delete the spilled payload once the queue will not send the task again: after 2xx, or its last attempt."""
        if self.pointer is not None:
            from . import spill

            if status < 300 or spill.last_attempt(self.pointer, self.info.retry_count):
                spill.delete(self.pointer)
        return status

    def fail(self, error: BaseException, outcome: str, level: int, trace: bool = False, answered: bool = False) -> None:
        """Record a failure; answered=True puts its error line in the non-2xx answer."""
        self.environ[EXC_INFO_KEY] = error
        self.outcome = (outcome, level, error if trace else None)
        if answered:
            self.error_line = error_line(error)
        final = not answered or self.last_attempt()
        signal = on_failure if final else on_retry
        if signal.receivers:
            signal.send(self.event("failure" if final else "retry", error))

    def last_attempt(self) -> bool:
        """True when the task's handle says this attempt is its last (X-Taskutils-Retry-Limit)."""
        limit = self.environ.get(LIMIT_KEY)
        return limit is not None and limit.isdigit() and self.info.retry_count >= int(limit)


_OK: tuple[str, int, BaseException | None] = ("ok", logging.INFO, None)


def _log_line(run: _Run, status: HTTPStatus, started: float) -> None:
    if run.outcome is None:
        return
    outcome, level, error = run.outcome
    if not log.isEnabledFor(level):
        return
    info = run.info
    key_id = codec.key_id_of(run.body)
    log.log(
        level,
        "task %s queue=%s name=%s retry=%d key=%s -> %d %s (%.1f ms)",
        escape(run.path),
        escape(info.queue_name),
        escape(info.task_name),
        info.retry_count,
        key_id or "-",
        status.value,
        escape(outcome),
        (time.perf_counter() - started) * 1000,
        exc_info=error,
    )


def handle(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """Run the task posted in environ and answer as the queue expects."""
    if environ.get("REQUEST_METHOD") != "POST":
        log.warning(
            "refused %s %s: tasks are POSTed", escape(environ.get("REQUEST_METHOD")), escape(environ.get("PATH_INFO"))
        )
        start_response("405 Method Not Allowed", [("Allow", "POST"), ("Content-Type", "text/plain")])
        return [b"tasks are POSTed\n"]
    if not logs.installed:
        logs.install()
    run = _Run(environ)
    token = scope.set(run)  # current_task(), log records and tasks added while it runs (its outcome line too)
    try:
        status = run.answer()
        _log_line(run, status, run.started)
    finally:
        scope.reset(token)
    line, headers, body = _response(status)
    if run.error_line is None:
        start_response(line, list(headers))
    else:
        start_response(line, [*headers, (ERROR_HEADER, run.error_line)])
    return [body]


_responses: dict[HTTPStatus, tuple[str, tuple[tuple[str, str], ...], bytes]] = {}


def _response(status: HTTPStatus) -> tuple[str, tuple[tuple[str, str], ...], bytes]:
    """The status line, headers and body of an answer, made once per status."""
    found = _responses.get(status)
    if found is None:
        body = status.phrase.encode() + b"\n"
        headers = (("Content-Type", "text/plain"), ("Content-Length", str(len(body))))
        found = _responses[status] = (f"{status.value} {status.phrase}", headers, body)
    return found


def under_route(path: str) -> bool:
    """True when a request path is one the task handler serves."""
    route = settings.route
    return path.startswith(route) and (len(path) == len(route) or path[len(route)] == "/")


class TaskApplication(webapp2.WSGIApplication):
    """A webapp2 application that runs the tasks posted under the route.

    Task requests take a direct path that reads the body straight from the
    server's stream; tasks ``deferred.defer`` enqueued (``/_ah/queue/deferred``)
    go to deferred's own handler only once ``run_deferred`` is set true (its
    payloads can never be signed); anything else gets webapp2's usual 404.
    """

    run_deferred = False

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == DEFERRED_URL:  # never one of taskutils' own task URLs, whatever the route
            if self.run_deferred:
                return run_deferred(environ, start_response)
        elif under_route(path):
            return handle(environ, start_response)
        return super().__call__(environ, start_response)


app = TaskApplication()


def mount(wsgi_app: WSGIApp, *, deferred: bool = False) -> WSGIApp:
    """One WSGI app: task URLs go to ``taskutils.app``, the periodic jobs' cron route to
    ``taskutils.controls``, everything else to wsgi_app.

    With ``deferred=True`` (an explicit opt-in: deferred's payloads can never be
    signed), tasks ``deferred.defer`` enqueued go to deferred's own handler, so
    both kinds run while old queues drain. Tasks added and lines logged while
    wsgi_app answers join the request's trace (``taskutils.tracing``).
    """
    if deferred:
        require_sdk("mount(app, deferred=True) (deferred's own handler)")
    logs.install()
    web_app = traced(wsgi_app)

    def mounted(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == DEFERRED_URL:  # never one of taskutils' own task URLs, whatever the route
            if deferred:
                return run_deferred(environ, start_response)
        elif under_route(path):
            return handle(environ, start_response)
        elif path == CRON_PATH:  # taskutils.periodic's jobs, for App Engine's cron service only
            from .controls.cron import cron_app

            return cron_app(environ, start_response)
        return web_app(environ, start_response)

    mounted.__wrapped__ = wsgi_app  # type: ignore[attr-defined]
    return mounted
