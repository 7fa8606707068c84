"""The local runtime behind ``python -m taskutils serve``: Google's App Engine stubs on a real server.

- :mod:`.server`: :class:`LocalServer`: waitress on loopback, the environment, start, stop, summary.
- :mod:`.stubs`: Google's taskqueue, datastore and memcache stubs, registered for the server, bounded.
- :mod:`.scheduler`: queued tasks run side by side, within their deadlines, retried with backoff.
- :mod:`.throttle`: a queue's queue.yaml ``rate`` and ``bucket_size``, as a token bucket.
- :mod:`.dispatch`: each attempt sent to the server as a real HTTP request, and its run record.
- :mod:`.guard`: task headers only from the server's own queue, and only the hosts it serves.
- :mod:`.wsgi`: the user's app, loaded, mounted as deployed, given App Engine's environment per request.
"""

from __future__ import annotations

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
