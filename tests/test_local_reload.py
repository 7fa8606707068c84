"""``python -m taskutils serve --reload``: edit a task's code while it retries, and its next retry runs the new code.

The test writes a small app into a temporary folder, serves it with ``--reload``
(a real supervisor process and its ``serve`` child, on one loopback port), lets a
task fail a few times, rewrites the task's module and watches the retry.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path
from typing import Any

from apps.serving import APPS, ServeProcess

APP = '''
"""A WSGI app whose tasks live in tasks_module.py."""
from google.appengine.api import taskqueue

import tasks_module
from wsgi_json import query, respond


def app(environ, start_response):
    path, q = environ["PATH_INFO"], query(environ)
    if path == "/enqueue":
        options = {"countdown": float(q["countdown"])} if "countdown" in q else {}
        return respond(start_response, "200 OK", {"name": tasks_module.edited.options(**options)(q["key"]).name})
    if path == "/stats":
        return respond(start_response, "200 OK", {"queued": taskqueue.Queue("default").fetch_statistics().tasks})
    return respond(start_response, "404 Not Found", {})
'''

TASKS = '''
"""The task a developer edits."""
import json
import os

from google.appengine.api import taskqueue

import taskutils


@taskutils.task(retry_options=taskqueue.TaskRetryOptions(min_backoff_seconds=0.2, max_backoff_seconds=0.5))
def edited(key):
    info = taskutils.current_task()
    with open(os.environ["DURABLE_LOG"], "a") as log:
        log.write(json.dumps({{"key": key, "code": "{code}", "retry_count": info.retry_count,
                              "task_name": info.task_name}}) + "\\n")
    {body}
'''

OLD = TASKS.format(code="old", body='raise RuntimeError("the old code fails")')
NEW = TASKS.format(code="new", body="return None")


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_an_edited_task_retries_with_the_new_code_and_queued_tasks_are_kept(tmp_path):
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "reload_app.py").write_text(textwrap.dedent(APP))
    (folder / "tasks_module.py").write_text(OLD)
    runs_file = tmp_path / "runs.jsonl"
    server = ServeProcess(
        "reload_app:app",
        tmp_path / "serve.log",
        "--reload",
        env={"PYTHONPATH": f"{folder}:{APPS}", "DURABLE_LOG": str(runs_file)},
    )
    try:
        server.wait_ready("/stats")
        failing = server.get("/enqueue?key=failing")["name"]
        server.get("/enqueue?key=waiting&countdown=600")
        server.wait_for(lambda: len(runs(runs_file)) >= 2, "the task failed twice with the old code", timeout=60)

        (folder / "tasks_module.py").write_text(NEW)

        new = server.wait_for(
            lambda: [r for r in runs(runs_file) if r["code"] == "new"], "a retry ran the new code", timeout=90
        )
        old = [r for r in runs(runs_file) if r["code"] == "old"]
        assert all(r["key"] == "failing" and r["task_name"] == failing for r in old + new)
        assert new[0]["retry_count"] >= len(old) >= 2  # the same task, retried: not a fresh one
        assert "changed: restarting the app" in server.log()
        server.wait_for(lambda: server.get("/stats")["queued"] == 1, "only the waiting task left queued")

        assert server.interrupt(signal.SIGINT, timeout=60) == 0
        assert "1 queued task(s) dropped" in server.log()
    finally:
        server.stop()
