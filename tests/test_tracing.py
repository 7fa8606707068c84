"""Traces: a task joins the trace of the request (or task) that added it, through maps, groups and callbacks."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import flask
import pytest
import webapp2
import webtest
from google.appengine.api import wrap_wsgi_app

import taskutils
from taskutils import hooks, task
from taskutils.tracing import current_trace, parse_cloud_trace, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"
PROJECT = "trace-project"

seen: list[dict[str, Any]] = []  # what each task saw: its request's headers, its current trace
log = logging.getLogger("tracetest.tasks")


def _record(kind: str, headers: Any = None) -> None:
    trace = current_trace()
    seen.append(
        {
            "kind": kind,
            "traceparent": None if headers is None else headers.get("traceparent"),
            "trace": trace,
        }
    )
    log.info("%s ran", kind)


@task(includeheaders=True)
def child(n: int, headers: Any = None) -> int:
    _record("child", headers)
    return n * 10


@task(includeheaders=True)
def collect(results: list[int], headers: Any = None) -> None:
    _record("callback", headers)


@task(includeheaders=True)
def leaf(n: int, headers: Any = None) -> None:
    _record("leaf", headers)


@task(includeheaders=True)
def parent(headers: Any = None) -> None:
    _record("parent", headers)
    leaf(1)


@task(headers={"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"})
def with_its_own_traceparent(headers: Any = None) -> None:
    pass


@task
def fails() -> None:
    raise ValueError("fails")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Lines the tasks log, as the Cloud Logging formatter writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(taskutils.CloudLoggingFormatter(project=PROJECT))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    seen.clear()
    yield stream
    log.removeHandler(handler)


@pytest.fixture
def started() -> Iterator[list[hooks.TaskEvent]]:
    """Every run's on_start event."""
    events: list[hooks.TaskEvent] = []
    hooks.on_start.connect(events.append)
    yield events
    hooks.on_start.disconnect(events.append)


def flask_app() -> Any:
    app = flask.Flask(__name__)

    @app.post("/fan-out")
    def fan_out() -> str:
        group = child.submit_map([1, 2, 3])
        group.then(collect)
        return group.id

    @app.post("/plain")
    def plain() -> str:
        parent()
        return "ok"

    @app.post("/map")
    def mapped() -> str:
        leaf.map([1, 2])
        return "ok"

    app.wsgi_app = taskutils.mount(app.wsgi_app)  # type: ignore[method-assign]
    return app


def test_a_task_added_in_a_traced_request_runs_in_its_trace_through_submit_map_and_its_callback(
    task_testbed, json_lines, started
):
    client = webtest.TestApp(flask_app())
    group_id = client.post("/fan-out", headers={"traceparent": TRACEPARENT}).text
    task_testbed.drain()

    assert taskutils.GroupHandle.get(group_id).results() == [10, 20, 30]
    assert sorted(s["kind"] for s in seen) == ["callback", "child", "child", "child"]
    for run in seen:  # the task's own request carries the trace, and the run joins it
        assert run["traceparent"].split("-")[1] == TRACE
        assert run["trace"].trace_id == TRACE
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert len(lines) == 4
    assert {line["logging.googleapis.com/trace"] for line in lines} == {f"projects/{PROJECT}/traces/{TRACE}"}
    # every run in the chain joined it: the children, taskutils' fan-in steps and the callback
    functions = [event.function for event in started]
    assert any("complete_node" in f for f in functions)
    assert len(started) >= 5
    assert {event.trace_id for event in started} == {TRACE}


def test_app_engines_cloud_trace_header_travels_through_a_map_in_a_webapp2_app(task_testbed):
    class Start(webapp2.RequestHandler):
        def post(self) -> None:
            leaf.map([1, 2])

    client = webtest.TestApp(taskutils.mount(webapp2.WSGIApplication([("/start", Start)])))
    seen.clear()
    client.post("/start", headers={"X-Cloud-Trace-Context": f"{TRACE}/12345;o=1"})
    task_testbed.drain()

    assert len(seen) == 2
    assert {s["trace"] for s in seen} == {parse_cloud_trace(f"{TRACE}/12345;o=1")}
    assert seen[0]["trace"].span_id == f"{12345:016x}" and seen[0]["trace"].sampled


def test_a_task_added_by_a_running_task_carries_that_tasks_trace(task_testbed):
    seen.clear()
    webtest.TestApp(flask_app()).post("/plain", headers={"traceparent": TRACEPARENT})
    task_testbed.drain()

    assert [s["kind"] for s in seen] == ["parent", "leaf"]
    assert seen[1]["traceparent"].split("-")[1] == TRACE
    assert seen[1]["trace"].trace_id == TRACE


def test_a_request_behind_wrap_wsgi_app_is_traced_without_mount(task_testbed):
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        leaf(1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    seen.clear()
    webtest.TestApp(wrap_wsgi_app(app)).get("/", headers={"X-Cloud-Trace-Context": f"{TRACE}/7;o=0"})
    task_testbed.drain()

    assert seen[0]["trace"].trace_id == TRACE
    assert not seen[0]["trace"].sampled


def test_a_request_without_a_trace_adds_tasks_without_trace_headers(task_testbed):
    webtest.TestApp(flask_app()).post("/map")
    [first, second] = task_testbed.tasks("default")
    assert "traceparent" not in {name.lower() for name in first.headers}
    assert "x-taskutils-trace" not in {name.lower() for name in second.headers}


def test_a_malformed_trace_header_is_ignored_and_the_task_still_runs(task_testbed):
    seen.clear()
    webtest.TestApp(flask_app()).post("/map", headers={"traceparent": "00-not-a-trace-01\n"})
    task_testbed.drain()
    assert [s["trace"] for s in seen] == [None, None]


def test_a_traceparent_header_given_as_a_task_option_is_kept(task_testbed):
    webtest.TestApp(taskutils.mount(_calls(with_its_own_traceparent))).get("/", headers={"traceparent": TRACEPARENT})
    [added] = task_testbed.tasks("default")
    assert added.headers["traceparent"] == f"00-{'1' * 32}-{'2' * 16}-01"


def _calls(function: Any) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        function()
        start_response("200 OK", [])
        return [b""]

    return app


def test_trace_headers_parse_as_w3c_and_app_engine_define_them():
    assert parse_traceparent(TRACEPARENT) == taskutils.tracing.Trace(TRACE, SPAN, True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00").sampled is False
    assert parse_traceparent(f"00-{'0' * 32}-{SPAN}-01") is None
    assert parse_traceparent(f"ff-{TRACE}-{SPAN}-01") is None
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-01-extra") is None  # version 00 has exactly four parts
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-future") is not None  # a later version may add parts
    assert parse_cloud_trace(f"{TRACE.upper()}/1;o=1") == taskutils.tracing.Trace(TRACE, f"{1:016x}", True)
    assert parse_cloud_trace(f"{TRACE}/{1 << 64}") is None
    no_span = parse_cloud_trace(TRACE)
    assert no_span is not None and no_span.trace_id == TRACE and int(no_span.span_id, 16) != 0


def test_through_serve_a_fan_out_and_its_callback_run_in_the_trace_of_the_request_that_started_them(tmp_path):
    from apps.serving import ServeProcess

    proc = ServeProcess("trace_app:app", tmp_path / "serve.log")
    try:
        proc.wait_ready("/seen")
        status, _ = proc.request("POST", "/fan-out?key=k1", headers={"traceparent": TRACEPARENT})
        assert status == 200

        def four_runs() -> list[dict[str, Any]] | None:
            seen = proc.get("/seen?key=k1")  # a run and its log line each
            return seen if len(seen) == 8 else None

        seen = proc.wait_for(four_runs, "the children and the callback to run")
    finally:
        proc.stop()

    runs = [s for s in seen if "kind" in s]
    assert sorted(r["kind"] for r in runs) == ["callback", "child", "child", "child"]
    assert {r["traceparent"].split("-")[1] for r in runs} == {TRACE}  # in each task's own request
    assert {s["log_trace"] for s in seen if "log_trace" in s} == {f"projects/serve-project/traces/{TRACE}"}


# -- OpenTelemetry ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spans() -> Iterator[Any]:
    """An OpenTelemetry SDK tracer provider that keeps finished spans in memory."""
    from opentelemetry import trace as otel
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.util._once import Once

    provider = TracerProvider()
    otel.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    provider.shutdown()
    # OpenTelemetry's global provider is set once per process: unset it (as its own test utilities do),
    # so that the tests after these run as in an app that imported OpenTelemetry without its SDK.
    otel._TRACER_PROVIDER = None
    otel._TRACER_PROVIDER_SET_ONCE = Once()


def test_with_opentelemetry_a_task_is_a_child_span_in_the_enqueuing_requests_trace(
    task_testbed, spans, json_lines, task_log
):
    spans.clear()
    webtest.TestApp(flask_app()).post("/plain", headers={"traceparent": TRACEPARENT})
    task_testbed.drain()

    finished = {span.name: span for span in spans.get_finished_spans()}
    parent_span, leaf_span = finished["task test_tracing/parent"], finished["task test_tracing/leaf"]
    assert f"{parent_span.context.trace_id:032x}" == TRACE
    assert f"{parent_span.parent.span_id:016x}" == SPAN
    assert leaf_span.context.trace_id == parent_span.context.trace_id
    assert leaf_span.parent.span_id == parent_span.context.span_id  # the task added inside is its child
    assert parent_span.attributes["messaging.destination.name"] == "default"
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert lines[0]["logging.googleapis.com/spanId"] == f"{parent_span.context.span_id:016x}"
    assert lines[1]["logging.googleapis.com/spanId"] == f"{leaf_span.context.span_id:016x}"
    [outcome] = [r for r in task_log.records if r.getMessage().startswith("task /_ah/task/test_tracing/parent ")]
    assert outcome.taskutils_span_id == f"{parent_span.context.span_id:016x}"  # the handler's line on the run


def test_with_opentelemetry_a_failing_task_records_its_exception_on_its_span(task_testbed, spans):
    spans.clear()
    fails()
    with pytest.raises(ValueError):
        task_testbed.drain()
    [span] = [s for s in spans.get_finished_spans() if s.name.endswith("fails")]
    assert span.status.status_code.name == "ERROR"
    assert any(event.name == "exception" for event in span.events)
