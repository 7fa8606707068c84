"""cron.yaml schedules: parse one, and say which slot is due and which comes next.

Supported, in UTC (cron.yaml's default timezone):

- ``every N minutes`` / ``every N hours`` (also ``mins``, ``hour``), with ``synchronized``
  or ``from HH:MM to HH:MM``. Slots are aligned as ``synchronized`` aligns them: on
  midnight, or on the range's start; a slot name is its time.
- ``every day HH:MM``, ``every monday HH:MM``, ``every mon,wed,fri HH:MM``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_INTERVAL = re.compile(
    r"every\s+(\d+)\s+(minutes?|mins?|hours?)"
    r"(?:\s+(synchronized)|\s+from\s+(\d\d):(\d\d)\s+to\s+(\d\d):(\d\d))?"
)
_DAILY = re.compile(r"every\s+([a-z,\s]+?)\s+(\d\d):(\d\d)")
_DAY = datetime.timedelta(days=1)


def _day_number(name: str) -> int:
    for number, day in enumerate(_DAYS):
        if name == day or (len(name) >= 3 and day.startswith(name)):
            return number
    raise ValueError(f"{name!r} is not a day of the week")


@dataclass(frozen=True)
class Schedule:
    """One parsed schedule: an interval within a daily range, or times on some days of the week."""

    text: str
    every: datetime.timedelta | None = None  # an interval...
    start: datetime.timedelta = datetime.timedelta(0)  # ...from this time of day
    end: datetime.timedelta = _DAY - datetime.timedelta(microseconds=1)  # ...to this one
    days: frozenset[int] = frozenset()  # or these weekdays, at start
    shortest: datetime.timedelta = _DAY  # the shortest gap between two slots

    def latest(self, now: datetime.datetime) -> datetime.datetime | None:
        """The last slot at or before now (naive UTC), within the past 8 days; None when none."""
        midnight = datetime.datetime.combine(now.date(), datetime.time())
        for back in range(8):
            day = midnight - back * _DAY
            slot = self._last_of_day(day, now)
            if slot is not None:
                return slot
        return None

    def next(self, now: datetime.datetime) -> datetime.datetime | None:
        """The first slot after now (naive UTC)."""
        midnight = datetime.datetime.combine(now.date(), datetime.time())
        for ahead in range(8):
            day = midnight + ahead * _DAY
            for slot in self._slots_of_day(day):
                if slot > now:
                    return slot
        return None

    def _slots_of_day(self, day: datetime.datetime) -> list[datetime.datetime]:
        if self.every is None:
            return [day + self.start] if day.weekday() in self.days else []
        first, last = day + self.start, day + self.end
        count = int((last - first) / self.every) + 1
        return [first + i * self.every for i in range(count)]

    def _last_of_day(self, day: datetime.datetime, now: datetime.datetime) -> datetime.datetime | None:
        if self.every is None:
            slot = day + self.start
            return slot if day.weekday() in self.days and slot <= now else None
        first, last = day + self.start, min(day + self.end, now)
        if last < first:
            return None
        return first + int((last - first) / self.every) * self.every


def _time(hours: str, minutes: str, text: str) -> datetime.timedelta:
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59:
        raise ValueError(f"schedule {text!r}: {hours}:{minutes} is not a time of day")
    return datetime.timedelta(hours=h, minutes=m)


def parse(text: str) -> Schedule:
    """The schedule a cron.yaml ``schedule:`` line describes; ValueError for what is not supported."""
    if not isinstance(text, str):
        raise TypeError(f"a schedule is a string such as 'every 5 minutes', got {text!r}")
    normal = " ".join(text.lower().split())
    match = _INTERVAL.fullmatch(normal)
    if match is not None:
        count = int(match.group(1))
        unit = datetime.timedelta(hours=1) if match.group(2).startswith("hour") else datetime.timedelta(minutes=1)
        every = count * unit
        if count < 1 or every > _DAY:
            raise ValueError(f"schedule {text!r}: the interval must be from 1 minute to 24 hours")
        if match.group(4) is None:
            return Schedule(text, every=every, shortest=every)
        start = _time(match.group(4), match.group(5), text)
        end = _time(match.group(6), match.group(7), text)
        if end < start:
            raise ValueError(f"schedule {text!r}: a range that crosses midnight is not supported")
        return Schedule(text, every=every, start=start, end=end, shortest=every)
    match = _DAILY.fullmatch(normal)
    if match is not None:
        names = [n.strip() for n in match.group(1).split(",") if n.strip()]
        days = frozenset(range(7)) if names == ["day"] else frozenset(_day_number(n) for n in names)
        gap = _DAY if len(days) > 1 or names == ["day"] else 7 * _DAY
        return Schedule(text, start=_time(match.group(2), match.group(3), text), days=days, shortest=gap)
    raise ValueError(
        f"schedule {text!r} is not supported: use 'every N minutes', 'every N hours [synchronized | from HH:MM to "
        "HH:MM]', 'every day HH:MM' or 'every monday[,wednesday] HH:MM'"
    )
