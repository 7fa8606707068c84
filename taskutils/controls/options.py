"""The control options of ``task()``: ``unique``, ``debounce``, ``exclusive``, ``concurrency``, ``key``, ``rate``.

A leaf module: it checks the options when decorating and turns them into one
``Controls`` record that the call path (``controls.call``) and the run path
(``controls.run``) read. It imports nothing above it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

OPTIONS = frozenset(("unique", "debounce", "exclusive", "concurrency", "key", "rate"))

KeyFn = Callable[..., str]

_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|m|h)\s*")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DEBOUNCE = 30 * 24 * 3600  # a countdown App Engine takes


@dataclass(frozen=True)
class Controls:
    """The control options of one task function, checked."""

    unique: bool | KeyFn = False
    debounce: float | None = None
    exclusive: bool | KeyFn = False
    concurrency: int | None = None
    key: KeyFn | None = None
    rate: tuple[int, float] | None = None  # (starts, per seconds)

    @property
    def at_call(self) -> bool:
        """True when a call must read Datastore before it adds a task (unique, debounce)."""
        return bool(self.unique) or self.debounce is not None

    @property
    def limit(self) -> int | None:
        """How many runs of one key may hold a lease at once: 1 for exclusive, N for concurrency."""
        if self.exclusive:
            return 1
        return self.concurrency


def _key_option(name: str, value: object) -> bool | KeyFn:
    if value is True or value is False:
        return value
    if callable(value):
        return value  # type: ignore[return-value]
    raise TypeError(f"task option {name}= must be True, False or a key function returning a string, got {value!r}")


def parse_rate(value: object) -> tuple[int, float]:
    """``"N/s"``, ``"N/m"`` or ``"N/h"`` as (N, seconds); TypeError otherwise."""
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match.group(1)) < 1:
        raise TypeError(f'task option rate= must be "N/s", "N/m" or "N/h" with N >= 1, got {value!r}')
    return int(match.group(1)), _PERIODS[match.group(2)]


def controls_of(options: Mapping[str, Any]) -> Controls | None:
    """The checked controls among task options (None when there are none); TypeError for bad ones."""
    given = {name: options[name] for name in OPTIONS if options.get(name) is not None and options[name] is not False}
    if not given:
        return None
    unique = _key_option("unique", given.get("unique", False))
    exclusive = _key_option("exclusive", given.get("exclusive", False))
    debounce = given.get("debounce")
    if debounce is not None:
        if isinstance(debounce, bool) or not isinstance(debounce, (int, float)) or not math.isfinite(debounce):
            raise TypeError(f"task option debounce= must be a number of seconds, got {debounce!r}")
        if not 0 < debounce <= MAX_DEBOUNCE:
            raise TypeError(f"task option debounce= must be more than 0 and at most 30 days, got {debounce!r}")
        debounce = float(debounce)
    concurrency = given.get("concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)):
        raise TypeError(f"task option concurrency= must be a whole number of runs, got {concurrency!r}")
    if concurrency is not None and concurrency < 1:
        raise TypeError(f"task option concurrency= must be at least 1, got {concurrency!r}")
    key = given.get("key")
    if key is not None and not callable(key):
        raise TypeError(f"task option key= must be a key function returning a string, got {key!r}")
    rate = parse_rate(given["rate"]) if "rate" in given else None
    if unique and debounce is not None:
        raise TypeError("task options unique= and debounce= contradict each other: debounce already coalesces calls")
    if exclusive and concurrency is not None:
        raise TypeError("task options exclusive= and concurrency= contradict each other: exclusive is concurrency=1")
    if callable(exclusive) and key is not None:
        raise TypeError("task options exclusive= and key= both give a key function: give one")
    return Controls(unique, debounce, exclusive, concurrency, key, rate)


def check_combination(options: Mapping[str, Any], controls: Controls) -> None:
    """Task options that cannot go with these controls: TypeError."""
    if controls.at_call and options.get("name"):
        raise TypeError("a named task is already added once: name= cannot go with unique= or debounce=")
    if controls.debounce is not None and ("countdown" in options or "eta" in options):
        raise TypeError("debounce= sets when the run starts: it cannot go with countdown= or eta=")
