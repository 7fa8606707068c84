"""The local runtime behind ``python -m taskutils serve``: Google's App Engine stubs on a real server.

- :mod:`.server`: :class:`LocalServer`, waitress on loopback, the environment, start and stop.
- :mod:`.stubs`: Google's taskqueue, datastore and memcache stubs, registered for the server.
- :mod:`.dispatch`: each queued task sent to the server as a real HTTP request.
- :mod:`.wsgi`: the user's app, loaded from ``MODULE:ATTR`` and mounted.
"""

from __future__ import annotations

from .dispatch import DISPATCH_TIMEOUT as DISPATCH_TIMEOUT
from .dispatch import STOP_GRACE as STOP_GRACE
from .dispatch import HTTPDispatcher as HTTPDispatcher
from .server import DEFAULT_HOST as DEFAULT_HOST
from .server import DEFAULT_PORT as DEFAULT_PORT
from .server import DEFAULT_PROJECT as DEFAULT_PROJECT
from .server import DEFAULT_THREADS as DEFAULT_THREADS
from .server import LocalServer as LocalServer
from .server import cloudtasks_mode as cloudtasks_mode
from .stubs import StubLogFilter as StubLogFilter
from .wsgi import load_app as load_app
