"""The trace work belongs to: read from the request that enqueued a task, carried by the task, joined by its run.

A task carries the trace of the code that added it in two headers: W3C ``traceparent``
(which platforms and OpenTelemetry read) and ``X-Taskutils-Trace`` (the same value,
which no platform rewrites). Where that trace comes from, first found wins:

1. the current OpenTelemetry span, when the app has imported OpenTelemetry and a span is active;
2. the running task's own trace, or the trace of the web request ``mount()`` (or
   ``traced()``) is answering: its ``traceparent``, else App Engine's ``X-Cloud-Trace-Context``;
3. the ``X-Cloud-Trace-Context`` of the request ``wrap_wsgi_app`` is answering.

Nothing here imports OpenTelemetry: it is used when the app has imported it.
"""

from __future__ import annotations

import contextvars
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TRACE_HEADER = "X-Taskutils-Trace"
TRACEPARENT_HEADER = "traceparent"
CLOUD_TRACE_HEADER = "X-Cloud-Trace-Context"
_TRACE_KEY = "HTTP_X_TASKUTILS_TRACE"
_TRACEPARENT_KEY = "HTTP_TRACEPARENT"
_CLOUD_TRACE_KEY = "HTTP_X_CLOUD_TRACE_CONTEXT"
OTEL_MODULE = "opentelemetry.trace"  # in sys.modules once the app has imported OpenTelemetry

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]{1,20}))?(?:;o=([0-9]+))?")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class Trace:
    """A trace id (32 hex digits), the span that work hangs under (16 hex digits) and whether it is sampled."""

    trace_id: str
    span_id: str
    sampled: bool

    @property
    def traceparent(self) -> str:
        """The W3C ``traceparent`` header value."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def parse_traceparent(value: str) -> Trace | None:
    """The trace in a W3C ``traceparent`` value; None when it is not one (or its ids are all zero)."""
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or (version == "00" and len(value.strip()) != 55):
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return Trace(trace_id, span_id, bool(int(flags, 16) & 1))


def parse_cloud_trace(value: str) -> Trace | None:
    """The trace in App Engine's ``X-Cloud-Trace-Context: TRACE/SPAN;o=1`` (SPAN in decimal); None when malformed."""
    match = _CLOUD_TRACE.fullmatch(value.strip())
    if match is None:
        return None
    trace_id, span, options = match.groups()
    span_number = int(span) if span else 0
    if trace_id == "0" * 32 or span_number >= 1 << 64:
        return None
    if span_number == 0:  # no span given: one of our own, so that the trace id still travels
        span_number = random.getrandbits(64) or 1
    return Trace(trace_id.lower(), f"{span_number:016x}", options is not None and int(options) & 1 == 1)


def trace_of(environ: Mapping[str, Any]) -> Trace | None:
    """The trace a request carries: ``X-Taskutils-Trace``, ``traceparent``, then ``X-Cloud-Trace-Context``."""
    for key, parse in _PARSERS:
        value = environ.get(key)
        if value:
            trace = parse(value)
            if trace is not None:
                return trace
    return None


_PARSERS: tuple[tuple[str, Callable[[str], Trace | None]], ...] = (
    (_TRACE_KEY, parse_traceparent),
    (_TRACEPARENT_KEY, parse_traceparent),
    (_CLOUD_TRACE_KEY, parse_cloud_trace),
)


class Scope:
    """What runs now: a web request, or a task (the handler's subclass adds what the queue said).

    Its trace is read from the request when first asked, so a run that never logs
    and never adds a task pays nothing for it.
    """

    __slots__ = ("environ", "_trace", "_headers")

    environ: dict[str, Any]
    _trace: Trace | None
    _headers: Mapping[str, str] | None

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ

    @property
    def info(self) -> Any:
        """What the queue said about the running task; None for a web request."""
        return None

    @property
    def handle_id(self) -> str | None:
        """The handle a submitted task records its run on; None otherwise."""
        return None

    @property
    def trace(self) -> Trace | None:
        try:
            return self._trace
        except AttributeError:
            self._trace = trace_of(self.environ)
            return self._trace

    def use_trace(self, trace: Trace | None) -> None:
        """Make trace the one this scope's logs and tasks join (a task's own span, once it has one)."""
        self._trace = trace
        self._headers = headers_for(trace)

    @property
    def task_headers(self) -> Mapping[str, str] | None:
        """The headers a task added here carries; None without a trace."""
        try:
            return self._headers
        except AttributeError:
            self._headers = headers_for(self.trace)
            return self._headers


scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("taskutils_scope", default=None)

_last: tuple[Trace | None, Mapping[str, str] | None] = (None, None)


def headers_for(trace: Trace | None) -> Mapping[str, str] | None:
    """The headers that carry trace on a task; None for no trace."""
    global _last
    if trace is None:
        return None
    last_trace, last_headers = _last
    if trace == last_trace:
        return last_headers
    value = trace.traceparent
    headers = {TRACE_HEADER: value, TRACEPARENT_HEADER: value}
    _last = (trace, headers)
    return headers


def _otel_trace() -> Trace | None:
    """The current OpenTelemetry span as a Trace; None when no valid span is active."""
    from opentelemetry import trace as otel

    context = otel.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return Trace(format(context.trace_id, "032x"), format(context.span_id, "016x"), context.trace_flags.sampled)


try:  # the SDK's context of the request wrap_wsgi_app is answering (appengine-python-standard)
    from google.appengine.runtime.context import wsgi as _gae_context

    _gae_trace_var: contextvars.ContextVar[str | None] = _gae_context.HTTP_X_CLOUD_TRACE_CONTEXT
except (ImportError, AttributeError):  # an SDK without it: only mount() and traced() read the request
    _gae_trace_var = contextvars.ContextVar("taskutils_no_gae_trace", default=None)
_modules = sys.modules


def _gae_trace() -> Trace | None:
    value = _gae_trace_var.get()
    return parse_cloud_trace(value) if value else None


def current_trace() -> Trace | None:
    """The trace work done here belongs to (see the module's docstring for where it comes from); None if none."""
    if OTEL_MODULE in sys.modules:
        found = _otel_trace()
        if found is not None:
            return found
    current = scope.get()
    if current is not None:
        return current.trace
    return _gae_trace()


def task_headers() -> Mapping[str, str] | None:
    """The trace headers for a task added now; None when there is no trace to carry."""
    if OTEL_MODULE in _modules:
        found = _otel_trace()
        if found is not None:
            return headers_for(found)
    current = scope.get()
    if current is not None:
        return current.task_headers
    value = _gae_trace_var.get()
    return headers_for(parse_cloud_trace(value)) if value else None


def traced(wsgi_app: WSGIApp) -> WSGIApp:
    """A WSGI middleware: tasks added and lines logged while wsgi_app answers a request join its trace.

    ``mount()`` does this already; wrap an app that adds tasks but does not mount
    the handler (a web service whose tasks run in a worker service).
    """

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        token = scope.set(Scope(environ))
        try:
            return wsgi_app(environ, start_response)
        finally:
            scope.reset(token)

    app.__wrapped__ = wsgi_app  # type: ignore[attr-defined]
    return app


@contextmanager
def task_span(current: Scope, name: str, attributes: Mapping[str, Any]) -> Iterator[None]:
    """With OpenTelemetry imported: the running task's span, a child of the trace it carries.

    Its exception, if any, is recorded on the span, which ends when the run does; the
    scope then joins the span, so the run's logs and tasks name it.
    """
    from opentelemetry import trace as otel

    parent = current.trace
    context = None
    if parent is not None:
        flags = otel.TraceFlags(otel.TraceFlags.SAMPLED if parent.sampled else otel.TraceFlags.DEFAULT)
        remote = otel.SpanContext(int(parent.trace_id, 16), int(parent.span_id, 16), True, flags)
        context = otel.set_span_in_context(otel.NonRecordingSpan(remote))
    tracer = otel.get_tracer("taskutils")
    with tracer.start_as_current_span(name, context=context, kind=otel.SpanKind.CONSUMER, attributes=attributes):
        own = _otel_trace()
        if own is not None:
            current.use_trace(own)
        yield
