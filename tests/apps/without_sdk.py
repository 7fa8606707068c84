"""Run by a virtualenv holding ``taskutils-gae[cloud]`` and no App Engine SDK: the cloud backend end to end.

Against the Datastore and Cloud Tasks emulators named by ``DATASTORE_EMULATOR_HOST`` and
``CLOUD_TASKS_EMULATOR_HOST`` (the queue paused), it adds tasks, runs them as Cloud Tasks
would with the plugin's ``CloudTaskTestbed`` (it raises if one fails), and prints what it
saw as one JSON object. Run it as a module, from this folder, so that its classes pickle by
reference as an app's do: python -c "import without_sdk; without_sdk.main()" PROJECT LOCATION QUEUE
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from typing import Any

from google.cloud import ndb

import taskutils
from taskutils.local.cloud import CloudEmulators
from taskutils.testing import CloudTaskTestbed

PROJECT, LOCATION, QUEUE = (sys.argv[1:4] + [""] * 3)[:3]
BIG = 300 * 1024


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


def admin_status(headers: dict[str, str]) -> str:
    """The status line ``taskutils.console`` answers a GET of its front page with these headers."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        **{"HTTP_" + name.upper().replace("-", "_"): value for name, value in headers.items()},
    }
    status: list[str] = []
    b"".join(taskutils.console(environ, lambda line, h, exc_info=None: status.append(line)))
    return status[0]


def main() -> None:
    taskutils.configure(secret_keys=["without-sdk-key"])
    emulators = CloudEmulators(PROJECT, LOCATION, target_port=9, queues=(QUEUE,), paused=True)
    with emulators, CloudTaskTestbed(emulators) as bed:  # configure(backend="cloud", ...) on the emulators
        seen = run(bed)
    print(json.dumps(seen))


def run(bed: CloudTaskTestbed) -> dict[str, Any]:
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
    ran = bed.drain()
    with bed.ndb_client().context():
        notes = [(n.key.id(), n.text) for n in Note.query().fetch()]
    os.environ["GAE_ENV"] = "standard"  # App Engine without bundled services: it strips X-AppEngine-* from outside
    console = {"admin": admin_status({"X-AppEngine-User-Is-Admin": "1"}), "anyone": admin_status({})}
    del os.environ["GAE_ENV"]
    return {
        "sdk": importlib.util.find_spec("google.appengine") is not None,
        "task_class": f"{type(added).__module__}.{type(added).__qualname__}",
        "ran": ran,
        "notes": notes,
        "squares": group.results(),
        "total": then.result(),
        "duplicate": duplicate,
        "console": console,
    }
