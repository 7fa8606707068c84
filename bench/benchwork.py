"""The work both sides of the benchmark enqueue and run: one module-level function."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from taskutils import task


def work(account_id: int, day: str, *, limit: float = 1.0) -> int:
    """A small, importable task body: what deferred can pickle by reference."""
    return account_id + len(day) + int(limit)


def item(n: int) -> int:
    """The body .map fans out: one item, one task."""
    return n + 1


work_task = task(work)
item_task = task(item)


class Countdown:
    """Counts tasks run on the server's threads; ``done`` is set when the expected number ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._left = 0
        self.done = threading.Event()

    def expect(self, count: int) -> None:
        with self._lock:
            self._left = count
            self.done.clear()

    def tick(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                self.done.set()


countdown = Countdown()


@task
def served(n: int) -> None:
    """The body run through the local server: count one more task done."""
    countdown.tick()


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The smallest WSGI app that reads a POSTed body and answers 200, for the server baseline."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"OK\n"]
