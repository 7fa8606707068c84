"""``taskutils.sweep``: delete what tasks left in Datastore once no task can still need it.

Run it from cron (see ``cron.yaml.example``): ``sweep_app`` is a ready WSGI app
that answers App Engine's cron requests and nothing else.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .config import settings
from .cronauth import refusal, refused_status

log = logging.getLogger("taskutils.sweep")

DEFAULT_AGE = datetime.timedelta(days=7)


def _cutoff(older_than: datetime.timedelta | float) -> datetime.datetime:
    """The naive UTC time before which things count as old."""
    age = older_than if isinstance(older_than, datetime.timedelta) else datetime.timedelta(seconds=older_than)
    if age < datetime.timedelta(0):
        raise ValueError(f"sweep(older_than=...) must not be negative, got {older_than!r}")
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - age


def sweep(older_than: datetime.timedelta | float) -> int:
    """Delete spilled payloads whose task was due, task handles and groups that finished, and
    ``map_query`` checkpoints last written, more than older_than ago; return how many were deleted.
    On the cloud backend it first sends the transactional tasks staged more than a minute
    ago whose send after commit was lost (``taskutils.backends.cloud_outbox``), counting them.

    older_than is a timedelta or a number of seconds. Choose it longer than
    any task may keep retrying (its queue's task_age_limit, or how long you
    let a failing task retry): a task still running after that finds its
    payload gone and is dropped with an error in the log.
    """
    from . import results_store, spill  # Datastore's modules load on first use, not with taskutils

    before = _cutoff(older_than)
    sent = 0
    if settings.backend == "cloud":  # transactional tasks whose send after commit was lost: send them now
        from .backends import cloud_outbox

        sent = cloud_outbox.send_lost()
    deleted = spill.sweep(before) + results_store.sweep(before)
    if settings.backend == "cloud":  # map_query's checkpoints, in Cloud Datastore
        from .backends import cloud_mapquery

        deleted += cloud_mapquery.sweep(before)
    else:
        from . import mapquery_store

        deleted += mapquery_store.sweep(before)
    return sent + deleted


def sweep_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A WSGI app for cron: ``taskutils.sweep(7 days)`` on a request from the scheduler, else 403.

    On App Engine the proof is ``X-Appengine-Cron``, which App Engine strips from
    requests that do not come from its cron service. On the cloud backend with a
    ``target`` it is an OIDC token of an allowed sender (Cloud Scheduler's), as for
    the periodic jobs' route (``taskutils.cronauth``).
    """
    why = refusal(environ)
    if why is not None:
        log.warning("refused a sweep request: %s", why)
        start_response(refused_status(why), [("Content-Type", "text/plain")])
        return [b"cron requests only\n"]
    deleted = sweep(DEFAULT_AGE)
    body = f"deleted {deleted}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
