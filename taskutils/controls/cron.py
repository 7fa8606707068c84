"""The cron route of ``taskutils.periodic``'s jobs, which ``mount()`` serves.

One cron entry (``python -m taskutils cron MODULE:APP`` prints it) calls
``CRON_PATH`` every minute; ``mount()`` serves it to App Engine's cron service only
(``X-Appengine-Cron: true``). Each call adds every due job as a task named after its
slot (``periodic-<job>-<YYYYmmdd-HHMM>``) and records the slot: a second firing in
the same slot finds the slot recorded, or the name taken, and adds nothing.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Any

from .._sdk import taskqueue
from ..cronauth import refusal, refused_status
from . import keys, store
from .jobs import jobs
from .spec import CRON_PATH

log = logging.getLogger("taskutils.controls")

CATCH_UP = datetime.timedelta(minutes=15)  # a slot this late is still added (a cron firing missed)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def fire(now: datetime.datetime | None = None) -> list[str]:
    """Add every job whose slot is due (at most CATCH_UP late) as a task named after the slot; the names added.

    The job's record says which slot was added last, so a slot is added once even after
    the queue forgot the task's name (Cloud Tasks keeps names about an hour); the name
    covers two firings racing each other.
    """
    now = now or _utcnow()
    added = []
    for job in jobs():
        slot = job.schedule.latest(now)
        if slot is None or now - slot > min(CATCH_UP, job.schedule.shortest):
            continue
        record = store.State(store.PERIODIC_KIND, keys.digest(job.name))
        last = record.read().get("slot")
        if last is not None and datetime.datetime.fromisoformat(last) >= slot:
            continue
        name = job.task_name(slot)
        try:
            job.function.options(name=name)()
        except (taskqueue.TaskAlreadyExistsError, taskqueue.TombstonedTaskError):
            log.debug("periodic job %s: slot %s already added", job.name, slot)
            continue
        added.append(name)
        try:
            record.state = {"slot": slot.isoformat(), "added": now.isoformat()}
            record.write(job.name)
        except Exception:
            log.exception("periodic job %s: added, but its last slot was not recorded", job.name)
        log.info("periodic job %s: added its %s slot as task %s", job.name, slot, name)
    return added


def listing(now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """Every job with its schedule, last slot added and next slot, for the console."""
    now = now or _utcnow()
    found = []
    for job in jobs():
        record = store.State(store.PERIODIC_KIND, keys.digest(job.name))
        state = record.read()
        found.append(
            {
                "name": job.name,
                "schedule": job.schedule.text,
                "last": state.get("slot"),
                "next": (job.schedule.next(now) or now).isoformat(),
            }
        )
    return found


def cron_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The cron route: add due periodic jobs on a GET from the scheduler; 403 for anyone else.

    On App Engine, which strips ``X-Appengine-Cron`` from requests that do not come
    from its cron service, the header is the proof. On the cloud backend with a
    ``target`` (Cloud Run, GKE) anyone can send that header: there the request must
    carry an OIDC token of an allowed sender, as Cloud Scheduler attaches with
    ``--oidc-service-account-email`` (its audience the target), checked as a task's is.
    """
    why = refusal(environ)
    if why is not None:
        log.warning("refused a periodic cron request: %s", why)
        start_response(refused_status(why), [("Content-Type", "text/plain")])
        return [b"cron requests only\n"]
    added = fire()
    body = f"added {len(added)}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def cron_yaml() -> str:
    """The cron.yaml entry that fires the periodic jobs imported so far."""
    names = ", ".join(f"{job.name} ({job.schedule.text})" for job in jobs()) or "none imported"
    return f"cron:\n- description: taskutils periodic jobs - {names}\n  url: {CRON_PATH}\n  schedule: every 1 minutes\n"
