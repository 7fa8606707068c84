"""Who may call taskutils' cron routes: the periodic jobs' (``taskutils.controls.cron``) and the sweep's.

On App Engine, the cron service's ``X-Appengine-Cron: true``, which App Engine strips from
every request that does not come from it. Off App Engine (the cloud backend with a
``target``) that header is anyone's to send, and the request must carry an OIDC token of
an allowed sender instead, as Cloud Scheduler attaches with ``--oidc-service-account-email``
(its audience the target), checked as a task's is (``taskutils.backends.oidc``).
"""

from __future__ import annotations

from typing import Any

from .config import settings
from .exc import CertsUnavailableError, UntrustedRequestError

CRON_HEADER = "HTTP_X_APPENGINE_CRON"


def refusal(environ: dict[str, Any]) -> str | None:
    """Why this request is not the scheduler's; None when it is. A reason starting "cannot
    check" means no token could be checked yet (answer 500, and the scheduler tries again)."""
    if settings.backend == "cloud" and settings.cloud.target is not None:
        from .backends import oidc

        try:
            oidc.trust(settings.cloud).verify(environ)
        except UntrustedRequestError as e:
            return f"OIDC token: {e}"
        except (CertsUnavailableError, ImportError) as e:
            return f"cannot check its OIDC token: {e}"
        return None
    if environ.get(CRON_HEADER) != "true":
        return "no X-Appengine-Cron: true"
    return None


def refused_status(why: str) -> str:
    """The status line for a refusal: 500 when the token could not be checked, else 403."""
    return "500 Internal Server Error" if why.startswith("cannot check") else "403 Forbidden"
