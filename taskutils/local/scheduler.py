"""Running queued tasks side by side, each within its deadline, with App Engine's retry rules.

Google's ``_BackgroundTaskScheduler`` runs one task at a time: it sends a task,
waits for the answer, then deletes it (2xx) or postpones it with backoff. The
:class:`ConcurrentScheduler` keeps Google's queues, wake-up logic, executor (the
request App Engine would send) and ``Retry`` rules, and changes one thing: each
due task is handed to a pool of worker threads, up to ``concurrency`` in flight,
at most a queue's ``max_concurrent_requests``, and no faster than its queue.yaml
``rate`` and ``bucket_size`` allow (:mod:`.throttle`). A task in flight stays in
its queue, unchanged (a crash leaves it queued); the scheduler only skips it.
When its answer comes, the worker deletes or postpones it exactly as Google's
loop does. An attempt has the task's ``dispatch_deadline_usec``, else the
default deadline; past it the attempt has failed and is retried.

Google's stub wakes its scheduler for an added task only when that task is the
oldest of its queue; with a task in flight (still queued, and older) that never
holds, and the new task would wait for the running one to end. Every add wakes
this scheduler, so a task starts as soon as it is due and a slot is free.
"""

from __future__ import annotations

import collections
import logging
import queue as queue_module
import threading
import time
from dataclasses import dataclass
from typing import Any

from google.appengine.api.taskqueue import taskqueue_service_bytes_pb2 as taskqueue_service_pb2
from google.appengine.api.taskqueue import taskqueue_stub
from google.appengine.api.taskqueue.taskqueue_stub import _SecToUsec, _UsecToSec

from .dispatch import DISPATCH_TIMEOUT, HTTPDispatcher
from .throttle import TokenBucket

log = logging.getLogger("taskutils.local.queue")

DEFAULT_CONCURRENCY = 8
_PULL = taskqueue_stub.QUEUE_MODE.PULL
_PUSH = taskqueue_stub.QUEUE_MODE.PUSH
_ADDED = taskqueue_service_pb2.TaskQueueServiceError.OK
_NEVER = float("inf")


@dataclass
class Tally:
    """What the scheduler did since it started."""

    succeeded: int = 0  # attempts answered 2xx: tasks done
    failed: int = 0  # attempts that did not succeed
    retried: int = 0  # failed attempts put back with backoff
    dropped: int = 0  # failed attempts that were the task's last allowed


def _name(task: Any) -> str:
    name = task.task_name
    return name.decode() if isinstance(name, bytes) else str(name)


class ConcurrentScheduler(taskqueue_stub._BackgroundTaskScheduler):
    """Google's task scheduler, sending due tasks to worker threads instead of one at a time."""

    def __init__(
        self,
        stub: taskqueue_stub.TaskQueueServiceStub,
        dispatcher: HTTPDispatcher,
        lock: threading.RLock,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        deadline: float = DISPATCH_TIMEOUT,
        limits: dict[str, int] | None = None,
        buckets: dict[str, TokenBucket] | None = None,
    ) -> None:
        google = stub._task_scheduler
        super().__init__(google._group, google.task_executor, google.default_retry_seconds)
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.dispatcher = dispatcher
        self.concurrency = concurrency
        self.deadline = deadline
        self.limits = dict(limits or {})
        self.buckets = dict(buckets or {})
        self.tally = Tally()
        self.crashed = threading.Event()
        self._stub_lock = lock
        self._state = threading.Condition()
        self._claim_lock = threading.Lock()
        self._running: dict[tuple[str, str], float] = {}
        self._per_queue: collections.Counter[str] = collections.Counter()
        self._dispatching = True
        self._work: queue_module.SimpleQueue[tuple[Any, Any, float] | None] = queue_module.SimpleQueue()
        self._workers: list[threading.Thread] = []
        stub._task_scheduler = self  # StartBackgroundExecution runs our MainLoop
        self._wake_on_every_add()

    def _wake_on_every_add(self) -> None:
        """Wake the scheduler for each push task added, not only for one older than every task queued."""
        group = self._group
        add = group._NonTransactionalBulkAdd

        def add_and_wake(request: Any, response: Any, now: Any) -> None:
            add(request, response, now)
            added = [
                r.eta_usec
                for r, result in zip(request.add_request, response.taskresult, strict=False)
                if result.result == _ADDED and r.mode == _PUSH
            ]
            if added:
                self.UpdateNextEventTime(_UsecToSec(min(added)))

        group._NonTransactionalBulkAdd = add_and_wake

    def start_workers(self) -> None:
        """Start the worker threads (after the app is loaded: it may patch ``threading``)."""
        for n in range(self.concurrency):
            worker = threading.Thread(target=self._worker, name=f"taskutils-task-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def MainLoop(self) -> None:  # noqa: N802 - Google's name
        try:
            super().MainLoop()
        except BaseException:
            self.crashed.set()
            log.critical("the task scheduler crashed: no task will run any more", exc_info=True)

    def running(self) -> list[tuple[str, str]]:
        """``(queue, task_name)`` of every task in flight."""
        with self._state:
            return list(self._running)

    # -- picking due tasks ------------------------------------------------------------------

    def _ProcessQueues(self) -> None:  # noqa: N802 - Google's name
        with self._wakeup_lock:
            self._next_wakeup = taskqueue_stub.INF
        while not self._should_exit:
            item = self._claim()
            if item is None:
                return  # woken again by an add, the next ETA, or a retry put back
            self._work.put(item)

    def _claim(self) -> tuple[Any, Any, float] | None:
        """Take the next due task for one free slot; None when no slot is free or no task is due."""
        with self._claim_lock:
            with self._state:
                if not self._dispatching or len(self._running) >= self.concurrency:
                    return None
            now = self._get_time()
            picked, wake = self._next_due(now)
            if picked is None:
                if wake < _NEVER:
                    self.UpdateNextEventTime(wake)
                return None
            queue, task = picked
            bucket = self.buckets.get(queue.queue_name)
            if bucket is not None:
                bucket.take(now)
            if task.retry_count == 0:
                task.first_try_usec = _SecToUsec(now)
            if task.HasField("dispatch_deadline_usec") and task.dispatch_deadline_usec > 0:
                deadline = _UsecToSec(task.dispatch_deadline_usec)
            else:
                deadline = self.deadline
            with self._state:
                self._running[(queue.queue_name, _name(task))] = time.monotonic()
                self._per_queue[queue.queue_name] += 1
            return queue, task, deadline

    def _next_due(self, now: float) -> tuple[tuple[Any, Any] | None, float]:
        """The due task with the lowest ETA, not in flight, in a queue with room and a token.

        With none, the time (epoch seconds) when one may be: the next ETA or the
        next token of a throttled queue, whichever comes first (infinity: never).
        """
        best: tuple[Any, Any] | None = None
        best_eta = 0
        wake = _NEVER
        with self._stub_lock:  # an add may create a queue while we walk them
            queues = list(self._group._queues.values())
        with self._state:
            running = set(self._running)
            full = {q for q, n in self._per_queue.items() if n >= self.limits.get(q, n + 1)}
        for queue in queues:
            if not queue._sorted_by_eta or queue.queue_mode == _PULL or queue.paused or queue.queue_name in full:
                continue  # (an empty queue is skipped without taking its lock: thousands of queues may exist)
            first = None
            with queue._lock:
                for eta, name, task in queue._sorted_by_eta:
                    if (queue.queue_name, name) not in running:
                        first = eta, task
                        break
            if first is None:
                continue
            eta, task = first
            if _UsecToSec(eta) > now:
                wake = min(wake, _UsecToSec(eta))
                continue
            bucket = self.buckets.get(queue.queue_name)
            if bucket is not None:
                ready = bucket.ready_at(now)
                if ready > now:
                    wake = min(wake, ready)
                    continue
            if best is None or eta < best_eta:
                best, best_eta = (queue, task), eta
        return best, wake

    # -- running them ----------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            item = self._work.get()
            while item is not None:
                self._run(*item)
                item = self._claim()  # the next due task, straight away: no hop through the scheduler
            if self._should_exit:
                return

    def _run(self, queue: Any, task: Any, deadline: float) -> None:
        code = 0
        try:
            self.dispatcher.set_deadline(deadline)
            code = self.task_executor.ExecuteTask(task, queue)
        except BaseException:
            log.exception("could not send task %s of queue %s", _name(task), queue.queue_name)
        try:
            self._answered(queue, task, code)
        except BaseException:
            log.exception("could not reschedule task %s of queue %s", _name(task), queue.queue_name)
        finally:
            with self._state:
                self._running.pop((queue.queue_name, _name(task)), None)
                self._per_queue[queue.queue_name] -= 1
                if not self._per_queue[queue.queue_name]:
                    del self._per_queue[queue.queue_name]
                self._state.notify_all()

    def _answered(self, queue: Any, task: Any, code: int) -> None:
        """Delete the task after a 2xx; otherwise retry it with backoff, or drop it after its last retry."""
        name = _name(task)
        if code:
            task.runlog.response_code = code
        else:
            log.error("an error occurred while sending task %s (%s) in queue %s", name, task.url, queue.queue_name)
        now = self._get_time()
        outcome, backoff, age = "gone", 0, 0
        with queue._lock:
            pos = queue._LocateTaskByName(name)
            if pos is not None and queue._sorted_by_name[pos][1] is task:  # not deleted or purged meanwhile
                if 200 <= code < 300:
                    queue._DeleteNoAcquireLock(name)
                    outcome = "ok"
                else:
                    retry = taskqueue_stub.Retry(task, queue)
                    age = _SecToUsec(now) - task.first_try_usec
                    if retry.CanRetry(task.retry_count + 1, age):
                        backoff = retry.CalculateBackoffUsec(task.retry_count + 1)
                        queue._PostponeTaskNoAcquireLock(task, _SecToUsec(now) + backoff)  # counts the retry
                        outcome = "retry"
                    else:
                        queue._DeleteNoAcquireLock(name)
                        outcome = "dropped"
        with self._state:
            if 200 <= code < 300:
                self.tally.succeeded += 1
            else:
                self.tally.failed += 1
                self.tally.retried += outcome == "retry"
                self.tally.dropped += outcome == "dropped"
        if outcome in ("ok", "dropped"):
            self.dispatcher.records.forget(name)
        if outcome == "retry":
            self.UpdateNextEventTime(_UsecToSec(_SecToUsec(now) + backoff))
            log.warning("Task %s failed to execute. This task will retry in %.3f seconds", name, _UsecToSec(backoff))
        elif outcome == "dropped":
            log.warning(
                "Task %s failed to execute. The task has no remaining retries. "
                "Failing permanently after %d retries and %d seconds",
                name,
                task.retry_count,
                _UsecToSec(age),
            )

    # -- stopping --------------------------------------------------------------------------

    def stop_dispatching(self) -> None:
        """Send no more tasks; the ones in flight carry on."""
        with self._state:
            self._dispatching = False

    def wait_idle(self, timeout: float) -> list[tuple[str, str]]:
        """Wait up to timeout seconds for the tasks in flight; return those still running."""
        with self._state:
            self._state.wait_for(lambda: not self._running, max(0.0, timeout))
            return list(self._running)

    def Shutdown(self) -> None:  # noqa: N802 - Google's name
        """Stop the scheduler thread and the idle workers."""
        self.stop_dispatching()
        super().Shutdown()
        for _ in self._workers:
            self._work.put(None)
