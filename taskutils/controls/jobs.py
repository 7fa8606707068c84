"""The periodic jobs this process declared (``taskutils.periodic``): a registry with no imports above it."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from . import keys, schedule


class JobKey:
    """The exclusive key of a periodic job: its name, whatever its arguments."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return f"periodic:{self.name}"


@dataclass(frozen=True)
class Job:
    """A periodic job: its task function and its schedule."""

    function: Any  # a TaskFunction
    schedule: schedule.Schedule

    @property
    def name(self) -> str:
        return str(self.function.url_path)

    def task_name(self, slot: datetime.datetime) -> str:
        return f"periodic-{keys.digest(self.name)[:24]}-{slot:%Y%m%d-%H%M}"


_jobs: dict[str, Job] = {}


def register(job: Job) -> None:
    _jobs[job.name] = job


def jobs() -> list[Job]:
    """The periodic jobs this process has imported, by name."""
    return [_jobs[name] for name in sorted(_jobs)]
