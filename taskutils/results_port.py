"""What results needs from the task layer above it, which plugs itself in here when it loads.

``taskutils.results_run`` and ``taskutils.results`` sit below ``taskutils.task``: ``submit``
returns their handles. Yet a handle's callbacks, a group's fan-in steps and the cancelling
of callbacks are tasks of their own, added from inside results' transactions, and a
callback task reads its source through the handles. ``taskutils.task`` provides both
(``TaskLayer``) and calls ``plug`` on import, so results never imports the layer above it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol


class TaskLike(Protocol):
    """A task function as results uses it (``taskutils.TaskFunction``)."""

    __wrapped__: Callable[..., Any]

    @property
    def task_options(self) -> Mapping[str, Any]: ...

    @property
    def url_path(self) -> str: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def add_submitted(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], handle_id: str) -> None: ...


class TaskLayer(Protocol):
    """How results makes task functions, unwraps them and reads a finished source."""

    def task_function(self, func: Callable[..., Any], options: Mapping[str, Any] | None = None) -> TaskLike:
        """func itself when it is a task function, else ``task(func, **options)``."""
        ...

    def with_checked_options(self, func: Callable[..., Any], options: Mapping[str, Any]) -> TaskLike:
        """func as a task function with options already checked (a task function's own)."""
        ...

    def runs(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """What a task function runs when called in a task: its callable, a method bound to its instance."""
        ...

    def outcome(self, source: str) -> Any:
        """The result of a handle, or a group's results in item order (raising as the handles do)."""
        ...


_plugged: list[TaskLayer] = []


def plug(layer: TaskLayer) -> None:
    """Called by ``taskutils.task`` as it loads."""
    _plugged[:] = [layer]


def tasks() -> TaskLayer:
    """The task layer; RuntimeError before ``taskutils.task`` has loaded (importing taskutils loads it)."""
    if not _plugged:
        raise RuntimeError("taskutils.results adds tasks through taskutils.task: import taskutils first")
    return _plugged[0]
