"""What adding tasks shares on both backends: the enqueue hook, spilled payloads of tasks the
queue refused, and the SDK's error when no App Engine API is reachable.

Nothing here needs ``appengine-python-standard``: without it, no error is the SDK's.
"""

from __future__ import annotations

import os

from .. import codec
from .._sdk import HAS_SDK, taskqueue
from ..config import settings
from ..exc import NoApiProxyError
from ..hooks import TaskEvent, on_enqueue
from ..tracing import current_trace

if HAS_SDK:
    from google.appengine.runtime import apiproxy_errors

    NO_API_ERRORS: tuple[type[BaseException], ...] = (AssertionError, apiproxy_errors.RPCFailedError)
else:
    NO_API_ERRORS = (AssertionError,)


def announce(queue: str, added: taskqueue.Task | list[taskqueue.Task]) -> None:
    """Tell ``taskutils.hooks.on_enqueue``'s receivers what a queue added (one event per add)."""
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


def discard_spills(built: list[taskqueue.Task], transactional: bool, error: BaseException | None = None) -> None:
    """Delete the spilled payloads of built tasks the queue surely did not take (see spill.discard_unadded)."""
    if any(t.payload and t.payload[0] & codec.POINTER for t in built):
        from .. import spill

        spill.discard_unadded(built, error, transactional=transactional)


def no_api_proxy(error: BaseException) -> NoApiProxyError | None:
    """NoApiProxyError when the SDK's error says no App Engine API is reachable here; None for any other.

    That is the SDK's ``No api proxy found`` (no stubs at all: a plain script), or, off App
    Engine, a call with no security ticket (``wrap_wsgi_app`` under ``flask run``).
    """
    message = str(error).lower()
    if isinstance(error, AssertionError):
        if "api proxy" not in message:
            return None
    elif not HAS_SDK or not isinstance(error, apiproxy_errors.RPCFailedError) or "security ticket" not in message:
        return None
    elif os.environ.get("GAE_ENV") == "standard":
        return None  # on App Engine: a call outside a request, not a missing server
    return NoApiProxyError(
        "no App Engine API here to add the task to (the SDK says: "
        f"{error}). Outside App Engine, run the app with `python -m taskutils serve MODULE:APP`, "
        "or use the `task_testbed` pytest fixture in tests"
    )
