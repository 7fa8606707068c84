"""taskutils in a FastAPI (ASGI) app on Cloud Run: the WSGI task handler mounted through a2wsgi.

``taskutils.mount(not_found)`` is a WSGI app that serves the task URLs and the periodic jobs'
cron route (``/cron/taskutils-periodic``), and answers 404 to anything else;
``a2wsgi.WSGIMiddleware`` runs it inside the ASGI app, on a thread pool. It is mounted at
``/``, after the app's own routes, so it sees the whole path (``/_ah/task/main/square``): a
mount at ``/_ah/task`` would hand it the path without its prefix.

Locally: ``python -m taskutils serve main:wsgi --backend cloud`` (serve is a WSGI server:
``wsgi`` is this app seen through ``a2wsgi.ASGIMiddleware``). On Cloud Run:
``uvicorn main:app --host 0.0.0.0 --port $PORT``; see README.md.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable
from typing import Any

from a2wsgi import ASGIMiddleware, WSGIMiddleware
from fastapi import FastAPI, Request, Response
from google.cloud import ndb
from starlette.concurrency import run_in_threadpool

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

app = FastAPI()


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


# Adding a task and Cloud NDB calls block: plain `def` routes run on FastAPI's thread pool, and
# `async def` ones hand them to it with run_in_threadpool, so the event loop never waits on them.
@app.post("/notes/{note_id}", status_code=202)
async def add_note(note_id: str, request: Request) -> Response:
    text = (await request.body()).decode()

    @taskutils.task
    def write() -> None:  # a closure: note_id and text travel with the task
        @ndb.transactional()
        def txn() -> None:
            note = Note.get_by_id(note_id) or Note(id=note_id, text=text)
            note.writes += 1
            note.put()

        txn()

    await run_in_threadpool(write)  # adding a task blocks: not on the event loop
    return Response("queued", status_code=202)


@app.get("/notes/{note_id}")
def get_note(note_id: str) -> dict[str, object] | None:
    with datastore().context():
        note = Note.get_by_id(note_id)
    return None if note is None else {"text": note.text, "writes": note.writes}


@app.post("/uploads/{upload_id}", status_code=202)
async def upload(upload_id: str, request: Request) -> Response:
    data = await request.body()  # hundreds of KB: taskutils keeps it in Datastore for the task

    @taskutils.task
    def keep(blob: bytes) -> None:
        Upload(id=upload_id, size=len(blob), sha256=hashlib.sha256(blob).hexdigest()).put()

    await run_in_threadpool(keep, data)  # adding a task blocks: not on the event loop
    return Response("queued", status_code=202)


@app.get("/uploads/{upload_id}")
def get_upload(upload_id: str) -> dict[str, object] | None:
    with datastore().context():
        found = Upload.get_by_id(upload_id)
    return None if found is None else {"size": found.size, "sha256": found.sha256}


@app.post("/squares/{run_id}", status_code=202)
def squares(run_id: str, n: int = 10) -> str:
    def save(results: list[int]) -> None:  # runs once, after every square ran
        @ndb.transactional()
        def txn() -> None:
            found = Squares.get_by_id(run_id) or Squares(id=run_id, values=results)
            found.calls += 1
            found.put()

        txn()

    square.submit_map(range(n)).then(save)
    return "queued"


@app.get("/squares/{run_id}")
def get_squares(run_id: str) -> dict[str, object] | None:
    with datastore().context():
        found = Squares.get_by_id(run_id)
    return None if found is None else {"values": found.values, "calls": found.calls}


def not_found(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """What no route above, no task URL and no cron route took: 404, as FastAPI answers it."""
    body = b'{"detail":"Not Found"}'
    start_response("404 Not Found", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


# Last: every path no route above took. taskutils.mount serves the task URLs and the periodic
# jobs' cron route (taskutils.app alone serves only the task URLs), and hands the rest to not_found.
app.mount("/", WSGIMiddleware(taskutils.mount(not_found)))

wsgi = ASGIMiddleware(app)  # the same app as WSGI, for `python -m taskutils serve main:wsgi`
