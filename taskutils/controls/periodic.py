"""``taskutils.periodic(schedule)``: run a task function on a cron.yaml schedule.

The decorator declares the job (``taskutils.controls.jobs``); the cron route that adds
due jobs as tasks is ``taskutils.controls.cron``. A job is ``exclusive`` on its own
name, so it never overlaps itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import schedule
from .jobs import Job, JobKey, register

if TYPE_CHECKING:
    from ..task import TaskFunction


def periodic(when: str, **options: Any) -> Callable[[Callable[..., Any]], TaskFunction[Any, Any]]:
    """Decorate a function taking no arguments to run as a task on a cron.yaml schedule (in UTC).

    ``options`` are task options (``queue=``, ``retry_options=``, ...). The schedule is
    checked now: ValueError for one that is not supported.
    """
    parsed = schedule.parse(when)
    from ..options import validate_options
    from ..task import task

    validate_options(options)

    def decorator(func: Callable[..., Any]) -> TaskFunction[Any, Any]:
        function = task(func, **options)
        function = function.options(exclusive=JobKey(function.url_path))
        register(Job(function, parsed))
        return function

    return decorator
