"""Run by a virtualenv holding ``taskutils-gae[cloud]`` and no App Engine SDK: the cloud backend end to end.

Against the Datastore and Cloud Tasks emulators named by ``DATASTORE_EMULATOR_HOST`` and
``CLOUD_TASKS_EMULATOR_HOST`` (the queue paused), it adds tasks, then runs them as Cloud
Tasks would, posting each to ``taskutils.app`` until none is left, and prints what it saw
as one JSON object. Run it as a module, from this folder, so that its classes pickle by
reference as an app's do: python -c "import without_sdk; without_sdk.main()" PROJECT LOCATION QUEUE
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from typing import Any

from google.cloud import ndb, tasks_v2

import taskutils
from taskutils import cloudtasks

PROJECT, LOCATION, QUEUE = (sys.argv[1:4] + [""] * 3)[:3]
BIG = 300 * 1024
MAX_ROUNDS = 50


class Note(ndb.Model):
    text = ndb.StringProperty()


def note_writer(prefix: str) -> Any:
    @taskutils.task
    def write(note_id: str, body: bytes) -> None:  # a closure: prefix comes with it
        Note(id=note_id, text=f"{prefix}{len(body)}:{body[:3].decode()}").put()

    return write


@taskutils.task
def square(n: int) -> int:
    return n * n


@taskutils.task
def total(results: list[int]) -> int:
    return sum(results)


def cube(n: int) -> int:
    return n**3


def post(url: str, body: bytes, headers: dict[str, str], app: Any = None, method: str = "POST") -> str:
    """Post a task to taskutils.app (or app) as Cloud Tasks does (App Engine routing); its status line."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": url,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": headers.get("Content-Type", "application/octet-stream"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    status: list[str] = []
    b"".join((app or taskutils.app)(environ, lambda s, h, exc_info=None: status.append(s)))
    return status[0]


def drain(client: tasks_v2.CloudTasksClient) -> list[str]:
    parent = client.queue_path(PROJECT, LOCATION, QUEUE)
    statuses: list[str] = []
    for _ in range(MAX_ROUNDS):
        waiting = list(client.list_tasks(request={"parent": parent, "response_view": tasks_v2.Task.View.FULL}))
        if not waiting:
            return statuses
        client.purge_queue(name=parent)  # the emulator has no DeleteTask
        for added in waiting:
            request = added.app_engine_http_request
            headers = {
                **dict(request.headers),
                "X-AppEngine-QueueName": QUEUE,
                "X-AppEngine-TaskName": added.name.rsplit("/", 1)[1],
                "X-AppEngine-TaskRetryCount": "0",
            }
            statuses.append(post(request.relative_uri, request.body, headers))
    raise AssertionError(f"tasks still queued after {MAX_ROUNDS} rounds")


def main() -> None:
    taskutils.configure(backend="cloud", project=PROJECT, location=LOCATION, secret_keys=["without-sdk-key"])
    client = cloudtasks.emulator_client(os.environ["CLOUD_TASKS_EMULATOR_HOST"])
    added = note_writer("len=")("n1", b"abc" * (BIG // 3))
    group = square.submit_map(range(12))
    then = group.then(total)
    once = taskutils.task(
        cube, name="cube-once", retry_options=taskutils.taskqueue.TaskRetryOptions(task_retry_limit=2)
    )
    once(3)
    try:
        once(3)
        duplicate = "added twice"
    except taskutils.taskqueue.TaskAlreadyExistsError as e:  # the SDK's name, without the SDK
        duplicate = type(e).__name__
    statuses = drain(client)
    with ndb.Client(project=PROJECT).context():
        notes = [(n.key.id(), n.text) for n in Note.query().fetch()]
    os.environ["GAE_ENV"] = "standard"  # App Engine without bundled services: it strips X-AppEngine-* from outside
    console = {
        "admin": post("/", b"", {"X-AppEngine-User-Is-Admin": "1"}, taskutils.console, "GET"),
        "anyone": post("/", b"", {}, taskutils.console, "GET"),
    }
    del os.environ["GAE_ENV"]
    print(
        json.dumps(
            {
                "sdk": importlib.util.find_spec("google.appengine") is not None,
                "task_class": f"{type(added).__module__}.{type(added).__qualname__}",
                "statuses": statuses,
                "notes": notes,
                "squares": group.results(),
                "total": then.result(),
                "duplicate": duplicate,
                "console": console,
            }
        )
    )
