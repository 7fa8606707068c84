"""The local console of ``serve`` at ``/_ah/taskutils/``: queues, tasks, runs and handles, and buttons to steer them.

Pages are plain HTML that work without JavaScript; a small script only
offers to refresh them. Actions are POSTed forms carrying a CSRF token (an
HMAC, under a per-process secret, of a random session cookie) and answered
with 303 redirects. The console answers loopback clients only, and only for a
loopback ``Host`` (no DNS rebinding); it never shows signing keys or raw bodies.

``Retry`` and ``Run now`` both make a task due now through ``ForceRun``; the
retry count is kept, so a task retried from here still counts toward its
queue's ``task_retry_limit``. ``Retry`` is offered for a task whose last run
failed, ``Run now`` for one that has not run yet; ``Retry failed tasks`` on a
queue's page does it for every failed task of the queue at once.

In Cloud Tasks mode the queue lives in Cloud Tasks (or its emulator), not here:
the console says so, and records the runs this server answers through
``taskutils.hooks``. On the cloud backend (``configure(backend="cloud")``) the
queue pages read Cloud Tasks itself (:mod:`.cloud_queues`): each queue's tasks
with their decoded calls, and ``Run now`` (``RunTask``), ``Delete`` and ``Purge``
act there; the handle and group pages read Cloud Datastore through the store port.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

from .. import hooks
from ..config import settings
from ..local.dispatch import RunRecord
from . import cloud_queues, controls, decode, handles, queues
from .html import asset, duration, esc, page, path_part, status_badge, table, when
from .runs import RunLog, started_at

log = logging.getLogger("taskutils.webconsole")

PREFIX = "/_ah/taskutils"
COOKIE = "taskutils_console"
MAX_FORM = 4096
LOOPBACK = ("127.0.0.1", "::1", "localhost")

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_NOTICES = {
    "run": "Task {task} will run now.",
    "retry": "Task {task} will run again now.",
    "deleted": "Task {task} was deleted: it will not run.",
    "purged": "Queue {queue} was purged: its tasks will not run.",
    "gone": "Task {task} is no longer queued.",
    "unsupported": "Task {task} was not deleted: this queue service cannot delete one task.",
    "unknown": "There is no queue {queue}.",
    "retried": "{count} failed tasks of queue {queue} will run again now.",
}
STATUSES = {"": "any status", "ok": "succeeded (2xx)", "failed": "failed"}


def queue_service() -> str | None:
    """Where tasks are queued when not in this server's own stub: Cloud Tasks (an emulator, maybe)."""
    if os.environ.get("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "").lower() != "true":
        return None
    emulator = os.environ.get("CLOUD_TASKS_EMULATOR_HOST")
    return f"the Cloud Tasks emulator at {emulator}" if emulator else "Cloud Tasks"


def _record_runs(records: Any) -> None:
    """Record every run this process answers in records, as the dispatcher does when the queue is its own."""

    def record(event: hooks.TaskEvent) -> None:
        elapsed = event.duration or 0.0
        error = "" if event.error is None else f"{type(event.error).__name__}: {event.error}"[:200]
        status = 500 if event.signal == "retry" else 200
        url = f"{settings.route}/{event.function}"
        token = records.started(event.queue, event.task_name or "")
        run = RunRecord(
            time.time() - elapsed, event.queue, event.task_name or "", url, status, elapsed, error, event.retry_count
        )
        records.finished(token, run)

    for signal in (hooks.on_success, hooks.on_retry, hooks.on_failure):
        signal.connect(record)


class Response:
    """A status, headers and body; ``__call__`` hands them to WSGI."""

    def __init__(self, status: str, body: bytes = b"", content_type: str = "text/html; charset=utf-8") -> None:
        self.status = status
        self.body = body
        self.headers: list[tuple[str, str]] = [
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "same-origin"),
            ("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:"),
        ]

    def __call__(self, start_response: StartResponse) -> list[bytes]:
        start_response(self.status, [*self.headers, ("Content-Length", str(len(self.body)))])
        return [self.body]


def _redirect(location: str) -> Response:
    response = Response("303 See Other", b"", "text/plain")
    response.headers.append(("Location", location))
    return response


def _is_loopback_host(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.strip("[]") in LOOPBACK


class LocalConsole:
    """The console's WSGI app, bound to one running local server."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.runs = RunLog(server)
        self._secret = secrets.token_bytes(32)
        # On the cloud backend the queues are Cloud Tasks' (or its emulator's), listed and steered there.
        self.cloud = settings.backend == "cloud"
        self.queues: Any = cloud_queues if self.cloud else queues
        self._queue_yaml: str | None = None if self.cloud else getattr(server, "queue_yaml", None)
        self.queue_service = cloud_queues.service() if self.cloud else queue_service()
        if self.queue_service is not None and self.runs.records is not None:
            _record_runs(self.runs.records)

    # -- plumbing --------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        remote = environ.get("REMOTE_ADDR", "")
        host = environ.get("HTTP_HOST", "")
        if remote not in ("127.0.0.1", "::1") or not _is_loopback_host(host):
            log.warning("console refused a request from %r for host %r: loopback only", remote, host)
            return Response("403 Forbidden", b"the console answers loopback only\n", "text/plain")(start_response)
        path = environ.get("PATH_INFO", "")[len(PREFIX) :]
        method = environ.get("REQUEST_METHOD", "GET")
        session, fresh = self._session(environ)
        base = environ.get("SCRIPT_NAME", "") + PREFIX
        try:
            response = self._route(environ, method, path, session, base)
        except Exception:
            log.exception("console page %s failed", path)
            response = Response("500 Internal Server Error", page("Error", "<p>This page failed; see the log.</p>"))
        if fresh:
            response.headers.append(("Set-Cookie", f"{COOKIE}={session}; Path={base}/; HttpOnly; SameSite=Strict"))
        return response(start_response)

    def _session(self, environ: dict[str, Any]) -> tuple[str, bool]:
        try:
            cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        except CookieError:
            cookie = SimpleCookie()
        morsel = cookie.get(COOKIE)
        if morsel is not None and len(morsel.value) >= 32:
            return morsel.value, False
        return secrets.token_urlsafe(32), True

    def token(self, session: str) -> str:
        """The CSRF token forms of this session carry."""
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()

    def _form(self, environ: dict[str, Any]) -> dict[str, str] | None:
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > MAX_FORM:
            return None
        raw = environ["wsgi.input"].read(int(length)) if int(length) else b""
        return {k: v[0] for k, v in parse_qs(raw.decode("latin-1")).items()}

    def _button(self, action: str, label: str, session: str, css: str = "", **fields: str) -> str:
        hidden = "".join(
            f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">'
            for k, v in {"csrf": self.token(session), **fields}.items()
        )
        return (
            f'<form method="post" action="{esc(action)}" class="inline">{hidden}'
            f'<button type="submit" class="{esc(css)}">{esc(label)}</button></form>'
        )

    def _route(self, environ: dict[str, Any], method: str, path: str, session: str, base: str) -> Response:
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        if path == "":
            return _redirect(base + "/")
        if method == "POST":
            form = self._form(environ)
            if form is None or not hmac.compare_digest(form.get("csrf", ""), self.token(session)):
                return Response(
                    "403 Forbidden",
                    page(
                        "Forbidden",
                        "<p>The form was stale or not sent by this console. Go back, reload and try again.</p>",
                    ),
                )
            return self._act(parts, form, base)
        if method not in ("GET", "HEAD"):
            response = Response("405 Method Not Allowed", b"", "text/plain")
            response.headers.append(("Allow", "GET, POST"))
            return response
        message = self._notice(query)
        if parts == []:
            return self._queues_page(base, message)
        if parts == ["static", "console.css"]:
            return Response("200 OK", asset("console.css"), "text/css; charset=utf-8")
        if parts == ["static", "console.js"]:
            return Response("200 OK", asset("console.js"), "text/javascript; charset=utf-8")
        if parts == ["runs"]:
            return self._runs_page(base, query)
        if parts == ["handles"]:
            return self._handles_page(base)
        if parts == ["controls"]:  # taskutils.controls: leases held and periodic jobs
            body = controls.listing()
            return Response("200 OK", self._page(base, "Leases and periodic jobs", body, "controls", refresh=True))
        if len(parts) == 2 and parts[0] == "handles":
            return self._group_page(base, parts[1])
        if len(parts) == 3 and parts[0] == "handles" and parts[1] == "run":
            return self._handle_page(base, parts[2])
        if len(parts) == 2 and parts[0] == "queues":
            return self._queue_page(base, parts[1], session, message)
        if len(parts) == 3 and parts[0] == "queues" and parts[2] == "purge":
            return self._purge_page(base, parts[1], session)
        if len(parts) == 4 and parts[0] == "queues" and parts[2] == "tasks":
            return self._task_page(base, parts[1], parts[3], session, message)
        return Response("404 Not Found", self._page(base, "Not found", "<p>No such page.</p>"))

    def _notice(self, query: dict[str, str]) -> str:
        template = _NOTICES.get(query.get("done", ""))
        if not template:
            return ""
        return template.format(task=query.get("task", ""), queue=query.get("queue", ""), count=query.get("count", ""))

    def _page(
        self, base: str, title: str, body: str, current: str = "", message: str = "", refresh: bool = False
    ) -> bytes:
        nav = [
            ("Queues", base + "/", current == "queues"),
            ("Runs", base + "/runs", current == "runs"),
            ("Handles", base + "/handles", current == "handles"),
            ("Controls", base + "/controls", current == "controls"),
        ]
        if refresh:
            body = f'<div data-refresh="2"></div>{body}'
        return page(
            title,
            body,
            nav=nav,
            heading="taskutils console",
            styles_href=base + "/static/console.css",
            script_href=base + "/static/console.js",
            message=message,
        )

    # -- actions -----------------------------------------------------------------------------

    def _act(self, parts: list[str], form: dict[str, str], base: str) -> Response:
        if len(parts) == 3 and parts[0] == "queues" and parts[2] == "retry-failed":
            queue = parts[1]
            retried = [row.name for row in self._failed_tasks(queue) if self.queues.run_now(queue, row.name)]
            log.info("console: retried %d failed tasks of queue %s", len(retried), queue)
            query = urlencode({"done": "retried", "queue": queue, "count": len(retried)})
            return _redirect(f"{base}/queues/{path_part(queue)}?{query}")
        if len(parts) == 3 and parts[0] == "queues" and parts[2] == "purge":
            queue = parts[1]
            back = f"{base}/queues/{path_part(queue)}"
            if form.get("confirm") != "yes":
                return _redirect(f"{back}/purge")
            done = "purged" if self.queues.purge(queue) else "unknown"
            log.info("console: purged queue %s", queue)
            return _redirect(f"{back}?{urlencode({'done': done, 'queue': queue})}")
        if len(parts) == 5 and parts[0] == "queues" and parts[2] == "tasks" and parts[4] in ("run", "retry", "delete"):
            queue, name, verb = parts[1], parts[3], parts[4]
            if verb == "delete":
                try:
                    ok = self.queues.delete(queue, name)
                    done = "deleted" if ok else "gone"
                except NotImplementedError as e:
                    log.warning("console: %s", e)
                    ok, done = False, "unsupported"
            else:
                ok = self.queues.run_now(queue, name)
                done = verb if ok else "gone"
            log.info("console: %s task %s in queue %s -> %s", verb, name, queue, "done" if ok else "not queued")
            return _redirect(f"{base}/queues/{path_part(queue)}?{urlencode({'done': done, 'task': name})}")
        return Response("404 Not Found", page("Not found", "<p>No such action.</p>"))

    # -- pages -------------------------------------------------------------------------------

    def _queues_page(self, base: str, message: str) -> Response:
        rows = []
        failed = self._failed_recently()
        for q in self.queues.queues(self._queue_yaml):
            waiting, running, next_eta = self._backlog(q)
            settings = [] if self._queue_yaml or self.cloud else ["App Engine's defaults (no queue.yaml):"]
            settings += [f"rate {q.rate}", f"bucket size {q.bucket_size}"]
            if q.max_concurrent_requests is not None:
                settings.append(f"max_concurrent_requests {q.max_concurrent_requests}")
            settings += [f"{k} {v}" for k, v in q.retry.items()]
            if q.paused:
                settings.append("paused")
            rows.append(
                [
                    f'<a href="{esc(base)}/queues/{esc(path_part(q.name))}">{esc(q.name)}</a>',
                    f'<span class="num">{waiting}</span>',
                    f'<span class="num">{running}</span>',
                    f'<span class="num failed-recently">{failed.get(q.name, 0)}</span>',
                    when(next_eta),
                    '<ul class="settings">' + "".join(f"<li>{esc(s)}</li>" for s in settings) + "</ul>",
                ]
            )
        body = self._where() + table(
            [
                "Queue",
                "Waiting",
                "Running",
                "Failed recently",
                "Next ETA",
                "queue.yaml settings" if self._queue_yaml else "Cloud Tasks settings" if self.cloud else "Settings",
            ],
            rows,
            "No queue yet: queues appear once a task is added, or from queue.yaml.",
            "queues",
        )
        return Response("200 OK", self._page(base, "Queues", body, "queues", message, refresh=True))

    def _backlog(self, q: queues.QueueInfo) -> tuple[int, int, Any]:
        """(waiting, running, next ETA of a waiting task) of a queue: a task in flight stays in the stub's queue."""
        in_flight = self.runs.running_names(q.name)
        if not in_flight:
            return q.waiting, 0, q.next_eta
        following = [t for t in self.queues.tasks(q.name, limit=len(in_flight) + 1) if t.name not in in_flight]
        return max(0, q.waiting - len(in_flight)), len(in_flight), following[0].eta if following else None

    def _failed_tasks(self, queue: str) -> list[queues.TaskRow]:
        """The queue's tasks whose last run failed (or that the queue has retried)."""
        failed = []
        for row in self.queues.tasks(queue):
            last = self.runs.last(row.name)
            if (last is not None and not last.ok) or row.retry_count > 0:
                failed.append(row)
        return failed

    def _failed_recently(self) -> dict[str, int]:
        """How many of the recent runs failed, per queue."""
        counts: dict[str, int] = {}
        for run in self.runs.recent():
            if not run.ok or run.error:
                counts[run.queue] = counts.get(run.queue, 0) + 1
        return counts

    def _task_actions(self, base: str, row: queues.TaskRow, session: str, failed: bool) -> str:
        where = f"{base}/queues/{path_part(row.queue)}/tasks/{path_part(row.name)}"
        first = (
            self._button(f"{where}/retry", "Retry", session, "primary")
            if failed
            else self._button(f"{where}/run", "Run now", session, "primary")
        )
        return first + self._button(f"{where}/delete", "Delete", session, "danger")

    def _where(self) -> str:
        """In Cloud Tasks mode: where the queues live, and what this console can still show."""
        if self.queue_service is None:
            return ""
        if self.cloud:
            return (
                f'<p class="notice where">Tasks are queued in {esc(self.queue_service)}, which posts them to this '
                "server: the queues and tasks below are read from there, and its buttons act there.</p>"
            )
        return (
            f'<p class="notice where">Tasks are queued in {esc(self.queue_service)}, which posts them to this '
            "server: their queues live there, not here. This console shows the runs this server answered "
            "and the handles and groups.</p>"
        )

    def _queue_page(self, base: str, name: str, session: str, message: str) -> Response:
        info = self.queues.queue(name, self._queue_yaml)
        if info is None:
            return Response("404 Not Found", self._page(base, f"Queue {name}", "<p>There is no such queue.</p>"))
        failed_rows = 0
        rows = []
        waiting, running, next_eta = self._backlog(info)
        in_flight = self.runs.running_names(name) if running else set()
        for row in self.queues.tasks(name):
            last = self.runs.last(row.name)
            failed = (last is not None and not last.ok) or row.retry_count > 0
            failed_rows += failed
            rows.append(
                [
                    _task_link(base, name, row.name),
                    f"<code>{esc(decode.function_of(row.url))}</code>",
                    RUNNING if row.name in in_flight else when(row.eta),
                    f'<span class="num retries">{row.retry_count}</span>',
                    (status_badge(last.status) + f" <small>{esc(duration(last.duration))}</small>") if last else "—",
                    f'<span class="error">{esc(last.error)}</span>' if last and last.error else "",
                    self._task_actions(base, row, session, failed),
                ]
            )
        purge = (
            f'<form method="get" action="{esc(base)}/queues/{esc(path_part(name))}/purge" class="inline">'
            '<button type="submit" class="danger">Purge</button></form>'
        )
        defaults = "" if self._queue_yaml or self.cloud else " (App Engine's defaults: no queue.yaml)"
        failed_recently = self._failed_recently().get(name, 0)
        summary = (
            f'<p class="summary">{waiting} waiting · {running} running'
            f" · {failed_recently} failed recently · next ETA {when(next_eta)}"
            f" · rate {esc(info.rate)}, bucket size {info.bucket_size}{esc(defaults)}</p>"
        )
        body = summary + table(
            ["Task", "Function", "ETA", "Retries", "Last answer", "Error line", ""], rows, "No task waiting.", "tasks"
        )
        if info.waiting > queues.MAX_TASKS:
            body += f'<p class="empty">Showing the first {queues.MAX_TASKS} tasks by ETA.</p>'
        retry_failed = (
            self._button(
                f"{base}/queues/{path_part(name)}/retry-failed",
                f"Retry failed tasks ({failed_rows})",
                session,
                "primary",
            )
            if failed_rows
            else ""
        )
        body += f'<div class="actions">{retry_failed}{purge}</div>'
        return Response("200 OK", self._page(base, f"Queue {name}", body, "queues", message, refresh=True))

    def _purge_page(self, base: str, name: str, session: str) -> Response:
        info = self.queues.queue(name, self._queue_yaml)
        if info is None:
            return Response("404 Not Found", self._page(base, f"Queue {name}", "<p>There is no such queue.</p>"))
        action = f"{base}/queues/{path_part(name)}/purge"
        body = (
            f'<p class="confirm">Purge queue <strong>{esc(name)}</strong>? Its {info.waiting} waiting '
            f"task{'s' if info.waiting != 1 else ''} will be deleted and never run.</p>"
            '<div class="actions">'
            + self._button(action, "Purge", session, "danger", confirm="yes")
            + f' <a class="cancel" href="{esc(base)}/queues/{esc(path_part(name))}">Cancel</a></div>'
        )
        return Response("200 OK", self._page(base, f"Purge queue {name}?", body, "queues"))

    def _task_page(self, base: str, queue: str, name: str, session: str, message: str) -> Response:
        row = self.queues.task(queue, name)
        last = self.runs.last(name)
        runs = [r for r in self.runs.recent() if r.task_name == name]
        back = f'<p><a href="{esc(base)}/queues/{esc(path_part(queue))}">← queue {esc(queue)}</a></p>'
        history = self._runs_table(base, runs, "This task has not run yet.")
        if row is None:
            if runs:
                gone = (
                    "This task ran to completion: it is no longer queued."
                    if runs[0].ok
                    else "This task is no longer queued: it was deleted, or dropped after its last retry."
                )
                body = back + f"<p>{gone}</p><h2>Runs</h2>" + history
            else:
                body = back + (
                    f"<p>No task named <code>{esc(name)}</code> is queued in {esc(queue)}, and none has run "
                    "in the runs this console keeps: it was deleted before it ran, or never was.</p>"
                )
            return Response("404 Not Found", self._page(base, f"Task {name}", body, "queues", message))
        call = decode.decode(row.url, row.body)
        failed = (last is not None and not last.ok) or row.retry_count > 0
        facts = [
            ("Queue", f'<a href="{esc(base)}/queues/{esc(path_part(queue))}">{esc(queue)}</a>'),
            ("URL", f"<code>{esc(row.method)} {esc(row.url)}</code>"),
            ("ETA", RUNNING if name in self.runs.running_names(queue) else when(row.eta)),
            ("Added", when(row.created)),
            ("Retries", f'<span class="retries">{row.retry_count}</span>'),
            ("Runs so far", str(row.execution_count)),
            (
                "Last answer",
                (status_badge(last.status) + f" <small>{esc(duration(last.duration))}</small>")
                if last
                else "not run yet",
            ),
            ("Error line", f'<span class="error">{esc(last.error)}</span>' if last and last.error else "—"),
        ]
        if row.tag:
            facts.append(("Tag", esc(row.tag)))
        if row.deadline_seconds:
            facts.append(("Deadline", esc(f"{row.deadline_seconds:g} s")))
        call_rows = [("Function", f"<code>{esc(call.function)}</code>")]
        if call.problem:
            call_rows.append(("Arguments", f'<span class="error">{esc(call.problem)}</span>'))
        else:
            call_rows.append(("Arguments", f'<pre class="call">{esc(call.arguments)}</pre>'))
        call_rows.append(
            (
                "Payload",
                esc(
                    f"{len(row.body)} bytes, {'signed' if call.signed else 'unsigned'}"
                    f"{', spilled to Datastore' if call.spilled else ''}"
                ),
            )
        )
        body = (
            back
            + _facts(facts)
            + f'<div class="actions">{self._task_actions(base, row, session, failed)}</div>'
            + "<h2>Call</h2>"
            + _facts(call_rows)
            + "<h2>Headers</h2>"
            + table(
                ["Name", "Value"],
                [[esc(k), f"<code>{esc(v)}</code>"] for k, v in row.headers],
                "No headers.",
                "headers",
            )
            + "<h2>Runs</h2>"
            + history
        )
        return Response("200 OK", self._page(base, f"Task {name}", body, "queues", message))

    def _runs_table(self, base: str, runs: list[Any], empty: str) -> str:
        rows = []
        for run in runs:
            task_link = (
                _task_link(base, run.queue, run.task_name) if run.queue and run.task_name else esc(run.task_name)
            )
            if run.ok:
                outcome = "done"
            elif run.error:
                outcome = f'<span class="error">{esc(run.error)}</span>'
            else:
                outcome = '<span class="error">failed: the queue retries it</span>'
            rows.append(
                [
                    when(started_at(run)),
                    esc(run.queue),
                    task_link,
                    f"<code>{esc(decode.function_of(run.url))}</code>",
                    status_badge(run.status),
                    esc(duration(run.duration)),
                    outcome,
                ]
            )
        return table(["Time", "Queue", "Task", "Function", "Status", "Duration", "Outcome"], rows, empty, "runs")

    def _runs_page(self, base: str, query: dict[str, str]) -> Response:
        """Recent runs, filtered by function, queue and status; taskutils' own steps only when asked."""
        runs = self.runs.recent()
        internal = query.get("internal") == "1"
        function, queue, status = query.get("function", ""), query.get("queue", ""), query.get("status", "")
        if not internal:
            runs = [r for r in runs if not handles.is_internal(r.url)]
        functions = sorted({decode.function_of(r.url) for r in runs})
        queue_names = sorted({r.queue for r in runs})
        shown = [
            r
            for r in runs
            if (not function or decode.function_of(r.url) == function)
            and (not queue or r.queue == queue)
            and (not status or (r.ok and not r.error) == (status == "ok"))
        ]

        def select(name: str, label: str, options: list[tuple[str, str]], chosen: str) -> str:
            items = "".join(
                f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(text)}</option>'
                for v, text in options
            )
            return f'<label>{esc(label)} <select name="{esc(name)}">{items}</select></label> '

        form = (
            f'<form method="get" action="{esc(base)}/runs" class="filters">'
            + select("function", "Function", [("", "any function")] + [(f, f) for f in functions], function)
            + select("queue", "Queue", [("", "any queue")] + [(q, q) for q in queue_names], queue)
            + select("status", "Status", list(STATUSES.items()), status)
            + '<label><input type="checkbox" name="internal" value="1"'
            + (" checked" if internal else "")
            + "> taskutils' internal steps</label> "
            + '<button type="submit">Filter</button></form>'
        )
        body = form + self._runs_table(base, shown, "No run matches." if runs else "No task has run yet.")
        return Response("200 OK", self._page(base, "Recent runs", body, "runs", refresh=True))

    def _handle_page(self, base: str, handle_id: str) -> Response:
        def link(kind: str, ident: str) -> str:
            return f"{base}/handles/{path_part(ident)}" if kind == "group" else f"{base}/handles/run/{path_part(ident)}"

        found, body = handles.handle_detail(handle_id, link, lambda hid: self._task_of_handle(base, hid))
        back = f'<p><a href="{esc(base)}/handles">← handles and groups</a></p>'
        return Response(
            "200 OK" if found else "404 Not Found",
            self._page(base, f"Handle {handle_id}", back + body, "handles", refresh=True),
        )

    def _task_of_handle(self, base: str, handle_id: str) -> str | None:
        """A link to the queued task that runs handle_id, if one is queued here."""
        for info in self.queues.queues(self._queue_yaml):
            for row in self.queues.tasks(info.name):
                if any(k.lower() == "x-taskutils-handle" and v == handle_id for k, v in row.headers):
                    return _task_link(base, info.name, row.name)
        return None

    def _handles_page(self, base: str) -> Response:
        body = handles.listing(base + "/handles/", base + "/handles/run/")
        return Response("200 OK", self._page(base, "Handles and groups", body, "handles", refresh=True))

    def _group_page(self, base: str, group_id: str) -> Response:
        found, body = handles.group_detail(group_id, base + "/handles/run/")
        status = "200 OK" if found else "404 Not Found"
        back = f'<p><a href="{esc(base)}/handles">← handles and groups</a></p>'
        return Response(status, self._page(base, f"Group {group_id}", back + body, "handles", refresh=True))


RUNNING = '<span class="running">running now</span>'


def _task_link(base: str, queue: str, name: str) -> str:
    href = f"{base}/queues/{path_part(queue)}/tasks/{path_part(name)}"
    return f'<a href="{esc(href)}">{esc(name)}</a>'


def _facts(pairs: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def mount_console(server: Any, app: WSGIApp) -> WSGIApp:
    """app, with ``/_ah/taskutils/`` answered by the console of server."""
    console = LocalConsole(server)

    def routed(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == PREFIX or path.startswith(PREFIX + "/"):
            return console(environ, start_response)
        return app(environ, start_response)

    routed.__wrapped__ = app  # type: ignore[attr-defined]
    routed.console = console  # type: ignore[attr-defined]
    return routed
