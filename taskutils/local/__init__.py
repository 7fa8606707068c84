"""The local runtime behind ``python -m taskutils serve``: Google's App Engine stubs on a real server.

- :mod:`.server`: :class:`LocalServer`: waitress on loopback, the environment, start, stop, summary.
- :mod:`.stubs`: Google's taskqueue, datastore and memcache stubs, registered for the server, bounded.
- :mod:`.scheduler`: queued tasks run side by side, within their deadlines, retried with backoff.
- :mod:`.throttle`: a queue's queue.yaml ``rate`` and ``bucket_size``, as a token bucket.
- :mod:`.dispatch`: each attempt sent to the server as a real HTTP request, and its run record.
- :mod:`.guard`: task headers only from the server's own queue, and only the hosts it serves.
- :mod:`.wsgi`: the user's app, loaded, mounted as deployed, given App Engine's environment per request.

The names below load their module on first use: they run Google's App Engine stubs, while
:mod:`.cloud` and :mod:`.datastore_emulator` (the emulators of the cloud backend, for the
``cloud_task_testbed`` fixture) need none of the App Engine SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dispatch import DISPATCH_TIMEOUT as DISPATCH_TIMEOUT
    from .dispatch import STOP_GRACE as STOP_GRACE
    from .dispatch import HTTPDispatcher as HTTPDispatcher
    from .dispatch import RunRecord as RunRecord
    from .dispatch import RunRecords as RunRecords
    from .scheduler import DEFAULT_CONCURRENCY as DEFAULT_CONCURRENCY
    from .server import DEFAULT_HOST as DEFAULT_HOST
    from .server import DEFAULT_PORT as DEFAULT_PORT
    from .server import DEFAULT_PROJECT as DEFAULT_PROJECT
    from .server import LocalServer as LocalServer
    from .server import StopSummary as StopSummary
    from .server import cloudtasks_mode as cloudtasks_mode
    from .stubs import StubLogFilter as StubLogFilter
    from .wsgi import load_app as load_app
    from .wsgi import routes_tasks as routes_tasks

_LAZY = {
    "DISPATCH_TIMEOUT": (".dispatch", "DISPATCH_TIMEOUT"),
    "STOP_GRACE": (".dispatch", "STOP_GRACE"),
    "HTTPDispatcher": (".dispatch", "HTTPDispatcher"),
    "RunRecord": (".dispatch", "RunRecord"),
    "RunRecords": (".dispatch", "RunRecords"),
    "DEFAULT_CONCURRENCY": (".scheduler", "DEFAULT_CONCURRENCY"),
    "DEFAULT_HOST": (".server", "DEFAULT_HOST"),
    "DEFAULT_PORT": (".server", "DEFAULT_PORT"),
    "DEFAULT_PROJECT": (".server", "DEFAULT_PROJECT"),
    "LocalServer": (".server", "LocalServer"),
    "StopSummary": (".server", "StopSummary"),
    "cloudtasks_mode": (".server", "cloudtasks_mode"),
    "StubLogFilter": (".stubs", "StubLogFilter"),
    "load_app": (".wsgi", "load_app"),
    "routes_tasks": (".wsgi", "routes_tasks"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
