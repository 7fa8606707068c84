import datetime
import pickle
import time

import pytest
from google.appengine.api import taskqueue
from google.appengine.ext import deferred, ndb

import taskutils
from taskutils import codec, task

import seed_examples
import tasklib


def test_calling_a_task_function_enqueues_one_task_and_does_not_run_it(task_testbed):
    added = tasklib.record(1, b=2)

    assert isinstance(added, taskqueue.Task) and added.was_enqueued
    assert tasklib.ran == []
    assert [t.name for t in task_testbed.tasks("default")] == [added.name]
    task_testbed.drain()
    assert tasklib.ran == [((1,), {"b": 2})]


def test_a_module_level_task_is_posted_to_route_module_function(task_testbed):
    added = tasklib.record()

    assert added.url == "/_ah/task/tasklib/record"
    assert tasklib.record.url == "/_ah/task/tasklib/record"


def test_decorator_options_reach_the_added_task(task_testbed):
    before = datetime.datetime.now(datetime.timezone.utc)
    added = tasklib.report("monday")

    assert added.queue_name == "reports"
    assert added.eta >= before + datetime.timedelta(seconds=29)
    assert added.headers["X-Team"] == "reports"
    assert task_testbed.tasks("default") == []
    assert len(task_testbed.tasks("reports")) == 1


def test_task_options_are_passed_through_to_the_queue(task_testbed):
    eta = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=10)
    retry = taskqueue.TaskRetryOptions(task_retry_limit=3, min_backoff_seconds=2)
    fn = task(
        tasklib.plain,
        queue="q1",
        eta=eta,
        name="the-one",
        target="worker",
        retry_options=retry,
        tag="nightly",
        dispatch_deadline_usec=60_000_000,
    )

    added = fn(1)

    assert (added.queue_name, added.name, added.eta, added.target) == ("q1", "the-one", eta, "worker")
    assert added.retry_options is retry
    assert added.headers["X-Taskutils-Tag"] == "nightly"
    with pytest.raises(taskqueue.TaskAlreadyExistsError):
        fn(2)


def test_the_bare_the_called_and_the_factory_forms_all_work(task_testbed):
    @task
    def bare(x):
        tasklib.ran.append(("bare", x))

    @task(queue="q2")
    def called(x):
        tasklib.ran.append(("called", x))

    bare(1)
    called(2)
    task(tasklib.plain, queue="q3")(3, b=4)

    assert [len(task_testbed.tasks(q)) for q in ("default", "q2", "q3")] == [1, 1, 1]
    task_testbed.drain()
    assert sorted(tasklib.ran, key=str) == sorted([("bare", 1), ("called", 2), ("plain", 3, 4)], key=str)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"queeu": "x"}, "unknown task option"),
        ({"countdown": 5, "eta": datetime.datetime(2030, 1, 1)}, "contradict"),
        ({"countdown": "5"}, "countdown"),
        ({"countdown": -1, "eta": datetime.datetime(2030, 1, 1)}, "contradict"),
        ({"transactional": True, "name": "n"}, "transactional task cannot be named"),
        ({"headers": ["X-A"]}, "headers"),
        ({"retry_options": {"task_retry_limit": 1}}, "TaskRetryOptions"),
        ({"parent": ndb.Key("A", 1)}, "transactional=True"),
        ({"logname": "has space"}, "logname"),
        ({"includeheaders": "yes"}, "includeheaders"),
    ],
)
def test_a_bad_option_raises_type_error_when_decorating(options, message):
    with pytest.raises(TypeError, match=message):
        task(**options)
    with pytest.raises(TypeError, match=message):
        task(tasklib.plain, **options)
    with pytest.raises(TypeError, match=message):
        tasklib.record.options(**options)


def test_user_headers_are_merged_with_the_library_headers_and_reach_the_task(task_testbed):
    fn = task(tasklib.plain, headers={"X-Request-Id": "abc", "X-Other": "1"})
    added = fn.options(headers={"X-Other": "2"})(1)

    assert added.headers["X-Request-Id"] == "abc"
    assert added.headers["X-Other"] == "2"
    assert added.headers["Content-Type"] == "application/octet-stream"

    @task(includeheaders=True, headers={"X-Request-Id": "abc"})
    def look(headers):
        tasklib.ran.append(headers["X-Request-Id"])

    look()
    task_testbed.drain()
    assert sorted(map(str, tasklib.ran)) == ["('plain', 1, 0)", "abc"]


def test_options_makes_a_new_task_function_for_one_call_or_many(task_testbed):
    later = tasklib.record.options(queue="q4", countdown=60)

    later(1)
    tasklib.record(2)

    assert len(task_testbed.tasks("q4")) == 1
    assert len(task_testbed.tasks("default")) == 1
    assert later.task_options == {"queue": "q4", "countdown": 60}
    assert tasklib.record.task_options == {}


def test_merged_options_that_contradict_raise_type_error():
    with pytest.raises(TypeError, match="transactional task cannot be named"):
        task(tasklib.plain, transactional=True).options(name="x")
    with pytest.raises(TypeError, match="transactional task cannot be named"):
        task(task(tasklib.plain, name="x"), transactional=True)


def test_options_can_swap_countdown_for_eta():
    eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
    swapped = tasklib.report.options(eta=eta)
    assert "countdown" not in swapped.task_options and swapped.task_options["eta"] == eta


def test_rewrapping_a_task_function_merges_options_and_never_enqueues_a_task(task_testbed):
    again = task(tasklib.report, queue="q5")

    assert again.__wrapped__ is tasklib.report.__wrapped__
    assert again.task_options["queue"] == "q5"
    assert again.task_options["countdown"] == 30
    again("tuesday")
    assert task(task(tasklib.record)).__wrapped__ is tasklib.record.__wrapped__
    assert task_testbed.drain() == 1
    assert tasklib.ran == [("report", "tuesday")]


def test_wrapped_runs_the_original_inline(task_testbed):
    tasklib.record.__wrapped__(5)

    assert tasklib.ran == [((5,), {})]
    assert task_testbed.tasks() == []


def test_a_task_function_keeps_the_name_and_docstring_of_what_it_wraps():
    def documented(x):
        """Does x."""

    fn = task(documented)
    assert (fn.__name__, fn.__doc__, fn.__wrapped__) == ("documented", "Does x.", documented)


def test_the_seed_article_examples_run_as_written(task_testbed):
    seed_examples.myfunction()
    seed_examples.myouterfunction(seed_examples.dosomethingwithobject)
    seed_examples.run_nested_example()
    seed_examples.anotherfunction()
    seed_examples.run_factory_example()

    assert len(task_testbed.tasks("myqueue")) == 3
    task_testbed.drain()
    assert sorted(map(str, tasklib.ran)) == sorted(
        map(
            str,
            [
                "myfunction",
                ("object", 1),
                ("object", 2),
                ("object", 3),
                ("nested object", 1),
                ("nested object", 2),
                ("nested object", 3),
                "anotherfunction",
                ("somefunction", 1, 2),
                ("somefunction", 3, 4),
            ],
        )
    )


def test_a_recursive_nested_task_enqueues_itself_until_done(task_testbed):
    seed_examples.count_down_from(3)

    assert task_testbed.drain() == 4
    assert tasklib.ran == [("step", 3), ("step", 2), ("step", 1), ("step", 0)]


def test_closures_and_lambdas_run_as_tasks(task_testbed):
    seed_examples.greet_later("hello")
    seed_examples.run_lambda_example()

    task_testbed.drain()
    assert sorted(map(str, tasklib.ran)) == sorted(map(str, ["hello, world", ("lambda", 7)]))


def test_nested_and_lambda_urls_are_readable_and_url_safe(task_testbed):
    def outer():
        @task
        def inner():
            pass

        return inner

    urls = [
        outer().url,
        task(lambda: None).url,
        task(tasklib.plain, logname="reports/daily").url,
        task(print).url,
    ]

    assert urls == [
        "/_ah/task/test_task/test_nested_and_lambda_urls_are_readable_and_url_safe/outer/inner",
        "/_ah/task/test_task/test_nested_and_lambda_urls_are_readable_and_url_safe/lambda",
        "/_ah/task/reports/daily",
        "/_ah/task/builtins/print",
    ]


def test_a_logname_task_still_runs(task_testbed):
    task(tasklib.plain, logname="nightly")(9)

    task_testbed.drain()
    assert tasklib.ran == [("plain", 9, 0)]


def test_a_module_level_payload_is_no_larger_than_deferreds(task_testbed):
    ours = tasklib.record(42, "account")
    theirs = deferred.defer(tasklib.plain, 42, "account")

    assert len(ours.payload) <= len(theirs.payload)
    assert b"tasklib" not in ours.payload  # named by its URL, not pickled by value or by name


def test_an_unpicklable_argument_raises_at_the_call_site_naming_the_task(task_testbed):
    import threading

    with pytest.raises(taskutils.UnpicklableArgumentError, match=r"tasklib/record: argument 1 \(lock\)"):
        tasklib.record("fine", threading.Lock())
    with pytest.raises(TypeError, match=r"argument 'guard'"):
        tasklib.record(guard=threading.Lock())
    assert task_testbed.tasks() == []


def test_a_rolled_back_transaction_leaves_no_transactional_task(task_testbed):
    class Boom(Exception):
        pass

    def work():
        seed_examples.myserioustransactionaltask()
        raise Boom

    with pytest.raises(Boom):
        ndb.transaction(work)
    assert task_testbed.tasks() == []

    ndb.transaction(seed_examples.myserioustransactionaltask)
    assert task_testbed.drain() == 1
    assert tasklib.ran == ["serious"]


def test_a_transactional_task_outside_a_transaction_is_refused(task_testbed):
    with pytest.raises(taskqueue.BadTransactionStateError):
        seed_examples.myserioustransactionaltask()


def test_includeheaders_passes_a_case_insensitive_mapping_of_the_request_headers(task_testbed):
    tasklib.with_headers(10)
    seed_examples.myfunctionwithheaders(5)

    task_testbed.drain()
    (amount, headers, queue, name), seed = tasklib.ran
    assert (amount, queue, seed) == (10, "default", (5, "0"))
    assert name == headers["x-appengine-taskname"] != ""


def test_current_task_describes_the_running_task_and_is_none_outside(task_testbed):
    assert taskutils.current_task() is None
    added = tasklib.where_am_i()

    task_testbed.drain()
    info = tasklib.ran[0]
    assert (info.task_name, info.queue_name, info.retry_count, info.execution_count) == (added.name, "default", 0, 0)
    assert abs(info.eta.timestamp() - added.eta_posix) < 1
    assert taskutils.current_task() is None


def test_current_task_gives_the_short_queue_name_from_a_cloud_tasks_path(task_testbed):
    tasklib.where_am_i()
    (queued,) = task_testbed.tasks()

    status, _ = task_testbed.post(
        queued,
        HTTP_X_APPENGINE_QUEUENAME="projects/p/locations/us-central1/queues/reports",
        HTTP_X_APPENGINE_TASKRETRYCOUNT="2",
        HTTP_X_APPENGINE_TASKEXECUTIONCOUNT="1",
    )

    assert status == 200
    info = tasklib.ran[0]
    assert (info.queue_name, info.retry_count, info.execution_count) == ("reports", 2, 1)


def test_set_taskroute_changes_the_urls_of_tasks_enqueued_afterwards(task_testbed):
    taskutils.set_taskroute("/work/")
    added = tasklib.record(1)

    assert taskutils.get_taskroute() == "/work"
    assert added.url == "/work/tasklib/record"
    assert task_testbed.drain() == 1
    with pytest.raises(ValueError):
        taskutils.set_taskroute("no-slash")
    with pytest.raises(ValueError):
        taskutils.set_taskroute("/jobs\n")


def test_a_task_function_pickles_by_reference_when_it_is_module_level():
    assert pickle.loads(pickle.dumps(tasklib.record)) is tasklib.record


def test_a_decorated_method_enqueues_with_its_instance(task_testbed):
    Counter(3).bump(2)

    task_testbed.drain()
    assert tasklib.ran == [("bump", 3, 2)]


class Counter:
    def __init__(self, start):
        self.start = start

    @task
    def bump(self, by):
        tasklib.ran.append(("bump", self.start, by))


def test_a_method_keeps_its_instance_through_options_map_submit_and_submit_map(task_testbed):
    counter = Counter(3)

    counter.bump.options(countdown=5)(1)
    counter.bump.map([2, 3])
    handle = counter.bump.submit(4)
    group = counter.bump.submit_map([5])
    [delayed] = [t for t in task_testbed.tasks() if t.eta_posix > time.time() + 2]
    task_testbed.drain()

    assert sorted(tasklib.ran) == [("bump", 3, by) for by in (1, 2, 3, 4, 5)]
    assert handle.status == "succeeded" and group.status == "succeeded"
    assert delayed.url.endswith("/Counter.bump")


def test_a_method_wrapped_again_or_deferred_is_one_task_on_its_instance(task_testbed):
    counter = Counter(7)

    task(counter.bump, countdown=1)(1)
    taskutils.defer(counter.bump, 2, _countdown=1)

    assert len(task_testbed.tasks()) == 2  # one task each, not a task that enqueues the task
    assert task_testbed.drain() == 2
    assert sorted(tasklib.ran) == [("bump", 7, 1), ("bump", 7, 2)]


def test_a_method_called_with_the_wrong_arguments_through_options_fails_at_the_call_site(task_testbed):
    with pytest.raises(TypeError):
        Counter(1).bump.options(queue="default")(1, 2)
    assert task_testbed.tasks() == []


# -- URLs name their callable without ambiguity ------------------------------------------------

URL_SAFE = r"/_ah/task/[A-Za-z0-9_.~/-]+"


@pytest.fixture
def unicode_module(monkeypatch):
    """An importable module whose task functions have names that are not URL-safe ASCII."""
    import sys
    import types

    module = types.ModuleType("módulo")
    source = (
        "from taskutils import task\n"
        "import tasklib\n"
        "@task\n"
        "def café(x):\n    tasklib.ran.append(('café', x))\n"
        "@task\n"
        "def caf_(x):\n    tasklib.ran.append(('caf_', x))\n"
        "@task\n"
        "def naïve(x):\n    tasklib.ran.append(('naïve', x))\n"
        "class Ωmega:\n"
        "    @task\n"
        "    @staticmethod\n"
        "    def ünder(x):\n        tasklib.ran.append(('ünder', x))\n"
    )
    exec(compile(source, "módulo.py", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "módulo", module)
    return module


def test_a_name_that_is_not_url_safe_ascii_runs_its_own_callable(task_testbed, unicode_module):
    import re

    added = [
        unicode_module.café(42),
        unicode_module.caf_(1),
        unicode_module.naïve(7),
        unicode_module.Ωmega.ünder(3),
    ]

    urls = [t.url for t in added]
    assert len(set(urls)) == 4
    assert all(re.fullmatch(URL_SAFE, url) for url in urls), urls
    assert urls[1] == "/_ah/task/m~f3~dulo/caf_"
    assert all(b"caf" not in t.payload for t in added)  # named by URL, not pickled by value
    assert task_testbed.drain() == 4
    assert sorted(tasklib.ran) == sorted([("café", 42), ("caf_", 1), ("naïve", 7), ("ünder", 3)])


def test_two_lambdas_in_one_function_get_two_urls_and_each_runs_its_own():
    def make():
        return task(lambda: tasklib.ran.append("first")), task(lambda: tasklib.ran.append("second"))

    first, second = make()
    again, _ = make()  # the same code: the same URL

    assert first.url.endswith("/make/lambda")
    assert second.url.endswith("/make/lambda-2")
    assert again.url == first.url


def test_two_lambdas_sharing_a_url_prefix_still_run_their_own_bodies(task_testbed):
    def make():
        return task(lambda: tasklib.ran.append("first")), task(lambda: tasklib.ran.append("second"))

    first, second = make()
    second()
    first()

    task_testbed.drain()
    assert tasklib.ran == ["second", "first"]


def test_a_by_url_lookup_never_resolves_to_a_different_callable(task_testbed, monkeypatch):
    old = tasklib.record

    @task
    def record(*args, **kwargs):
        tasklib.ran.append("the new record")

    monkeypatch.setattr(tasklib, "record", record)
    added = old("via the old task function")  # its URL names tasklib.record, now another function

    assert added.url == "/_ah/task/tasklib/record"
    assert not added.payload[0] & codec.BY_URL  # so the payload carries the old callable itself
    assert task_testbed.drain() == 1
    assert "the new record" not in tasklib.ran


def test_partials_bound_methods_and_builtins_are_named_after_what_they_wrap(task_testbed):
    import functools

    partial = task(functools.partial(tasklib.plain, 1))
    bound = task(Counter(5).bump.__wrapped__.__get__(Counter(5)))

    assert partial.url == "/_ah/task/tasklib/plain"
    assert bound.url == "/_ah/task/test_task/Counter.bump"
    assert task(print).url == "/_ah/task/builtins/print"
    assert task([].append).url == "/_ah/task/builtins/list.append"
    partial(b=2)
    task_testbed.drain()
    assert tasklib.ran == [("plain", 1, 2)]


def test_task_over_classmethod_says_to_swap_them():
    with pytest.raises(TypeError, match="@classmethod on top and @task under it"):

        class Jobs:
            @task
            @classmethod
            def run(cls):
                pass


def test_task_over_staticmethod_makes_a_static_task_function(task_testbed):
    class Jobs:
        @task
        @staticmethod
        def run(x):
            tasklib.ran.append(("static", x))

    Jobs.run(1)
    Jobs().run(2)

    task_testbed.drain()
    assert sorted(tasklib.ran) == [("static", 1), ("static", 2)]


def test_repr_names_the_task_and_shows_only_options_it_has():
    assert repr(tasklib.record) == "<task tasklib/record>"
    assert repr(tasklib.record.options(queue="q")) == "<task tasklib/record {'queue': 'q'}>"


# -- arguments are bound at the call site --------------------------------------------------


def keyword_only(a, *, b):
    tasklib.ran.append(("keyword_only", a, b))


def positional_only(a, /, b=0, *rest):
    tasklib.ran.append(("positional_only", a, b, rest))


@pytest.mark.parametrize(
    "func, args, kwargs, message",
    [
        (keyword_only, (4,), {}, "missing a required (keyword-only )?argument: 'b'"),
        (keyword_only, (4, 5), {}, "too many positional arguments"),
        (keyword_only, (4,), {"b": 1, "c": 2}, "unexpected keyword argument 'c'"),
        (positional_only, (), {"a": 1}, "positional"),
        (tasklib.plain, (1, 2, 3), {}, "too many positional arguments"),
        (tasklib.plain, (), {"b": 1}, "missing a required argument: 'a'"),
    ],
)
def test_a_call_that_does_not_fit_the_signature_raises_type_error_and_enqueues_nothing(
    task_testbed, func, args, kwargs, message
):
    with pytest.raises(TypeError, match=message) as raised:
        task(func)(*args, **kwargs)

    assert "test_task/" in str(raised.value) or "tasklib/" in str(raised.value)  # names the task
    assert task_testbed.tasks() == []


def test_calls_that_fit_the_signature_are_enqueued_and_run(task_testbed):
    task(keyword_only)(1, b=2)
    task(positional_only)(1, 2, 3, 4)
    Counter(1).bump(by=2)

    task_testbed.drain()
    assert sorted(map(str, tasklib.ran)) == sorted(
        map(str, [("keyword_only", 1, 2), ("positional_only", 1, 2, (3, 4)), ("bump", 1, 2)])
    )


def test_map_checks_the_signature_before_it_adds_anything(task_testbed):
    with pytest.raises(TypeError, match="missing a required (keyword-only )?argument"):
        task(keyword_only).map([1, 2])

    assert task_testbed.tasks() == []


def test_includeheaders_needs_a_headers_parameter_when_decorating(task_testbed):
    def no_headers(a):
        pass

    def takes_kwargs(a, **kwargs):
        tasklib.ran.append(sorted(kwargs))

    with pytest.raises(TypeError, match="includeheaders"):
        task(no_headers, includeheaders=True)
    with pytest.raises(TypeError, match="includeheaders"):
        task(no_headers).options(includeheaders=True)
    with pytest.raises(TypeError, match="headers= is given by the task request"):
        tasklib.with_headers(1, headers={})
    task(takes_kwargs, includeheaders=True)(1)
    task_testbed.drain()
    assert tasklib.ran == [["headers"]]


# -- async and generator functions ------------------------------------------------------------


async def sleepy(x):
    import asyncio

    await asyncio.sleep(0.01)
    tasklib.ran.append(("async", x, taskutils.current_task().queue_name))


def test_an_async_task_is_run_to_completion(task_testbed):
    task(sleepy)(5)

    task_testbed.drain()
    assert tasklib.ran == [("async", 5, "default")]


def generator_task():
    yield 1


async def async_generator_task():
    yield 1


@pytest.mark.parametrize("func", [generator_task, async_generator_task])
def test_generator_functions_are_refused_when_decorating(func):
    with pytest.raises(TypeError, match="generator"):
        task(func)


# -- options are checked when decorating -------------------------------------------------------


def days_ahead(days):
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)


@pytest.mark.parametrize(
    "options",
    [
        {"countdown": float("nan")},
        {"countdown": float("inf")},
        {"countdown": 10**400},
        {"countdown": 1e12},
        {"countdown": 31 * 86400},
        {"eta": days_ahead(31)},
        {"eta": days_ahead(31).replace(tzinfo=None)},
        {"name": "bad name!"},
        {"name": ""},
        {"name": "x" * 501},
        {"logname": "../../admin"},
        {"logname": "reports/./x"},
        {"logname": "a//b"},
        {"logname": "/abs"},
        {"logname": "trailing/"},
        {"headers": {"X-A": "one\r\nX-Injected: two"}},
        {"headers": {"X-A": "price €"}},
        {"headers": {"X-A\n": "x"}},
        {"headers": {"Bad Name": "x"}},
        {"headers": {"X-A": 5}},
        {"tag": "a\nb"},
        {"tag": "€"},
    ],
    ids=repr,
)
def test_an_option_app_engine_would_refuse_raises_when_decorating(options):
    with pytest.raises(TypeError) as raised:
        task(tasklib.plain, **options)
    assert isinstance(raised.value, ValueError)  # a value out of range is both
    with pytest.raises(TypeError):
        tasklib.record.options(**options)


def test_options_at_the_edges_app_engine_accepts_are_accepted(task_testbed):
    fn = task(
        tasklib.plain,
        countdown=30 * 86400 - 60,
        name="A_z-9" * 100,
        logname="reports/v1.2/~x",
        headers={"X-Name": "café\tok"},
        tag="été",
    )

    added = fn(1)
    assert added.was_enqueued and added.url == "/_ah/task/reports/v1.2/~x"


def test_a_negative_countdown_is_due_at_once_as_app_engine_takes_it(task_testbed):
    # A delay computed as (run_at - now).total_seconds() comes out negative once run_at has passed.
    added = tasklib.record.options(countdown=-5)(1)

    assert added.was_enqueued and added.eta_posix <= time.time()
    assert task_testbed.drain() == 1


# -- outside App Engine -----------------------------------------------------------------------


@pytest.fixture
def no_api_proxy(monkeypatch):
    """The SDK's state in a plain `python script.py`: no API stub registered."""
    from google.appengine.api import apiproxy_stub_map

    monkeypatch.setattr(apiproxy_stub_map, "apiproxy", apiproxy_stub_map.APIProxyStubMap())
    monkeypatch.delenv("GAE_ENV", raising=False)


def test_calling_a_task_with_no_api_proxy_says_how_to_run_it_locally(no_api_proxy):
    with pytest.raises(taskutils.exc.NoApiProxyError, match="python -m taskutils serve") as raised:
        tasklib.record(1)

    assert "task_testbed" in str(raised.value)
    with pytest.raises(taskutils.exc.NoApiProxyError):
        tasklib.record.map([1, 2])


def test_calling_a_task_from_a_wrapped_app_run_without_serve_says_how_to_run_it_locally(no_api_proxy):
    import webtest
    from google.appengine.api import wrap_wsgi_app

    def view(environ, start_response):
        try:
            tasklib.record(1)
            answer = b"added"
        except taskutils.exc.NoApiProxyError as e:
            answer = str(e).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer]

    answer = webtest.TestApp(wrap_wsgi_app(view)).get("/").text  # what `flask run` does

    assert "python -m taskutils serve" in answer and "task_testbed" in answer
