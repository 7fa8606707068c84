"""taskutils on Cloud Run: a Flask app whose tasks are Cloud Tasks HTTP tasks, checked by their OIDC token.

Locally: ``python -m taskutils serve main:app --backend cloud`` (TASKS_TARGET unset: the
Cloud Tasks emulator posts tasks to serve with App Engine routing, as it attaches no token).
On Cloud Run: see README.md.
"""

from __future__ import annotations

import functools
import hashlib
import os

import flask
from google.cloud import ndb

import taskutils

TARGET = os.environ.get("TASKS_TARGET") or None  # this service's URL, e.g. https://worker-abc-uc.a.run.app
if os.environ.get("K_SERVICE") and not TARGET:
    # Without a target, tasks would use App Engine routing, whose headers prove nothing on Cloud Run.
    raise RuntimeError("set TASKS_TARGET to this service's URL: tasks are HTTP tasks on Cloud Run")

taskutils.configure(
    backend="cloud",
    target=TARGET,
    service_account=os.environ.get("TASKS_SERVICE_ACCOUNT") or None,  # Cloud Tasks signs its OIDC token as this account
)

app = flask.Flask(__name__)
app.wsgi_app = taskutils.mount(app.wsgi_app)  # task URLs (/_ah/task/...) to taskutils.app, the rest to Flask


@functools.cache
def datastore() -> ndb.Client:
    """The app's Cloud NDB client, made on first use (tasks get a context from taskutils' handler)."""
    return ndb.Client()


class Note(ndb.Model):
    text = ndb.StringProperty()
    writes = ndb.IntegerProperty(default=0)  # how many times a task wrote it


class Upload(ndb.Model):
    size = ndb.IntegerProperty()
    sha256 = ndb.StringProperty()


class Squares(ndb.Model):
    values = ndb.IntegerProperty(repeated=True)
    calls = ndb.IntegerProperty(default=0)


@taskutils.task
def square(x: int) -> int:
    return x * x


@app.post("/notes/<note_id>")
def add_note(note_id: str) -> tuple[str, int]:
    text = flask.request.get_data(as_text=True)

    @taskutils.task
    def write() -> None:  # a closure: note_id and text travel with the task
        @ndb.transactional()
        def txn() -> None:
            note = Note.get_by_id(note_id) or Note(id=note_id, text=text)
            note.writes += 1
            note.put()

        txn()

    write()
    return "queued\n", 202


@app.get("/notes/<note_id>")
def get_note(note_id: str) -> flask.Response:
    with datastore().context():
        note = Note.get_by_id(note_id)
    return flask.jsonify(None if note is None else {"text": note.text, "writes": note.writes})


@app.post("/uploads/<upload_id>")
def upload(upload_id: str) -> tuple[str, int]:
    data = flask.request.get_data()  # hundreds of KB: taskutils keeps it in Datastore for the task

    @taskutils.task
    def keep(blob: bytes) -> None:
        Upload(id=upload_id, size=len(blob), sha256=hashlib.sha256(blob).hexdigest()).put()

    keep(data)
    return "queued\n", 202


@app.get("/uploads/<upload_id>")
def get_upload(upload_id: str) -> flask.Response:
    with datastore().context():
        found = Upload.get_by_id(upload_id)
    return flask.jsonify(None if found is None else {"size": found.size, "sha256": found.sha256})


@app.post("/squares/<run_id>")
def squares(run_id: str) -> tuple[str, int]:
    count = int(flask.request.args.get("n", "10"))

    def save(results: list[int]) -> None:  # runs once, after every square ran
        @ndb.transactional()
        def txn() -> None:
            found = Squares.get_by_id(run_id) or Squares(id=run_id, values=results)
            found.calls += 1
            found.put()

        txn()

    square.submit_map(range(count)).then(save)
    return "queued\n", 202


@app.get("/squares/<run_id>")
def get_squares(run_id: str) -> flask.Response:
    with datastore().context():
        found = Squares.get_by_id(run_id)
    return flask.jsonify(None if found is None else {"values": found.values, "calls": found.calls})
