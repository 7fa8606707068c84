"""Task functions the tests enqueue; module-level, so workers find them by URL."""

from google.appengine.ext import deferred

import taskutils
from taskutils import task

ran: list = []


@task
def record(*args, **kwargs):
    ran.append((args, kwargs))


@task(queue="reports", countdown=30, headers={"X-Team": "reports"})
def report(day):
    ran.append(("report", day))


def plain(a, b=0):
    ran.append(("plain", a, b))


@task
def fail_permanently():
    raise taskutils.PermanentTaskFailure("never again")


@task
def fail_deferred_permanently():
    raise deferred.PermanentTaskFailure("never again (deferred)")


@task
def ask_for_retry():
    raise taskutils.RetryTaskException("later")


@task
def ask_for_retry_deferred():
    raise deferred.SingularTaskFailure("later (deferred)")


@task
def crash():
    raise ValueError("boom")


@task
def where_am_i():
    ran.append(taskutils.current_task())


@task(includeheaders=True)
def with_headers(amount, headers):
    ran.append((amount, dict(headers), headers["x-appengine-queuename"], headers["X-APPENGINE-TASKNAME"]))


@task
def enqueue_record(n):
    ran.append(("enqueue_record", n))
    record(n)
