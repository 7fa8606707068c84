"""Run tasks in tests: Google's testbed stubs, and a drain through ``taskutils.app``."""

from __future__ import annotations

import io
import os
from typing import Any

from google.appengine.api.taskqueue import taskqueue_stub
from google.appengine.datastore import datastore_stub_util
from google.appengine.ext import ndb, testbed

from .exc import TaskFailedError
from .handler import EXC_INFO_KEY, TASKQUEUE_SOURCE, app

MAX_ROUNDS = 1000


class TaskTestbed:
    """Google's testbed with the taskqueue, datastore and memcache stubs, and a task drain.

    ``queue_yaml`` points the taskqueue stub at a queue.yaml; without one,
    every queue name is accepted.
    """

    def __init__(self, queue_yaml: str | os.PathLike[str] | None = None) -> None:
        self.queue_yaml = queue_yaml
        self.testbed = testbed.Testbed()
        self.taskqueue: taskqueue_stub.TaskQueueServiceStub

    def activate(self) -> TaskTestbed:
        self.testbed.activate()
        self.testbed.init_datastore_v3_stub(
            consistency_policy=datastore_stub_util.PseudoRandomHRConsistencyPolicy(probability=1)
        )
        self.testbed.init_memcache_stub()
        if self.queue_yaml is None:
            self.testbed.init_taskqueue_stub(_all_queues_valid=True)
        else:
            self.testbed.init_taskqueue_stub(queue_config_path=os.fspath(self.queue_yaml))
        self.taskqueue = self.testbed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
        ndb.get_context().clear_cache()
        return self

    def deactivate(self) -> None:
        self.testbed.deactivate()

    def __enter__(self) -> TaskTestbed:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def queue_names(self) -> list[str]:
        """The names of the queues the stub knows."""
        return [q["name"] for q in self.taskqueue.GetQueues()]

    def tasks(self, queue: str | None = None) -> list[Any]:
        """The taskqueue.Task records waiting, in one queue or in all, each with its queue_name set."""
        waiting = []
        for name in [queue] if queue is not None else self.queue_names():
            for task in self.taskqueue.get_filtered_tasks(queue_names=[name]):
                task._Task__queue_name = name
                waiting.append(task)
        return waiting

    def post(self, task: Any, **environ: Any) -> tuple[int, dict[str, Any]]:
        """Post one task record to ``taskutils.app`` as the queue would; return status and environ."""
        body = task.payload or b""
        env: dict[str, Any] = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": task.url,
            "SCRIPT_NAME": "",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": TASKQUEUE_SOURCE,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": io.StringIO(),
            "HTTP_X_APPENGINE_TASKNAME": task.name,
            "HTTP_X_APPENGINE_QUEUENAME": task.queue_name or "default",
            "HTTP_X_APPENGINE_TASKRETRYCOUNT": str(task.retry_count),
            "HTTP_X_APPENGINE_TASKEXECUTIONCOUNT": str(task.retry_count),
            "HTTP_X_APPENGINE_TASKETA": str(task.eta_posix),
        }
        for name, value in task.headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                env[key] = value
            elif not key.startswith("X_APPENGINE_"):
                env["HTTP_" + key] = value
        env.update(environ)
        status: list[str] = []
        app(env, lambda s, headers, exc_info=None: status.append(s))
        return int(status[0].split(" ", 1)[0]), env

    def drain(self, queue: str | None = None) -> int:
        """Run queued tasks, and tasks they enqueue, until none is left; return how many ran.

        The first task that does not answer 2xx raises its exception (or
        TaskFailedError when it raised none), so a failing task fails the test.
        """
        ran = 0
        for _ in range(MAX_ROUNDS):
            waiting = self.tasks(queue)
            if not waiting:
                return ran
            for task in waiting:
                self.taskqueue.DeleteTask(task.queue_name, task.name)
                status, env = self.post(task)
                ran += 1
                if not 200 <= status < 300:
                    error = env.get(EXC_INFO_KEY)
                    if error is not None:
                        raise error
                    raise TaskFailedError(f"task {task.url} answered {status}")
        raise TaskFailedError(f"tasks still enqueue tasks after {MAX_ROUNDS} rounds")
