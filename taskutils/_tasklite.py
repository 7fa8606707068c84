"""The taskqueue SDK's push-task model, for the cloud backend where ``appengine-python-standard`` is not installed.

With the SDK installed, taskutils uses ``google.appengine.api.taskqueue`` on both backends
and this module is never imported. Without it (``pip install "taskutils-gae[cloud]"`` on
Cloud Run), this module stands in for the part of it the cloud backend uses: ``Task`` (a
POST push task: payload, URL, headers, name, ETA, target, retry options, dispatch deadline),
``TaskRetryOptions``, the error classes under the same names and hierarchy, and the size
limits. The values it takes and refuses are the SDK's, and ``tests/test_tasklite.py`` checks
that against the SDK itself.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any


class Error(Exception):
    """Base class of the taskqueue errors."""


class UnknownQueueError(Error):
    pass


class TransientError(Error):
    pass


class InternalError(Error):
    pass


class InvalidTaskError(Error):
    pass


class InvalidTaskNameError(InvalidTaskError):
    pass


class TaskTooLargeError(InvalidTaskError):
    pass


class TaskAlreadyExistsError(InvalidTaskError):
    pass


class TombstonedTaskError(InvalidTaskError):
    pass


class InvalidUrlError(InvalidTaskError):
    pass


class InvalidEtaError(InvalidTaskError):
    pass


class BadTaskStateError(Error):
    pass


class InvalidQueueError(Error):
    pass


class InvalidQueueNameError(InvalidQueueError):
    pass


class PermissionDeniedError(Error):
    pass


class DuplicateTaskNameError(Error):
    pass


class TooManyTasksError(Error):
    pass


class BadTransactionStateError(Error):
    pass


class InvalidTaskRetryOptionsError(Error):
    pass


class InvalidQueueModeError(Error):
    pass


class QueuePausedError(Error):
    pass


class InvalidTagError(Error):
    pass


class InvalidDispatchDeadlineError(Error):
    pass


MAX_PUSH_TASK_SIZE_BYTES = 100 * 2**10
MAX_TASK_NAME_LENGTH = 500
MAX_TASKS_PER_ADD = 100
MAX_URL_LENGTH = 2083
MAX_TAG_LENGTH = 500
MAX_DISPATCH_DEADLINE = datetime.timedelta(hours=24)
_MIN_DISPATCH_DEADLINE = datetime.timedelta(seconds=15)
_MAX_COUNTDOWN_SECONDS = 3600 * 24 * 30
_TASK_NAME_RE = re.compile(rf"^[a-zA-Z0-9_-]{{1,{MAX_TASK_NAME_LENGTH}}}$")


class TaskRetryOptions:
    """When a failed task is retried: the SDK's class of that name, with its checks."""

    _KWARGS = frozenset(
        ["min_backoff_seconds", "max_backoff_seconds", "task_age_limit", "max_doublings", "task_retry_limit"]
    )

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - self._KWARGS
        if unknown:
            raise TypeError(f"Invalid arguments: {', '.join(unknown)}")
        self.min_backoff_seconds: float | None = kwargs.get("min_backoff_seconds")
        self.max_backoff_seconds: float | None = kwargs.get("max_backoff_seconds")
        self.max_doublings: int | None = kwargs.get("max_doublings")
        self.task_retry_limit: int | None = kwargs.get("task_retry_limit")
        self.task_age_limit: int | None = kwargs.get("task_age_limit")
        for name, what in (
            ("min_backoff_seconds", "The minimum retry interval"),
            ("max_backoff_seconds", "The maximum retry interval"),
            ("max_doublings", "The maximum number of retry interval doublings"),
            ("task_retry_limit", "The maximum number of retries"),
            ("task_age_limit", "The expiry countdown"),
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidTaskRetryOptionsError(f"{what} cannot be negative")
        low, high = self.min_backoff_seconds, self.max_backoff_seconds
        if low is not None and high is not None and high < low:
            raise InvalidTaskRetryOptionsError(
                "The maximum retry interval cannot be less than the minimum retry interval"
            )
        if self.task_age_limit is not None:
            self.task_age_limit = int(math.ceil(self.task_age_limit))

    def __repr__(self) -> str:
        given = ", ".join(f"{name}={getattr(self, name)!r}" for name in sorted(self._KWARGS))
        return f"TaskRetryOptions({given})"


class _Headers(MutableMapping[str, str]):
    """Header names compared without case, as the SDK's task headers are."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, str]] = {}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __setitem__(self, name: str, value: str) -> None:
        self._items[name.lower()] = (name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class Task:
    """A POST push task, as the SDK's ``taskqueue.Task`` builds one; the cloud backend adds it to Cloud Tasks."""

    _KWARGS = frozenset(
        ["name", "method", "url", "headers", "countdown", "eta", "retry_options", "target", "dispatch_deadline_usec"]
    )

    def __init__(self, payload: bytes | str | None = None, **kwargs: Any) -> None:
        unknown = set(kwargs) - self._KWARGS - {"params", "tag"}
        if unknown:
            raise TypeError(f"Invalid arguments: {', '.join(unknown)}")
        if kwargs.get("params"):
            raise InvalidTaskError("params are not supported without appengine-python-standard: give a payload")
        if kwargs.get("tag") is not None:
            raise InvalidTaskError("tag can only be specified for pull tasks")
        self.__name: str | None = kwargs.get("name")
        if self.__name and not _TASK_NAME_RE.match(self.__name):
            raise InvalidTaskNameError(
                f'The task name does not match expression "{_TASK_NAME_RE.pattern}"; found {self.__name}'
            )
        self.__method = str(kwargs.get("method", "POST")).upper()
        if self.__method != "POST":
            raise InvalidTaskError(
                f"only POST tasks are supported without appengine-python-standard, not {self.__method}"
            )
        self.__url = self.__check_url(kwargs.get("url", "") or "")
        self.__headers = _Headers()
        self.__headers.update(kwargs.get("headers") or {})
        self.__headers.setdefault("X-AppEngine-Current-Namespace", "")
        self.__payload: bytes | None = None
        if payload is not None:
            if isinstance(payload, str):
                if payload:
                    self.__headers.setdefault("content-type", "text/plain; charset=utf-8")
                payload = payload.encode("utf-8")
            elif not isinstance(payload, bytes):
                raise InvalidTaskError(f"Task payloads must be strings; invalid payload: {payload!r:.100}")
            self.__payload = payload
        self.__target: str | None = kwargs.get("target")
        self.__eta_posix = self.__determine_eta_posix(kwargs.get("eta"), kwargs.get("countdown"))
        self.__retry_options: TaskRetryOptions | None = kwargs.get("retry_options")
        self.__dispatch_deadline_usec: int | None = kwargs.get("dispatch_deadline_usec")
        self.__queue_name: str | None = None
        self.__enqueued = False
        if self.__eta_posix - time.time() > _MAX_COUNTDOWN_SECONDS:
            raise InvalidEtaError("ETA too far in the future")
        if self.size > MAX_PUSH_TASK_SIZE_BYTES:
            raise TaskTooLargeError(f"Task size must be less than {MAX_PUSH_TASK_SIZE_BYTES}; found {self.size}")
        if self.__dispatch_deadline_usec is not None:
            if not isinstance(self.__dispatch_deadline_usec, int):
                raise TypeError("deadline must be an integer")
            deadline = datetime.timedelta(microseconds=self.__dispatch_deadline_usec)
            if not _MIN_DISPATCH_DEADLINE <= deadline <= MAX_DISPATCH_DEADLINE:
                raise InvalidDispatchDeadlineError(
                    f"dispatch_deadline_usec must be between {_MIN_DISPATCH_DEADLINE} and {MAX_DISPATCH_DEADLINE}"
                )

    @staticmethod
    def __check_url(url: str) -> str:
        if not url:
            raise InvalidUrlError("a task needs a URL without appengine-python-standard (its default is deferred's)")
        if not url.startswith("/") or len(url) > MAX_URL_LENGTH:
            raise InvalidUrlError(f"Task URL must be a relative URL of at most {MAX_URL_LENGTH} characters: {url!r}")
        if "?" in url:
            raise InvalidTaskError('POST method cannot have a query string; use the "params" keyword argument instead')
        return url

    @staticmethod
    def __determine_eta_posix(eta: datetime.datetime | None, countdown: float | None) -> float:
        if eta is not None and countdown is not None:
            raise InvalidTaskError("Cannot use a countdown and ETA together")
        if eta is not None:
            if not isinstance(eta, datetime.datetime):
                raise InvalidTaskError("ETA must be a datetime.datetime instance")
            if eta.tzinfo is None:
                return time.mktime(eta.timetuple()) + eta.microsecond * 1e-6
            return calendar.timegm(eta.utctimetuple()) + eta.microsecond * 1e-6
        if countdown is not None:
            try:
                countdown = float(countdown)
            except ValueError:
                raise InvalidTaskError("Countdown must be a number") from None
            except OverflowError:
                raise InvalidTaskError("Countdown out of range") from None
            return time.time() + countdown
        return time.time()

    @property
    def name(self) -> str | None:
        return self.__name

    @property
    def method(self) -> str:
        return self.__method

    @property
    def url(self) -> str:
        return self.__url

    @property
    def headers(self) -> Mapping[str, str]:
        """A copy of the task's headers."""
        copy = _Headers()
        copy.update(self.__headers)
        return copy

    @property
    def payload(self) -> bytes | None:
        return self.__payload

    @property
    def target(self) -> str | None:
        return self.__target

    @property
    def eta_posix(self) -> float:
        return self.__eta_posix

    @property
    def eta(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.__eta_posix, datetime.timezone.utc)

    @property
    def retry_options(self) -> TaskRetryOptions | None:
        return self.__retry_options

    @property
    def dispatch_deadline_usec(self) -> int | None:
        return self.__dispatch_deadline_usec

    @property
    def queue_name(self) -> str | None:
        return self.__queue_name

    @property
    def retry_count(self) -> int:
        return 0

    @property
    def was_enqueued(self) -> bool:
        return self.__enqueued

    @property
    def was_deleted(self) -> bool:
        return False

    @property
    def size(self) -> int:
        """The bytes the SDK counts against ``MAX_PUSH_TASK_SIZE_BYTES``: URL, headers and payload."""
        headers = sum(len(k) + len(v) + len(": \r\n") for k, v in self.__headers.items())
        return len(self.__method) + len(self.__payload or b"") + len(self.__url) + headers

    def __repr__(self) -> str:
        return f"Task<name={self.__name!r}, url={self.__url!r}, eta={self.eta.isoformat()}>"
