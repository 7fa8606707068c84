"""A queue's ``rate`` and ``bucket_size`` from queue.yaml, enforced as App Engine does: a token bucket.

Each queue declared in queue.yaml gets a bucket holding at most ``bucket_size``
tokens (5 when not given), full at start and refilled at ``rate`` tokens a
second. Each attempt sent, a retry included, takes one token; a queue with an
empty bucket waits for the next token. ``rate: 0`` pauses the queue. Queues
that queue.yaml does not declare (all of them, without a queue.yaml) are not
throttled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.appengine.api import queueinfo
from google.appengine.api.taskqueue import taskqueue_stub

DEFAULT_BUCKET_SIZE = taskqueue_stub.DEFAULT_BUCKET_SIZE  # App Engine's, when queue.yaml gives none


@dataclass
class TokenBucket:
    """At most ``size`` tokens, full at first, refilled at ``rate`` tokens a second; ``rate`` 0 is always empty."""

    rate: float
    size: int
    tokens: float = 0.0
    at: float | None = None  # when tokens was last brought up to date

    def __post_init__(self) -> None:
        self.size = max(1, self.size)
        if self.at is None:
            self.tokens = float(self.size) if self.rate > 0 else 0.0

    def _refill(self, now: float) -> None:
        if self.at is not None and now > self.at:
            self.tokens = min(float(self.size), self.tokens + (now - self.at) * self.rate)
        self.at = now if self.at is None else max(self.at, now)

    def ready_at(self, now: float) -> float:
        """When the next token is there: now if one is, infinity on a paused queue."""
        self._refill(now)
        if self.tokens >= 1.0:
            return now
        if self.rate <= 0:
            return float("inf")
        return now + (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        """Take one token (the caller saw ``ready_at(now) <= now``)."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - 1.0)


def queue_buckets(stub: taskqueue_stub.TaskQueueServiceStub) -> dict[str, TokenBucket]:
    """A fresh token bucket for each push queue queue.yaml declares (none without a queue.yaml)."""
    parser = stub._GetGroup()._queue_yaml_parser
    info: Any = parser() if parser else None
    buckets = {}
    for entry in (info.queue if info and info.queue else []) or []:
        if entry.mode == "pull" or entry.rate is None:
            continue
        size = int(entry.bucket_size) if entry.bucket_size else DEFAULT_BUCKET_SIZE
        buckets[str(entry.name)] = TokenBucket(queueinfo.ParseRate(entry.rate), size)
    return buckets
