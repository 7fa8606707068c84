"""Migrating from deferred: ``defer(fn, *args, _queue=..., **kwargs)`` on taskutils, and deferred's own handler."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from ._sdk import taskqueue
from .task import task

log = logging.getLogger("taskutils.defer")

DEFERRED_URL = "/_ah/queue/deferred"
TASKQUEUE_SOURCE = "0.1.0.2"
DEVELOPMENT_SERVER = "Development/1.0 (taskutils)"

# deferred.defer's underscore options and the task options they become.
OPTIONS = {
    "_queue": "queue",
    "_countdown": "countdown",
    "_eta": "eta",
    "_name": "name",
    "_target": "target",
    "_retry_options": "retry_options",
    "_transactional": "transactional",
    "_headers": "headers",
}


def defer(obj: Callable[..., Any], /, *args: Any, **kwargs: Any) -> taskqueue.Task:
    """Enqueue ``obj(*args, **kwargs)`` as a taskutils task, called the way ``deferred.defer`` is.

    ``_queue``, ``_countdown``, ``_eta``, ``_name``, ``_target``, ``_retry_options``,
    ``_transactional`` and ``_headers`` become the task options of the same name;
    the other keywords go to obj. Any other keyword starting with ``_`` raises
    TypeError (deferred would have passed it to obj): ``_url`` included, since
    taskutils gives each function its own URL. Returns the added task.
    """
    options: dict[str, Any] = {}
    for key in [key for key in kwargs if key.startswith("_")]:
        if key == "_url":
            raise TypeError(
                "defer() takes no _url=: taskutils posts each function to its own URL under the route; "
                "use task(fn, logname=...) to choose the part after the route"
            )
        if key not in OPTIONS:
            raise TypeError(
                f"defer() got an unknown option {key}=; deferred's options are {', '.join(OPTIONS)}. "
                f"To pass {key}= to the function itself, call task(fn)(..., {key}=...)"
            )
        value = kwargs.pop(key)
        if value is not None:
            options[OPTIONS[key]] = value
    return task(obj, **options)(*args, **kwargs)


def run_deferred(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Run a task that ``deferred.defer`` enqueued, through deferred's own handler.

    The request is checked as taskutils checks its own first (POST, the queue's
    headers, the queue's source address in production, told by ``GAE_ENV``);
    deferred's handler then runs it and answers as deferred does: 200 for
    success and PermanentTaskFailure, 408 for SingularTaskFailure, and any
    other exception is raised to the server, which answers 500.
    """
    if environ.get("REQUEST_METHOD") != "POST":
        start_response("405 Method Not Allowed", [("Allow", "POST"), ("Content-Type", "text/plain")])
        return [b"tasks are POSTed\n"]
    in_production = os.environ.get("GAE_ENV") == "standard"
    from_queue = "HTTP_X_APPENGINE_TASKNAME" in environ and "HTTP_X_APPENGINE_QUEUENAME" in environ
    if from_queue and in_production:
        from_queue = environ.get("REMOTE_ADDR") == TASKQUEUE_SOURCE
    if not from_queue:
        log.warning("refused a deferred task request: not from the queue")
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"Forbidden\n"]
    # deferred's handler tells production from SERVER_SOFTWARE (and fails without it): tell it what we found.
    if in_production:
        environ.setdefault("SERVER_SOFTWARE", "")
    else:
        environ["SERVER_SOFTWARE"] = DEVELOPMENT_SERVER
    from google.appengine.ext import deferred  # only deferred's own tasks come here: the SDK is installed

    return deferred.application(environ, start_response)
