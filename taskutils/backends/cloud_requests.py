"""Cloud Tasks requests made from built tasks, and the client that sends them (the cloud backend).

A built task is a ``taskqueue.Task`` (payload, URL, headers, name, ETA, target); here it
becomes a ``tasks_v2.Task``: an HTTP task to ``target + url`` with an OIDC token when
``configure(target=...)`` is set, else an App Engine task. The client is made once per
process, on ``CLOUD_TASKS_EMULATOR_HOST`` (plaintext gRPC) when that is set. Cloud Tasks'
errors become the taskqueue SDK's, so code catching ``TaskAlreadyExistsError`` keeps working.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import types
from typing import Any

from .._sdk import taskqueue
from ..config import settings
from ..exc import QueueUnavailableError

log = logging.getLogger("taskutils.backends.cloud")

EMULATOR_HOST_ENV = "CLOUD_TASKS_EMULATOR_HOST"
MAX_TASKS_PER_ADD = 100  # BatchCreateTasks' limit, and the batch taskutils builds
_SKIPPED_HEADERS = ("host", "x-google-", "x-appengine-", "x-cloudtasks-")  # Cloud Tasks refuses or sets these

_lock = threading.Lock()
_clients: dict[tuple[str, int], Any] = {}
_retry_warned: list[bool] = []


def endpoint() -> str:
    """Where tasks go: the emulator's host:port, or "" for Google's endpoint."""
    return os.environ.get(EMULATOR_HOST_ENV, "").strip()


def client() -> Any:
    """The process's ``tasks_v2.CloudTasksClient`` for the current endpoint (made on first use)."""
    key = (endpoint(), os.getpid())  # a forked worker must not reuse its parent's gRPC channel
    found = _clients.get(key)
    if found is None:
        with _lock:
            found = _clients.get(key)
            if found is None:
                found = _clients[key] = _new_client(key[0])
    return found


def _new_client(host_port: str) -> Any:
    if host_port:
        from ..cloudtasks import emulator_client

        return emulator_client(host_port)
    from google.cloud import tasks_v2

    return tasks_v2.CloudTasksClient()


def queue_path(queue_name: str) -> str:
    """The queue's full resource name; ValueError (clear) when no project or location is known."""
    cloud = settings.cloud
    return f"projects/{cloud.resolved_project()}/locations/{cloud.resolved_location()}/queues/{queue_name}"


@functools.cache
def _messages() -> Any:
    """tasks_v2's protobuf classes, without proto-plus' wrappers (a request is built on every task added)."""
    try:
        from google.cloud import tasks_v2
    except ImportError as e:
        raise ImportError(
            f'the cloud backend needs google-cloud-tasks ({e}): pip install "taskutils-gae[cloud]"'
        ) from e
    from google.protobuf import duration_pb2, timestamp_pb2

    return types.SimpleNamespace(
        Task=tasks_v2.Task.pb(),
        HttpRequest=tasks_v2.HttpRequest.pb(),
        AppEngineHttpRequest=tasks_v2.AppEngineHttpRequest.pb(),
        AppEngineRouting=tasks_v2.AppEngineRouting.pb(),
        OidcToken=tasks_v2.OidcToken.pb(),
        RetryConfig=tasks_v2.RetryConfig.pb(),
        CreateTaskRequest=tasks_v2.CreateTaskRequest.pb(),
        wrap_request=tasks_v2.CreateTaskRequest.wrap,  # proto-plus' view of it, without the copy its constructor makes
        Duration=duration_pb2.Duration,
        Timestamp=timestamp_pb2.Timestamp,
        methods={name: int(value) for name, value in tasks_v2.HttpMethod.__members__.items()},
    )


def build(task: taskqueue.Task, parent: str) -> Any:
    """The Cloud Tasks task (a ``tasks_v2.Task`` protobuf) that carries task into the queue at parent."""
    pb = _messages()
    body = task.payload or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = {k: v for k, v in task.headers.items() if not k.lower().startswith(_SKIPPED_HEADERS)}
    method = pb.methods.get(task.method, pb.methods["POST"])
    cloud = settings.cloud
    fields: dict[str, Any] = {}
    if cloud.target:
        if not cloud.service_account:  # the handler would refuse every one of them, and they would retry for days
            raise ValueError(
                f"tasks to the target {cloud.target} are HTTP tasks, checked by the OIDC token Cloud Tasks "
                "attaches for a service account: configure(service_account=...) names it"
            )
        request = pb.HttpRequest(url=cloud.target + task.url, http_method=method, headers=headers, body=body)
        request.oidc_token.CopyFrom(
            pb.OidcToken(service_account_email=cloud.service_account, audience=cloud.resolved_audience() or "")
        )
        fields["http_request"] = request
    else:
        request = pb.AppEngineHttpRequest(relative_uri=task.url, http_method=method, headers=headers, body=body)
        if isinstance(task.target, str) and task.target:  # not the SDK's default/unknown version markers
            request.app_engine_routing.CopyFrom(_routing(task.target))
        elif os.environ.get("GAE_VERSION"):  # as App Engine's queues do: run on the version that added it
            routing = request.app_engine_routing
            routing.service, routing.version = os.environ.get("GAE_SERVICE", "default"), os.environ["GAE_VERSION"]
        fields["app_engine_http_request"] = request
    if task.name:
        fields["name"] = f"{parent}/tasks/{task.name}"
    eta = task.eta_posix
    if eta > time.time():
        fields["schedule_time"] = pb.Timestamp(seconds=int(eta), nanos=int((eta % 1) * 1e9))
    if task.dispatch_deadline_usec:
        usec = task.dispatch_deadline_usec
        fields["dispatch_deadline"] = pb.Duration(seconds=usec // 1_000_000, nanos=usec % 1_000_000 * 1000)
    if task.retry_options is not None:
        fields["retry_config"] = _retry_config(task.retry_options)
    return pb.Task(**fields)


def _routing(target: str) -> Any:
    """App Engine routing for a taskqueue target: "service", "version.service" or "instance.version.service"."""
    parts = target.partition(":")[0].replace("-dot-", ".").split(".")[-3:]
    routing = _messages().AppEngineRouting(service=parts[-1])
    if len(parts) > 1:
        routing.version = parts[-2]
    if len(parts) > 2:
        routing.instance = parts[-3]
    return routing


def _retry_config(options: taskqueue.TaskRetryOptions) -> Any:
    """The task-level RetryConfig for taskqueue retry options (it overrides the queue's)."""
    pb = _messages()

    def duration(seconds: float) -> Any:
        return pb.Duration(seconds=int(seconds), nanos=int(round((seconds % 1) * 1e9)))

    config = pb.RetryConfig()
    if options.task_retry_limit is not None:
        config.max_attempts = options.task_retry_limit + 1
    if options.task_age_limit is not None:
        config.max_retry_duration.CopyFrom(duration(options.task_age_limit))
    if options.min_backoff_seconds is not None:
        config.min_backoff.CopyFrom(duration(options.min_backoff_seconds))
    if options.max_backoff_seconds is not None:
        config.max_backoff.CopyFrom(duration(options.max_backoff_seconds))
    if options.max_doublings is not None:
        config.max_doublings = options.max_doublings
    if endpoint() and not _retry_warned:
        _retry_warned.append(True)
        log.warning("the Cloud Tasks emulator ignores a task's retry options: its queue's retries apply")
    return config


def serialize(request: Any) -> bytes:
    """A built task's bytes, to stage it (``cloud_outbox``)."""
    return bytes(request.SerializeToString())


def deserialize(data: bytes) -> Any:
    """The built task staged as data."""
    return _messages().Task.FromString(data)


def create(parent: str, request: Any) -> str:
    """Create one task; its full name. Cloud Tasks' errors raised as the taskqueue SDK's."""
    try:
        pb = _messages()
        created = client().create_task(request=pb.wrap_request(pb.CreateTaskRequest(parent=parent, task=request)))
        return str(created.name)
    except Exception as e:
        raise translate(e) from e


def mark_added(task: taskqueue.Task, queue_name: str, full_name: str) -> None:
    """Record on the built task that the queue took it, and its name, as the taskqueue SDK does."""
    # The SDK's Task keeps these in private attributes; its own Cloud Tasks path sets them the same way.
    task._Task__name = full_name.rpartition("/")[2]
    task._Task__queue_name = queue_name
    task._Task__enqueued = True


def translate(error: Exception) -> Exception:
    """The taskqueue SDK's error (or taskutils') for an error of the Cloud Tasks client."""
    from google.api_core import exceptions as api

    detail = str(error)
    if isinstance(error, api.ServiceUnavailable):  # refused before the task was taken: nothing added
        where = f"the Cloud Tasks emulator at {endpoint()}" if endpoint() else "Cloud Tasks"
        return QueueUnavailableError(f"cannot reach {where} to add a task: {detail}")
    if isinstance(error, (api.DeadlineExceeded, api.RetryError)):  # the task may have been added
        return taskqueue.TransientError(detail)
    if isinstance(error, api.AlreadyExists):
        return taskqueue.TaskAlreadyExistsError(detail)
    if isinstance(error, api.NotFound):
        return taskqueue.UnknownQueueError(detail)
    if isinstance(error, (api.PermissionDenied, api.Unauthenticated)):
        return taskqueue.PermissionDeniedError(detail)
    if isinstance(error, api.InvalidArgument):
        return taskqueue.InvalidTaskError(detail)
    if isinstance(error, (api.TooManyRequests, api.Aborted, api.InternalServerError)):
        return taskqueue.TransientError(detail)
    if isinstance(error, api.GoogleAPICallError):
        return taskqueue.Error(detail)
    return error
