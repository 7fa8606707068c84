import datetime
import pickle

import pytest
from google.appengine.api import taskqueue
from google.appengine.ext import deferred, ndb

import taskutils
from taskutils import task

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
        ({"countdown": -1}, "negative"),
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
