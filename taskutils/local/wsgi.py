"""The user's app as the local server runs it: loaded, mounted the way it is deployed, one request at a time.

- :func:`load_app` imports ``MODULE:ATTR``.
- :func:`routes_tasks` tells whether the app already sends task URLs to the
  handler (``wrap_wsgi_app(taskutils.mount(app))``, Flask's ``app.wsgi_app =
  ...``, any middleware): then tasks go through the whole app, middleware
  included, as App Engine posts them; otherwise the handler is mounted beside it.
- :class:`ServedApp` is what the WSGI server calls for every request: it gives
  each request, on whatever thread, the environment App Engine gives it (the
  per-thread ``os.environ`` that ``wrap_wsgi_app`` installs, a fresh ndb
  context) and answers 500 when the app raises even ``SystemExit``.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from google.appengine.ext.ndb import tasklets
from google.appengine.runtime import request_environment

from .. import handler
from ..config import settings

log = logging.getLogger("taskutils.local")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_SEARCH_LIMIT = 2000  # objects looked at when searching an app for the mounted handler


def load_app(spec: str) -> WSGIApp:
    """Import ``module:attr`` (``attr`` defaults to ``app``, and may be dotted) and return it."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise ValueError(f"expected MODULE:ATTR, got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not a WSGI application: {obj!r}")
    return obj  # type: ignore[no-any-return]


def not_found(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    """The app when there is none: every URL but the task route answers 404."""
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"Not Found\n"]


def _mounted_code() -> Any:
    return handler.mount(not_found).__code__  # type: ignore[attr-defined]


def _contains_handler(app: Any) -> bool:
    """True when ``mount()``'s router or ``taskutils.app`` is reachable from app.

    Follows what WSGI wrappers hold their app in: closures (``wrap_wsgi_app``'s
    middlewares, decorators), ``__wrapped__``, bound methods, ``functools.partial``
    and instance attributes (Flask's ``app.wsgi_app``, middleware classes).
    """
    mounted = _mounted_code()
    seen: set[int] = set()
    todo = [app]
    while todo and len(seen) < _SEARCH_LIMIT:
        obj = todo.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, type, type(sys))):
            continue
        seen.add(id(obj))
        if obj is handler.app or getattr(obj, "__code__", None) is mounted:
            return True
        if isinstance(obj, (list, tuple)):
            todo.extend(obj)
            continue
        for cell in getattr(obj, "__closure__", None) or ():
            try:
                todo.append(cell.cell_contents)
            except ValueError:
                pass
        for attr in ("__wrapped__", "__self__", "__func__", "func", "args"):
            todo.append(getattr(obj, attr, None))
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict) and not callable(getattr(obj, "__code__", None)):
            todo.extend(v for v in attrs.values() if callable(v))
    return False


def _answers_like_the_handler(app: WSGIApp, host: str, port: int) -> bool:
    """Ask the app for a task URL with GET: the task handler answers 405, ``Allow: POST``."""
    environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": settings.route + "/taskutils-probe",
        "QUERY_STRING": "",
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": f"{host}:{port}",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    answer: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        answer[:] = [status, headers]
        return lambda data: None

    quiet = logging.getLogger("taskutils.handler")
    was = quiet.disabled
    quiet.disabled = True  # the handler would log the probe as a refused request
    try:
        body = app(environ, start_response)
        try:
            data = b"".join(body)
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
    except Exception:
        log.debug("probing %s for the task handler failed", settings.route, exc_info=True)
        return False
    finally:
        quiet.disabled = was
    if len(answer) != 2:
        return False
    allow = [v for k, v in answer[1] if k.lower() == "allow"]
    return str(answer[0]).startswith("405") and allow == ["POST"] and data == b"tasks are POSTed\n"


def routes_tasks(app: WSGIApp, host: str = "127.0.0.1", port: int = 80) -> bool:
    """True when app already sends task URLs to the task handler, so tasks can go through it whole."""
    return _contains_handler(app) or _answers_like_the_handler(app, host, port)


def _request_local_environ() -> bool:
    """True once ``wrap_wsgi_app`` has made ``os.environ`` a per-thread mapping."""
    return isinstance(os.environ, request_environment.RequestLocalEnviron)


class ServedApp:
    """The WSGI callable the server runs for every request, on any of its threads.

    Each request starts as on App Engine: with the app's environment in
    ``os.environ`` (per thread once ``wrap_wsgi_app`` made it so, filled as
    ``wrap_wsgi_app`` fills it, so a thread that never served the app's own
    routes has it too) and no ndb context (ndb makes a fresh one when first
    used). Whatever the app raises, ``SystemExit`` and ``KeyboardInterrupt``
    included, becomes a 500: it never reaches the server's threads.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.base_environ: dict[str, str] | None = dict(os.environ) if _request_local_environ() else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self.base_environ is not None:
            request_environment.current_request.Init(None, self.base_environ.copy())
        tasklets._state.current_context = None
        try:
            return self.app(environ, start_response)
        except BaseException as e:
            log.error(
                "%s %s raised %s: answered 500",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                type(e).__name__,
                exc_info=not isinstance(e, (SystemExit, KeyboardInterrupt)),
            )
            body = b"Internal Server Error\n"
            try:
                start_response(
                    "500 Internal Server Error",
                    [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
                    sys.exc_info(),
                )
            except BaseException:
                return []
            return [body]
