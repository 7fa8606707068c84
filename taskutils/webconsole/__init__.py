"""The console: see and steer tasks under ``serve``, and see handles and groups in production.

- :mod:`.local`: the local console ``serve`` answers at ``/_ah/taskutils/``.
- :mod:`.production`: ``taskutils.console``, read-only, for App Engine admins.
- :mod:`.queues` (the taskqueue stub's) or :mod:`.cloud_queues` (Cloud Tasks', on the cloud backend),
  :mod:`.runs`, :mod:`.handles`, :mod:`.decode`: what the pages show.
- :mod:`.inert`: reading a task's pickle without running any of its code.
"""

from __future__ import annotations

from .local import PREFIX as PREFIX
from .local import LocalConsole as LocalConsole
from .local import mount_console as mount_console
from .production import console as console
