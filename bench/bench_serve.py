"""``serve`` on I/O-bound tasks against a bare WSGI app, same server, same client, same concurrency.

Run from the repository root with the installed package:

    python bench/bench_serve.py            # 21 rounds
    python bench/bench_serve.py --quick    # 5 rounds, a smoke run

One :class:`taskutils.local.LocalServer` (what ``python -m taskutils serve``
runs) on a free loopback port, running up to ``CONCURRENCY`` tasks at once. In
alternating rounds:

- tasks: ``.map`` adds ``NUMBER`` tasks in one batch, each sleeping 10 ms; timed
  from all of them queued to all of them run (the stub's scheduler picks them,
  the server's dispatcher posts them, the handler checks and runs them);
- bare: ``CONCURRENCY`` threads post ``NUMBER`` requests in all, through the
  server's own dispatcher, to a bare WSGI app on the same server that reads the
  body, sleeps 10 ms and answers 200.

The ratio is tasks/s over requests/s, the median of the per-round ratios;
the target is at least 0.8.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from taskutils import task

from benchwork import Countdown

CONCURRENCY = 8
NUMBER = 200
SLEEP = 0.010
TARGET = 0.8


countdown = Countdown()


@task
def io_bound(n: int) -> None:
    """A task that waits on I/O for 10 ms."""
    time.sleep(SLEEP)
    countdown.tick()


def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The baseline: read the body, wait 10 ms, answer 200."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    time.sleep(SLEEP)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"OK\n"]


def rows(rounds: int) -> list[tuple[Any, ...]]:
    """The comparison, as ``(name, ratio, target, met, tasks/s, req/s, "tasks/s", "req/s")``."""
    from taskutils.local import LocalServer

    server = LocalServer(bare_app, port=0, concurrency=CONCURRENCY).start()
    try:
        dispatcher = server.dispatcher
        assert dispatcher is not None
        body = io_bound._build((0,), {}).payload  # the same signed body a task carries
        headers = [
            ("content-type", "application/octet-stream"),
            ("X-AppEngine-QueueName", "default"),
            ("X-AppEngine-TaskName", "bare"),
            ("X-AppEngine-TaskRetryCount", "0"),
            ("Content-Length", str(len(body))),
        ]

        def tasks() -> float:
            countdown.expect(NUMBER)
            io_bound.map(range(NUMBER))  # one BulkAdd: the scheduler may start as they arrive
            queued = time.perf_counter()
            if not countdown.done.wait(120):
                raise RuntimeError("the local server did not run every task")
            return time.perf_counter() - queued

        def bare() -> float:
            left = iter(range(NUMBER))
            lock = threading.Lock()
            failures: list[str] = []

            def client() -> None:
                while True:
                    with lock:
                        if next(left, None) is None:
                            return
                    answer = dispatcher.add_request("POST", "/bare", headers, body, "0.1.0.2")
                    if not str(answer.status).startswith("200"):
                        failures.append(str(answer.status))

            clients = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
            began = time.perf_counter()
            for thread in clients:
                thread.start()
            for thread in clients:
                thread.join()
            took = time.perf_counter() - began
            if failures:
                raise RuntimeError(f"the bare app answered {failures[0]}")
            return took

        sides = {"tasks": tasks, "bare": bare}
        times: dict[str, list[float]] = {"tasks": [], "bare": []}
        for side in sides.values():  # warm up, untimed
            side()
        for n in range(rounds):
            order = ["tasks", "bare"] if n % 2 == 0 else ["bare", "tasks"]
            for name in order:
                times[name].append(sides[name]())
    finally:
        server.stop()
    ratio = statistics.median(b / a for a, b in zip(times["tasks"], times["bare"], strict=True))
    return [
        (
            f"`serve`: tasks sleeping 10 ms / a bare WSGI app sleeping 10 ms, "
            f"same server and client, {CONCURRENCY} at once",
            ratio,
            f"≥ {TARGET}",
            ratio >= TARGET,
            NUMBER / statistics.median(times["tasks"]),
            NUMBER / statistics.median(times["bare"]),
            "tasks/s",
            "req/s",
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="rounds (default 21)")
    parser.add_argument("--quick", action="store_true", help="5 rounds: a smoke run, not figures to quote")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)
    try:
        [(name, ratio, target, met, tasks_per_s, requests_per_s, _, _)] = rows(5 if args.quick else args.rounds)
    finally:
        logging.disable(logging.NOTSET)
    print(f"{name}: {ratio:.2f} (target {target}: {'met' if met else 'MISSED'})")
    print(f"  tasks: {tasks_per_s:.0f}/s, bare app: {requests_per_s:.0f} req/s")
    return 0 if met else 1


if __name__ == "__main__":
    import bench_serve  # the tasks must live in an importable module, not in __main__

    sys.exit(bench_serve.main())
