"""Run any Python callable as a Google App Engine push task: ``@task``."""

from . import _sdk  # noqa: F401  (first: loads the SDK without its own import-time deprecation warnings)
from . import hooks as hooks
from ._sdk import taskqueue as taskqueue  # the SDK's taskqueue, or taskutils' copy of its task model
from .config import configure as configure
from .config import get_taskroute as get_taskroute
from .config import set_taskroute as set_taskroute
from .defer import defer as defer
from .exc import BackendError as BackendError
from .exc import MapQueryError as MapQueryError
from .exc import NoApiProxyError as NoApiProxyError
from .exc import PayloadTooLargeError as PayloadTooLargeError
from .exc import PermanentTaskFailure as PermanentTaskFailure
from .exc import QueueUnavailableError as QueueUnavailableError
from .exc import RetryTaskException as RetryTaskException
from .exc import TaskError as TaskError
from .exc import TaskOptionError as TaskOptionError
from .exc import UnpicklableArgumentError as UnpicklableArgumentError
from .handler import TaskInfo as TaskInfo
from .handler import app as app
from .handler import current_task as current_task
from .handler import mount as mount
from .logs import CloudLoggingFormatter as CloudLoggingFormatter
from .sweep import sweep as sweep
from .sweep import sweep_app as sweep_app
from .task import TaskFunction as TaskFunction
from .task import task as task
from .tracing import current_trace as current_trace
from .tracing import traced as traced

__version__ = "0.1.0"

# Heavier parts, imported on first use: name -> (module, attribute).
_LAZY = {
    "console": (".webconsole", "console"),
    "GroupHandle": (".results", "GroupHandle"),
    "TaskHandle": (".results", "TaskHandle"),
    "map_query": (".mapquery", "map_query"),
    "set_progress": (".results", "set_progress"),
    "periodic": (".controls.periodic", "periodic"),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "BackendError",
    "CloudLoggingFormatter",
    "MapQueryError",
    "NoApiProxyError",
    "TaskOptionError",
    "GroupHandle",
    "PayloadTooLargeError",
    "QueueUnavailableError",
    "PermanentTaskFailure",
    "RetryTaskException",
    "TaskError",
    "TaskFunction",
    "TaskHandle",
    "TaskInfo",
    "UnpicklableArgumentError",
    "app",
    "configure",
    "console",
    "current_task",
    "current_trace",
    "defer",
    "get_taskroute",
    "hooks",
    "map_query",
    "mount",
    "periodic",
    "set_progress",
    "set_taskroute",
    "sweep",
    "sweep_app",
    "task",
    "taskqueue",
    "traced",
]
