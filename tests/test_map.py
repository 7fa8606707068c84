"""`.map()`: one task per item, batched queue RPCs, and single adds where Cloud Tasks has no batch add."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
import webtest
from google.appengine.api import apiproxy_stub_map, taskqueue
from google.appengine.ext import ndb
from google.cloud import tasks_v2

import taskutils
from taskutils import cloudtasks, task

seen: list[int] = []


@task
def collect(item: int) -> None:
    seen.append(item)


@task(transactional=True)
def collect_in_transaction(item: int) -> None:
    seen.append(item)


@pytest.fixture(autouse=True)
def _nothing_seen() -> Iterator[None]:
    seen.clear()
    yield
    seen.clear()


@pytest.fixture
def bulk_adds(task_testbed) -> list[int]:
    """The size of every BulkAdd RPC the app makes to the taskqueue service, in order."""
    sizes: list[int] = []

    def hook(service, call, request, response):
        if call == "BulkAdd":
            sizes.append(len(request.add_request))

    apiproxy_stub_map.apiproxy.GetPreCallHooks().Append("test_map.bulk_adds", hook, "taskqueue")
    return sizes


def test_map_enqueues_one_task_per_item_in_order_and_every_item_runs(task_testbed):
    added = collect.map(range(7))

    assert len(added) == 7 and all(isinstance(t, taskqueue.Task) and t.was_enqueued for t in added)
    # Compared by payload: the SDK's stub reports the chosen name of only the last task of a BulkAdd.
    assert sorted(t.payload for t in added) == sorted(t.payload for t in task_testbed.tasks("default"))
    assert seen == []
    assert task_testbed.drain() == 7
    assert sorted(seen) == list(range(7))


def test_map_returns_the_tasks_in_the_order_of_the_items(task_testbed):
    items = [5, 3, 9, 1]
    added = collect.map(iter(items))

    for t in added:
        assert task_testbed.post(t, HTTP_X_APPENGINE_TASKNAME="by-hand")[0] == 200
    assert seen == items


def test_map_adds_at_most_100_tasks_per_queue_rpc(task_testbed, bulk_adds):
    added = collect.map(range(250))

    assert bulk_adds == [100, 100, 50]
    assert len(added) == len({t.payload for t in added}) == 250
    assert task_testbed.drain() == 250
    assert sorted(seen) == list(range(250))


def test_map_of_nothing_adds_nothing(task_testbed, bulk_adds):
    assert collect.map([]) == []
    assert bulk_adds == []
    assert task_testbed.tasks() == []


def test_a_transactional_map_adds_at_most_5_tasks_per_rpc_and_only_on_commit(task_testbed, bulk_adds):
    added = ndb.transaction(lambda: collect_in_transaction.map(range(5)), xg=True)

    assert bulk_adds == [5] and len(added) == 5
    assert task_testbed.drain() == 5
    assert sorted(seen) == list(range(5))


def test_a_transactional_map_over_the_transaction_limit_rolls_back_every_task(task_testbed, bulk_adds):
    # App Engine holds at most 5 tasks in one transaction: the second RPC fails, the whole transaction rolls back.
    with pytest.raises(taskqueue.Error, match="maximum allowed 5"):
        ndb.transaction(lambda: collect_in_transaction.map(range(7)), xg=True)

    assert bulk_adds == [5, 2]
    assert task_testbed.tasks() == []


def test_a_signed_map_of_a_closure_runs_every_item_and_spills_only_the_big_one(task_testbed, signed):
    offset = 100

    def shifted(item):  # a closure: the pickle carries the function, the URL cannot name it
        collect.__wrapped__(item if isinstance(item, bytes) else item + offset)

    big = b"x" * 150_000
    added = task(shifted).map([1, big, 2])

    assert [len(t.payload) < 1_000 for t in added] == [True, True, True]  # the big one carries a pointer
    assert len(ndb.Query().fetch(keys_only=True)) == 1
    assert task_testbed.drain() == 3
    assert sorted(seen, key=repr) == sorted([101, big, 102], key=repr)
    assert ndb.Query().fetch(keys_only=True) == []


def test_map_pickles_every_item_before_it_adds_anything_and_names_the_item_that_cannot_travel(task_testbed):
    items: list[object] = list(range(250))
    items[150] = threading.Lock()

    with pytest.raises(taskutils.UnpicklableArgumentError, match="^item 150: "):
        collect.map(items)
    with pytest.raises(taskutils.UnpicklableArgumentError, match="^item 150: "):
        collect.submit_map(items)

    assert task_testbed.tasks() == []
    assert ndb.Query().fetch(keys_only=True) == []


def test_map_refuses_a_named_task_function(task_testbed):
    with pytest.raises(TypeError, match="name="):
        collect.options(name="only-one").map([1, 2])


# -- Cloud Tasks without BatchCreateTasks -------------------------------------------------------------

SERVICE = "google.cloud.tasks.v2.CloudTasks"


class CloudTasksWithoutBatch:
    """A real gRPC server speaking Cloud Tasks v2 that implements CreateTask and nothing else.

    Like gcloud-tasks-emulator and older backends, it answers BatchCreateTasks with
    gRPC UNIMPLEMENTED; it records every method called and every task created.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.created: list[tasks_v2.Task] = []
        self._lock = threading.Lock()
        recorder = self

        class Record(grpc.ServerInterceptor):
            def intercept_service(self, continuation, details):
                with recorder._lock:
                    recorder.calls.append(details.method.rsplit("/", 1)[-1])
                return continuation(details)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[Record()])
        handlers = {
            "CreateTask": grpc.unary_unary_rpc_method_handler(
                self.create_task,
                request_deserializer=tasks_v2.CreateTaskRequest.deserialize,
                response_serializer=tasks_v2.Task.serialize,
            )
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def create_task(self, request: tasks_v2.CreateTaskRequest, context: grpc.ServicerContext) -> tasks_v2.Task:
        with self._lock:
            created = tasks_v2.Task(request.task)
            created.name = f"{request.parent}/tasks/{len(self.created) + 1}"
            self.created.append(created)
            return created


@pytest.fixture
def cloud_tasks_without_batch(task_testbed, monkeypatch) -> Iterator[CloudTasksWithoutBatch]:
    """The SDK in Cloud Tasks mode, pointed at a server with no BatchCreateTasks."""
    backend = CloudTasksWithoutBatch()
    backend.server.start()
    monkeypatch.setenv("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", "true")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test-project")
    monkeypatch.setenv("LOCATION_ID", "us-central1")
    monkeypatch.setenv("HTTP_HOST", "localhost")
    monkeypatch.setenv(cloudtasks.EMULATOR_HOST_ENV, f"127.0.0.1:{backend.port}")
    assert cloudtasks.use_emulator_from_env()
    try:
        yield backend
    finally:
        cloudtasks.restore_default_client()
        backend.server.stop(grace=None)


def run_created(backend: CloudTasksWithoutBatch) -> list[int]:
    """Post every created task to taskutils.app as the queue would; return the statuses."""
    app = webtest.TestApp(taskutils.app)
    statuses = []
    for created in backend.created:
        request = created.app_engine_http_request
        headers = dict(request.headers)
        headers.update({"X-AppEngine-TaskName": created.name.rsplit("/", 1)[-1], "X-AppEngine-QueueName": "default"})
        answer = app.post(request.relative_uri, request.body, headers=headers, expect_errors=True)
        statuses.append(answer.status_int)
    return statuses


def test_the_backend_refuses_a_batch_add_with_unimplemented(cloud_tasks_without_batch):
    # The premise of the fallback: the SDK alone raises, and creates nothing.
    tasks = [taskqueue.Task(payload=b"x", url="/_ah/task/x") for _ in range(2)]
    with pytest.raises(taskqueue.Error, match="501"):
        taskqueue.Queue("default").add(tasks)
    assert cloud_tasks_without_batch.calls == ["BatchCreateTasks"]
    assert cloud_tasks_without_batch.created == []


def test_map_falls_back_to_single_adds_where_batch_add_is_unimplemented(cloud_tasks_without_batch, caplog):
    backend = cloud_tasks_without_batch
    added = collect.map(range(3))

    assert backend.calls == ["BatchCreateTasks", "CreateTask", "CreateTask", "CreateTask"]
    assert [t.name for t in added] == ["1", "2", "3"]
    assert all(t.was_enqueued and t.queue_name == "default" for t in added)
    assert "adding tasks one by one" in caplog.text
    assert run_created(backend) == [200, 200, 200]
    assert seen == [0, 1, 2]


def test_after_one_fallback_map_goes_straight_to_single_adds(cloud_tasks_without_batch):
    backend = cloud_tasks_without_batch
    collect.map([1, 2])
    backend.calls.clear()

    added = collect.map([3, 4, 5])

    assert backend.calls == ["CreateTask"] * 3
    assert len(added) == 3
    assert run_created(backend) == [200] * 5
    assert seen == [1, 2, 3, 4, 5]
