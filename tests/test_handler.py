import io
import logging

import flask
import pytest
import webapp2
import webtest

import taskutils
from taskutils import task
from taskutils.handler import MAX_BODY

import tasklib

TASK_HEADERS = {"X-AppEngine-TaskName": "t1", "X-AppEngine-QueueName": "default", "X-AppEngine-TaskRetryCount": "0"}


@pytest.fixture
def client(task_testbed):
    return webtest.TestApp(taskutils.app)


def payload_of(task_function, *args, **kwargs):
    """The URL and body a task function would enqueue, without enqueuing it."""
    built = task_function._build(args, kwargs)
    return built.url, built.payload


class Unreadable(io.RawIOBase):
    """A request body that fails the test if the handler reads it."""

    def read(self, *args):
        raise AssertionError("the body was read")


def call_raw(environ_overrides, drop=()):
    """Call the handler with a body that must not be read; return the status line and headers."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/_ah/task/tasklib/record",
        "CONTENT_LENGTH": "10",
        "wsgi.input": Unreadable(),
        "HTTP_X_APPENGINE_TASKNAME": "t1",
        "HTTP_X_APPENGINE_QUEUENAME": "default",
    }
    environ.update(environ_overrides)
    for name in drop:
        del environ[name]
    statuses = []
    taskutils.app(environ, lambda status, headers, exc_info=None: statuses.append((status, dict(headers))))
    return statuses[0]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_anything_but_post_gets_405_with_allow_post(client, method):
    response = client.request("/_ah/task/tasklib/record", method=method, expect_errors=True)

    assert response.status_int == 405
    assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize("missing", ["HTTP_X_APPENGINE_TASKNAME", "HTTP_X_APPENGINE_QUEUENAME"])
def test_a_request_without_the_task_headers_gets_403_and_its_body_is_not_read(task_testbed, missing):
    status, _ = call_raw({}, drop=[missing])

    assert status.startswith("403")


def test_in_production_only_the_queue_source_address_is_let_in(client, monkeypatch):
    url, body = payload_of(tasklib.record, "prod")
    monkeypatch.setenv("GAE_ENV", "standard")

    outsider = client.post(
        url, body, headers=TASK_HEADERS, extra_environ={"REMOTE_ADDR": "10.0.0.7"}, expect_errors=True
    )
    queue = client.post(url, body, headers=TASK_HEADERS, extra_environ={"REMOTE_ADDR": "0.1.0.2"})

    assert outsider.status_int == 403
    assert queue.status_int == 200
    assert tasklib.ran == [(("prod",), {})]


@pytest.mark.parametrize(
    "length, status",
    [
        (str(MAX_BODY + 1), "413"),
        ("", "400"),
        ("ten", "400"),
        ("-5", "400"),
        ("²", "400"),
        ("１", "400"),
        ("9" * 5000, "400"),
        ("0" * 5000 + "1", "400"),
    ],
    ids=["over-1-MiB", "empty", "words", "negative", "superscript", "fullwidth", "5000-digits", "5000-zeros"],
)
def test_body_length_is_checked_before_the_body_is_read(task_testbed, length, status):
    answer, _ = call_raw({"CONTENT_LENGTH": length})
    assert answer.startswith(status)


def test_a_task_that_succeeds_gets_200_and_one_log_line_without_the_body(client, task_log):
    url, body = payload_of(tasklib.record, "s3cret-argument")

    response = client.post(url, body, headers=TASK_HEADERS)

    assert response.status_int == 200
    assert tasklib.ran == [(("s3cret-argument",), {})]
    (line,) = [r for r in task_log.records if r.name == "taskutils.handler"]
    message = line.getMessage()
    assert "/_ah/task/tasklib/record" in message and "name=t1" in message and "queue=default" in message
    assert "retry=0" in message and "200" in message
    assert "s3cret" not in message


@pytest.mark.parametrize("failing", [tasklib.fail_permanently, tasklib.fail_deferred_permanently])
def test_a_permanent_failure_is_answered_2xx_so_the_queue_drops_it(client, task_log, failing):
    url, body = payload_of(failing)

    response = client.post(url, body, headers=TASK_HEADERS)

    assert 200 <= response.status_int < 300
    errors = [r for r in task_log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "permanent" in errors[0].getMessage()


@pytest.mark.parametrize("failing", [tasklib.ask_for_retry, tasklib.ask_for_retry_deferred])
def test_a_requested_retry_is_answered_non_2xx_without_a_traceback(client, task_log, failing):
    url, body = payload_of(failing)

    response = client.post(url, body, headers=TASK_HEADERS, expect_errors=True)

    assert not 200 <= response.status_int < 300
    assert response.status_int not in (429, 503), "503 and 429 throttle the whole queue on Cloud Tasks"
    assert response.headers["X-Taskutils-Error"].split(":")[0] in ("RetryTaskException", "SingularTaskFailure")
    assert all(r.exc_info is None for r in task_log.records)
    assert all(r.levelno < logging.ERROR for r in task_log.records)


def test_any_other_exception_is_answered_500_with_the_traceback_logged(client, task_log):
    url, body = payload_of(tasklib.crash)

    response = client.post(url, body, headers=TASK_HEADERS, expect_errors=True)

    assert response.status_int == 500
    (line,) = [r for r in task_log.records if r.name == "taskutils.handler"]
    assert line.levelno == logging.ERROR and line.exc_info[0] is ValueError
    assert "boom" not in response.text
    assert response.headers["X-Taskutils-Error"] == "ValueError: boom"


def test_the_error_line_of_an_answer_is_one_escaped_ascii_line_of_at_most_200_characters(client):
    @task
    def shout():
        raise RuntimeError("first line\r\nX-Forged: yes\x00 café " + "long " * 100)

    url, body = payload_of(shout)

    response = client.post(url, body, headers=TASK_HEADERS, expect_errors=True)

    line = response.headers["X-Taskutils-Error"]
    assert response.status_int == 500
    assert line.startswith("RuntimeError: first line\\x0d\\x0aX-Forged: yes\\x00 caf\\xe9 long")
    assert len(line) <= 200 and line.isascii() and line.isprintable()
    assert "X-Forged" not in response.headers


class Abandon(BaseException):
    """Not an Exception: a task can still raise it."""


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), Abandon("gave up")])
def test_a_task_raising_a_base_exception_answers_500_with_its_traceback_and_the_server_carries_on(
    client, task_log, error
):
    @task
    def bail_out():
        raise error

    url, body = payload_of(bail_out)

    response = client.post(url, body, headers=TASK_HEADERS, expect_errors=True)

    assert response.status_int == 500
    assert response.headers["X-Taskutils-Error"].startswith(type(error).__name__)
    (line,) = [r for r in task_log.records if r.name == "taskutils.handler"]
    assert line.levelno == logging.ERROR and line.exc_info[0] is type(error)
    assert client.post(*payload_of(tasklib.record, "after"), headers=TASK_HEADERS).status_int == 200


def test_answers_that_are_not_the_tasks_failure_carry_no_error_line(client):
    url, body = payload_of(tasklib.record, "fine")

    assert "X-Taskutils-Error" not in client.post(url, body, headers=TASK_HEADERS).headers
    refused = client.post(url, body, headers={"X-AppEngine-QueueName": "default"}, expect_errors=True)
    assert refused.status_int == 403 and "X-Taskutils-Error" not in refused.headers


FORGED = "\n2026-01-01 INFO taskutils.handler forged line\r\x1b[2J\u2028"


@pytest.mark.parametrize(
    "overrides",
    [
        {"REQUEST_METHOD": "GET" + FORGED, "PATH_INFO": "/_ah/task/x" + FORGED},
        {"PATH_INFO": "/_ah/task/x" + FORGED, "HTTP_X_APPENGINE_TASKNAME": None},
        {"PATH_INFO": "/_ah/task/x" + FORGED, "CONTENT_LENGTH": "1" + FORGED},
        {"PATH_INFO": "/_ah/task/tasklib" + FORGED + "/record" + FORGED},
        {"HTTP_X_APPENGINE_TASKNAME": "t" + FORGED, "HTTP_X_APPENGINE_QUEUENAME": "q" + FORGED},
    ],
    ids=["method", "no-headers", "length", "path", "names"],
)
def test_nothing_a_request_sends_reaches_a_log_line_raw(task_testbed, task_log, overrides):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/_ah/task/tasklib/nowhere",
        "CONTENT_LENGTH": "3",
        "wsgi.input": io.BytesIO(b"\x99no"),
        "HTTP_X_APPENGINE_TASKNAME": "t1",
        "HTTP_X_APPENGINE_QUEUENAME": "default",
        "HTTP_X_APPENGINE_TASKRETRYCOUNT": "0",
    }
    environ.update(overrides)
    environ = {k: v for k, v in environ.items() if v is not None}

    taskutils.app(environ, lambda status, headers, exc_info=None: None)

    messages = [r.getMessage() for r in task_log.records if r.name.startswith("taskutils")]
    assert messages
    for message in messages:
        assert message.isprintable(), message
    assert any("\\x0a2026-01-01" in m for m in messages)


def test_a_task_whose_code_is_gone_is_retried_and_logged_naming_it(client, task_log, monkeypatch):
    url, body = payload_of(tasklib.record, 1)
    monkeypatch.delattr(tasklib, "record")

    response = client.post(url, body, headers=TASK_HEADERS, expect_errors=True)

    assert not 200 <= response.status_int < 300
    assert response.status_int not in (429, 503), "503 and 429 throttle the whole queue on Cloud Tasks"
    assert response.headers["X-Taskutils-Error"].startswith("MissingTaskCodeError: ")
    (line,) = [r for r in task_log.records if r.levelno == logging.ERROR]
    assert "tasklib" in line.getMessage() and "record" in line.getMessage()


def test_a_nested_task_whose_module_is_gone_is_retried(client, task_log, monkeypatch):
    import sys
    import types

    module = types.ModuleType("vanishing")
    exec("def work():\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, "vanishing", module)
    url, body = payload_of(task(module.work))
    monkeypatch.delitem(sys.modules, "vanishing")

    response = client.post(url, body, headers=TASK_HEADERS, expect_errors=True)

    assert not 200 <= response.status_int < 300 and response.status_int not in (429, 503)
    assert "vanishing" in task_log.text


@pytest.mark.parametrize("body", [b"\x10not a pickle", b"\x14\x80\x05garbage", b"\x99junk"])
def test_a_corrupt_payload_is_dropped_with_an_error(client, task_log, body):
    response = client.post("/_ah/task/tasklib/record", body, headers=TASK_HEADERS)

    assert 200 <= response.status_int < 300
    assert tasklib.ran == []
    assert any(r.levelno == logging.ERROR for r in task_log.records)


def test_paths_outside_the_route_are_not_found(client):
    assert client.post("/elsewhere", b"x", headers=TASK_HEADERS, expect_errors=True).status_int == 404


def test_the_handler_follows_the_route(client):
    taskutils.set_taskroute("/jobs")
    url, body = payload_of(tasklib.record, "moved")

    assert client.post(url, body, headers=TASK_HEADERS).status_int == 200
    assert client.post("/_ah/task/tasklib/record", body, headers=TASK_HEADERS, expect_errors=True).status_int == 404


def plain_wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain app"]


class Home(webapp2.RequestHandler):
    def get(self):
        self.response.write("webapp2 app")


def flask_app():
    app = flask.Flask(__name__)

    @app.route("/")
    def home():
        return "flask app"

    @app.route("/enqueue/<int:n>")
    def enqueue(n):
        tasklib.record(n)
        return "queued"

    return app


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda: plain_wsgi, "plain app"),
        (lambda: webapp2.WSGIApplication([("/", Home)]), "webapp2 app"),
        (lambda: flask_app().wsgi_app, "flask app"),
    ],
)
def test_mount_sends_task_urls_to_the_handler_and_the_rest_to_the_app(task_testbed, make, text):
    client = webtest.TestApp(taskutils.mount(make()))
    url, body = payload_of(tasklib.record, "mounted")

    assert client.get("/").text == text
    assert client.post(url, body, headers=TASK_HEADERS).status_int == 200
    assert tasklib.ran == [(("mounted",), {})]


def test_a_flask_view_enqueues_and_the_drain_runs_it_through_the_mounted_handler(task_testbed):
    app = flask_app()
    app.wsgi_app = taskutils.mount(app.wsgi_app)

    assert app.test_client().get("/enqueue/7").data == b"queued"
    assert task_testbed.drain() == 1
    assert tasklib.ran == [((7,), {})]


async def async_record(x):
    import asyncio

    await asyncio.sleep(0)
    tasklib.ran.append(("async", x))


def test_an_async_task_runs_to_completion_even_where_an_event_loop_is_running(client):
    import asyncio

    url, body = payload_of(task(async_record), 1)

    async def serve_from_a_loop():
        return client.post(url, body, headers=TASK_HEADERS)

    assert asyncio.run(serve_from_a_loop()).status_int == 200
    assert client.post(*payload_of(task(async_record), 2), headers=TASK_HEADERS).status_int == 200
    assert tasklib.ran == [("async", 1), ("async", 2)]


def test_an_async_task_that_raises_answers_500_with_its_error_line(client):
    async def broken():
        raise LookupError("async boom")

    response = client.post(*payload_of(task(broken)), headers=TASK_HEADERS, expect_errors=True)

    assert response.status_int == 500
    assert response.headers["X-Taskutils-Error"] == "LookupError: async boom"
