"""An app with one periodic job that records each run (its task name names the slot) in Datastore."""

from google.appengine.ext import ndb

import taskutils


class Tick(ndb.Model):
    task_name = ndb.StringProperty()
    started = ndb.FloatProperty()


@taskutils.periodic("every 1 minutes")
def tick() -> None:
    import time

    Tick(task_name=taskutils.current_task().task_name, started=time.time()).put()


def app(environ, start_response):
    """GET /: the runs so far, one a line: the minute it started in (epoch seconds // 60) and its task name."""
    runs = sorted(f"{int(t.started // 60)} {t.task_name}" for t in Tick.query().fetch())
    body = "\n".join(runs).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
