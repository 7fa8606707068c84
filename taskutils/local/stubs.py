"""Google's App Engine service stubs for the local server: taskqueue, datastore, memcache.

The stubs are Google's own. What this module adds around them: calls to stubs
that are not thread-safe run one at a time (as dev_appserver ran them), the
taskqueue stub's memory stays bounded over a long run, and queue.yaml's
``max_concurrent_requests`` (which the stub parses but ignores) is read out for
the scheduler.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

from google.appengine.api import apiproxy_rpc, datastore_file_stub, request_info
from google.appengine.api.taskqueue import taskqueue_stub
from google.appengine.datastore import datastore_stub_util

from .dispatch import HTTPDispatcher

MAX_TOMBSTONES = 100_000  # task names kept taken after their task left the queue

# Names the stub chose itself ("task1", "task2", ...) come from a counter and are never chosen again.
_CHOSEN_NAME = re.compile(r"task\d+\Z")


class StubLogFilter(logging.Filter):
    """Name the taskqueue stub's root-logger lines ("will retry in 0.2 seconds") ``taskqueue_stub``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and record.pathname.endswith("taskqueue_stub.py"):
            record.name = "taskqueue_stub"
        return True


class LocalRequestInfo(request_info.RequestInfo):
    """What the taskqueue stub asks about the current request: one module, our dispatcher."""

    def __init__(self, dispatcher: HTTPDispatcher) -> None:
        self._dispatcher = dispatcher

    def get_request_url(self, request_id: object) -> str:
        return f"http://{self._dispatcher.host}:{self._dispatcher.port}/"

    def get_request_environ(self, request_id: object) -> dict[str, str]:
        return {}

    def get_module(self, request_id: object) -> str:
        return "default"

    def get_version(self, request_id: object) -> str:
        return "local"

    def get_instance(self, request_id: object) -> int:
        return 0

    def get_dispatcher(self) -> HTTPDispatcher:
        return self._dispatcher


class Serialized:
    """A stub whose calls run one at a time, as dev_appserver ran stubs not marked THREADSAFE."""

    THREADSAFE = False

    def __init__(self, stub: Any, lock: threading.RLock) -> None:
        self.stub = stub
        self._lock = lock

    def CreateRPC(self) -> apiproxy_rpc.RPC:  # noqa: N802 - the stub map's interface
        return apiproxy_rpc.RPC(stub=self)

    def MakeSyncCall(self, service: str, call: str, request: Any, response: Any, request_id: Any = None) -> Any:  # noqa: N802
        with self._lock:
            return self.stub.MakeSyncCall(service, call, request, response, request_id)


class Tombstones:
    """The set of task names a queue keeps taken, bounded: the oldest names go first.

    Names the stub chose itself are left out (its counter never repeats them),
    so only names given by the app are kept, at most ``limit`` of them.
    """

    def __init__(self, names: Any = (), limit: int = MAX_TOMBSTONES) -> None:
        self._names: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.limit = limit
        for name in names:
            self.add(name)

    def add(self, name: str) -> None:
        if _CHOSEN_NAME.match(name):
            return
        self._names[name] = None
        if len(self._names) > self.limit:
            self._names.popitem(last=False)

    def discard(self, name: str) -> None:
        self._names.pop(name, None)

    def clear(self) -> None:
        self._names.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


def _bound_queue(queue: Any) -> None:
    """Keep a queue's memory to the tasks it holds: no add-request copy outlives its task."""
    if isinstance(queue.task_name_archive, Tombstones):
        return
    queue.task_name_archive = Tombstones(queue.task_name_archive)
    delete = queue._DeleteNoAcquireLock
    purge = queue.PurgeQueue

    def delete_and_forget(name: Any) -> Any:
        result = delete(name)
        queue.task_add_request_pbs.pop(name if isinstance(name, bytes) else name.encode(), None)
        queue.task_add_request_pbs.pop(name.decode() if isinstance(name, bytes) else name, None)
        return result

    def purge_and_forget() -> None:
        purge()
        queue.task_add_request_pbs.clear()

    queue._DeleteNoAcquireLock = delete_and_forget
    queue.PurgeQueue = purge_and_forget


def bound_memory(stub: taskqueue_stub.TaskQueueServiceStub) -> None:
    """Make the stub forget each task once it left its queue, in every queue now and later.

    Google's ``_Queue.Add`` keeps a copy of every add request and never drops it
    (about 1.5 KB per task), and tombstones every task name for ever.
    """
    group = stub._GetGroup()
    construct = group._ConstructQueue

    def construct_bounded(queue_name: Any, *args: Any, **kwargs: Any) -> Any:
        result = construct(queue_name, *args, **kwargs)
        _bound_queue(group._queues[queue_name if isinstance(queue_name, str) else queue_name.decode()])
        return result

    group._ConstructQueue = construct_bounded
    for queue in list(group._queues.values()):
        _bound_queue(queue)


def queue_limits(stub: taskqueue_stub.TaskQueueServiceStub) -> dict[str, int]:
    """Each queue's ``max_concurrent_requests`` from queue.yaml (queues without one are left out)."""
    parser = stub._GetGroup()._queue_yaml_parser
    info = parser() if parser else None
    limits = {}
    for entry in (info.queue if info and info.queue else []) or []:
        if getattr(entry, "max_concurrent_requests", None):
            limits[str(entry.name)] = int(entry.max_concurrent_requests)
    return limits


def make_taskqueue(
    queue_yaml: str | None, host: str, port: int, dispatcher: HTTPDispatcher
) -> taskqueue_stub.TaskQueueServiceStub:
    """Google's taskqueue stub, running tasks through dispatcher; queue.yaml parsed now if given."""
    stub = taskqueue_stub.TaskQueueServiceStub(
        queue_config_path=queue_yaml,
        auto_task_running=True,
        _all_queues_valid=queue_yaml is None,
        default_http_server=f"{host}:{port}",
        request_data=LocalRequestInfo(dispatcher),
    )
    if queue_yaml is not None:
        stub.GetQueues()  # parse queue.yaml now: a broken file fails at start, not at enqueue
    bound_memory(stub)
    return stub


def make_datastore(project: str, path: str | None) -> datastore_file_stub.DatastoreFileStub:
    """Google's datastore stub, strongly consistent, in memory or kept in the file at path."""
    return datastore_file_stub.DatastoreFileStub(
        project,
        path,
        save_changes=path is not None,
        use_atexit=False,
        consistency_policy=datastore_stub_util.PseudoRandomHRConsistencyPolicy(probability=1),
    )
