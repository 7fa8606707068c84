"""The parts of the App Engine SDK that every backend uses, loaded without their own deprecation warnings.

With ``appengine-python-standard`` installed (the App Engine backend, ``serve``, the pytest
fixture), ``taskqueue`` is the SDK's ``google.appengine.api.taskqueue`` and the deferred
library's failure classes are its own. Without it (the cloud backend alone: ``pip install
"taskutils-gae[cloud]"``), ``taskqueue`` is :mod:`taskutils._tasklite`, the same task model,
and the deferred classes are stand-ins no task can have raised from the SDK. ``HAS_SDK`` says
which; ``require_sdk`` makes an App-Engine-only feature say what to install.

The SDK (and webapp2) warn about their own deprecated calls while their modules load
(``datetime.utcfromtimestamp``, ``import cgi``, ruamel's ``typ='unsafe'``), and
google.api_core warns on Python 3.10 that its future releases will drop it: nothing a
user of taskutils can fix. They are silenced for these imports only; the warning filters
are left as they were.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"google\.appengine|webapp2|importlib")
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"google\.appengine")
    warnings.filterwarnings(
        "ignore", "You are using a non-supported Python version", FutureWarning, module=r"google\.api_core"
    )
    import webapp2  # noqa: F401

    if TYPE_CHECKING:
        from google.appengine.api import taskqueue
        from google.appengine.ext.deferred import PermanentTaskFailure, SingularTaskFailure

        HAS_SDK: bool
    else:
        try:
            from google.appengine.api import taskqueue
            from google.appengine.ext import deferred, ndb  # noqa: F401
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("google.appengine") and e.name not in ("google", "google.appengine"):
                raise  # the SDK is there, something it needs is not: say so
            from . import _tasklite as taskqueue

            HAS_SDK = False

            class PermanentTaskFailure(Exception):
                """The deferred library's: not installed here, so no task raises it."""

            class SingularTaskFailure(Exception):
                """The deferred library's: not installed here, so no task raises it."""

        else:
            HAS_SDK = True
            PermanentTaskFailure = deferred.PermanentTaskFailure
            SingularTaskFailure = deferred.SingularTaskFailure

INSTALL_HINT = 'pip install "taskutils-gae[appengine]"'


def require_sdk(what: str) -> None:
    """Raise ModuleNotFoundError saying what needs ``appengine-python-standard`` when it is not installed."""
    if not HAS_SDK:
        raise ModuleNotFoundError(
            f"{what} needs App Engine's SDK, appengine-python-standard, which is not installed: {INSTALL_HINT} "
            '(or configure(backend="cloud") and pip install "taskutils-gae[cloud]")',
            name="google.appengine",
        )


__all__ = ["HAS_SDK", "INSTALL_HINT", "PermanentTaskFailure", "SingularTaskFailure", "require_sdk", "taskqueue"]
