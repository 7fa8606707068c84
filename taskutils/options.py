"""Task options: checked when a task function is made (unknown names, types, values, contradictions) and merged."""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping
from typing import Any

from ._sdk import taskqueue
from .controls.options import OPTIONS as CONTROL_OPTIONS
from .controls.options import check_combination, controls_of
from .exc import TaskOptionError

# Options passed straight to google.appengine.api.taskqueue.Task.
TASK_KWARGS = ("countdown", "eta", "name", "target", "retry_options", "dispatch_deadline_usec")
OPTIONS = (
    frozenset(TASK_KWARGS + ("queue", "headers", "tag", "transactional", "includeheaders", "logname", "parent"))
    | CONTROL_OPTIONS
)
_TASK_NAME = re.compile(r"[a-zA-Z0-9_-]{1,500}")
_LOGNAME_SEGMENT = re.compile(r"[A-Za-z0-9_.~-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token
_HEADER_TEXT = re.compile(r"[\t\x20-\x7e\xa0-\xff]*")  # Latin-1 without control characters
_MAX_AHEAD = datetime.timedelta(days=30)  # App Engine refuses an ETA further ahead


def _check_type(name: str, value: object, types_: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, types_) or (isinstance(value, bool) and bool not in _as_tuple(types_)):
        raise TypeError(f"task option {name}= must be {what}, got {value!r}")


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check task options; raise TaskOptionError (a TypeError) for unknown ones, bad types and values."""
    try:
        return _validate_options(options)
    except TaskOptionError:
        raise
    except TypeError as e:
        raise TaskOptionError(str(e)) from None


def _validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - OPTIONS
    if unknown:
        raise TypeError(
            f"unknown task option(s): {', '.join(sorted(unknown))}; expected some of: {', '.join(sorted(OPTIONS))}"
        )
    opts = {k: v for k, v in options.items() if v is not None}
    checks: dict[str, tuple[type | tuple[type, ...], str]] = {
        "queue": (str, "a queue name"),
        "countdown": ((int, float), "a number of seconds"),
        "eta": (datetime.datetime, "a datetime"),
        "name": (str, "a task name"),
        "target": (str, "a service or version name"),
        "retry_options": (taskqueue.TaskRetryOptions, "a taskqueue.TaskRetryOptions"),
        "dispatch_deadline_usec": (int, "a number of microseconds"),
        "headers": (Mapping, "a mapping of header names to values"),
        "tag": (str, "a string"),
        "transactional": (bool, "True or False"),
        "includeheaders": (bool, "True or False"),
        "logname": (str, "a URL path"),
    }
    for name, value in opts.items():
        if name in checks:
            _check_type(name, value, *checks[name])
    if "countdown" in opts and "eta" in opts:
        raise TypeError("task options countdown= and eta= contradict each other: give one")
    if "countdown" in opts:
        _check_countdown(opts["countdown"])
    if "eta" in opts:
        _check_eta(opts["eta"])
    if "name" in opts and not _TASK_NAME.fullmatch(opts["name"]):
        raise TypeError(
            f"task option name= must be 1 to 500 of [a-zA-Z0-9_-], as App Engine requires, got {opts['name']!r}"
        )
    if opts.get("transactional") and "name" in opts:
        raise TypeError("a transactional task cannot be named: give transactional= or name=")
    if "parent" in opts and not opts.get("transactional"):
        raise TypeError("task option parent= places a spilled payload in a transaction: it needs transactional=True")
    if "logname" in opts:
        _check_logname(opts["logname"])
    if "headers" in opts:
        opts["headers"] = dict(opts["headers"])
        for name, value in opts["headers"].items():
            _check_header(name, value)
    if "tag" in opts and not _HEADER_TEXT.fullmatch(opts["tag"]):
        raise TypeError(
            f"task option tag= is sent as a header: Latin-1 without control characters, got {opts['tag']!r}"
        )
    controls = controls_of(opts)  # unique, debounce, exclusive, concurrency, key, rate: taskutils.controls
    if controls is not None:
        check_combination(opts, controls)
    return opts


def _check_countdown(countdown: float) -> None:
    # A negative countdown is due at once, as App Engine takes it (a computed delay may come out below 0).
    try:
        finite = math.isfinite(countdown)
    except OverflowError:  # an int too big for a float
        finite = False
    if not finite:
        raise TypeError(f"task option countdown= must be a finite number of seconds, got {countdown!r:.40}")
    if countdown > _MAX_AHEAD.total_seconds():
        raise TypeError(
            f"task option countdown= must be at most 30 days (2592000 s), as App Engine allows, got {countdown}"
        )


def _check_eta(eta: datetime.datetime) -> None:
    # A naive ETA is local time, as the taskqueue API reads it (UTC on App Engine).
    now = datetime.datetime.now() if eta.tzinfo is None else datetime.datetime.now(datetime.timezone.utc)
    if eta - now > _MAX_AHEAD:
        raise TypeError(f"task option eta= must be at most 30 days ahead, as App Engine allows, got {eta}")


def _check_logname(logname: str) -> None:
    segments = logname.split("/")
    if not all(_LOGNAME_SEGMENT.fullmatch(seg) and seg not in (".", "..") for seg in segments):
        raise TypeError(
            "task option logname= must be a URL path of [A-Za-z0-9_.~-] segments, none empty, '.' or '..', "
            f"got {logname!r}"
        )


def _check_header(name: object, value: object) -> None:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise TypeError(f"task option headers=: {name!r} is not a header name (letters, digits and !#$%&'*+.^_`|~-)")
    if not isinstance(value, str) or not _HEADER_TEXT.fullmatch(value):
        raise TypeError(
            f"task option headers=: the value of {name} must be a string of Latin-1 without control characters, "
            f"got {value!r}"
        )


def merge_options(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Options of base overridden by extra, checked; headers are merged, countdown and eta replace each other."""
    merged = dict(base)
    if "countdown" in extra or "eta" in extra:
        merged.pop("countdown", None)
        merged.pop("eta", None)
    if "transactional" in extra and not extra["transactional"]:
        merged.pop("parent", None)
    merged.update(extra)
    if "headers" in base and "headers" in extra:
        merged["headers"] = {**base["headers"], **extra["headers"]}
    return validate_options(merged)  # a merge can contradict, e.g. transactional= over name=
