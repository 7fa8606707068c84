"""The console: see and steer tasks under ``serve``, and see handles and groups in production.

- :mod:`.local`: the local console ``serve`` answers at ``/_ah/taskutils/``.
- :mod:`.production`: ``taskutils.console``, read-only, for App Engine admins.
- :mod:`.queues` (the taskqueue stub's) or :mod:`.cloud_queues` (Cloud Tasks', on the cloud backend),
  :mod:`.runs`, :mod:`.handles`, :mod:`.decode`: what the pages show.
- :mod:`.inert`: reading a task's pickle without running any of its code.
"""

from __future__ import annotations

from typing import Any

from .production import console as console


def __getattr__(name: str) -> Any:
    """The local console's names (``PREFIX``, ``LocalConsole``, ``mount_console``), loaded on first use:
    it reads the taskqueue stub, so it needs the App Engine SDK where ``console`` does not."""
    if name in ("PREFIX", "LocalConsole", "mount_console"):
        from . import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
