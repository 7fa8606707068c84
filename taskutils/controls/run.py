"""The run side of controls: before a controlled task runs, decide whether it may start now.

``run_controlled`` is the handler's seam. In order: a ``unique`` or ``debounce`` run
that is not the one its key is waiting for (a duplicate delivery, a stale run) is
skipped; a ``rate`` bucket with no token left reserves the run a start slot and puts
it back until then; an ``exclusive`` / ``concurrency`` key that is full puts the run
back with a delay that grows. A run put back is a new task with the same payload and
headers: the original answers 2xx, so the put-back spends no retry and shows as no
failure on its handle. Leases end at the run's deadline plus a margin, so a holder
that died frees its key then; a live one releases it when it finishes.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from .. import backends
from .._sdk import PermanentTaskFailure as DeferredPermanentTaskFailure
from .._sdk import taskqueue
from ..exc import CorruptPayloadError, PermanentTaskFailure, RunPutBack
from . import spec, store

log = logging.getLogger("taskutils.controls")

Call = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]


class TaskInfo(Protocol):
    """What the queue said about the request (``taskutils.handler.TaskInfo``)."""

    @property
    def task_name(self) -> str: ...
    @property
    def queue_name(self) -> str: ...
    @property
    def retry_count(self) -> int: ...


FIRST_DELAY, MAX_DELAY, GROWTH = 0.25, 30.0, 1.5  # seconds before a run put back tries again
RETRY_GRACE = 3600.0  # a unique key stays held this long after a failed attempt, for its retry to come

# Request headers a put-back task does not copy: the queue sets its own.
_NOT_COPIED = ("HTTP_HOST", "HTTP_CONTENT_LENGTH", "HTTP_USER_AGENT", "HTTP_CONNECTION", "HTTP_ACCEPT_ENCODING")
_NOT_COPIED_PREFIXES = ("HTTP_X_APPENGINE_", "HTTP_X_CLOUDTASKS_", "HTTP_X_GOOGLE_", "HTTP_X_FORWARDED_")


def run_controlled(
    header: str,
    environ: dict[str, Any],
    info: TaskInfo,
    body: bytes,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    call: Call,
) -> None:
    """Run call(func, args, kwargs) when its controls let it start; RunPutBack when it was put back for later."""
    try:
        found = spec.loads(header)
    except ValueError as e:
        raise CorruptPayloadError(f"the {spec.HEADER} header is not valid: {e}") from e
    unique, debounce = found.get("u"), found.get("d")
    if unique is not None and not store.transaction(_unique_start, unique):
        log.info("unique run %s is not the one its key waits for (a duplicate delivery): skipped", unique[1])
        return
    if "r" in found:
        _take_rate_token(environ, info, body, found)
    holder = None
    if "l" in found:
        holder = uuid.uuid4().hex
        name, limit, lease, readable = found["l"]
        try:
            acquired = store.transaction(_acquire, name, limit, lease, readable, holder, info.task_name)
        except store.contended():  # too many runs of the key at once for Datastore: try again later
            acquired = False
        if not acquired:
            found.pop("s", None)  # its rate slot is spent: it takes a new one when it comes back
            _put_back(environ, info, body, found, f"its key is held by {limit} run(s)")
    if debounce is not None:  # last: once it says "running", the run runs
        try:
            started = store.transaction(_debounce_start, debounce)
        except BaseException:
            _release_lease(found, holder)
            raise
        if started is None or started is False:
            _release_lease(found, holder)
            if started is None:
                log.info("debounced run %s was superseded or already ran: skipped", debounce[1])
                return
            found.pop("s", None)
            _put_back(environ, info, body, found, "its debounce key is still running")
        headers = kwargs.get("headers")  # includeheaders=True: the request's, not the call's
        args, kwargs = store.unseal(f"debounce/{debounce[0]}", str(started))
        if headers is not None:
            kwargs = {**kwargs, "headers": headers}
    try:
        call(func, args, kwargs)
    except BaseException as error:
        final = _is_final(error, found, info.retry_count)
        _finish(found, holder, failed=True, final=final)
        raise
    _finish(found, holder, failed=False, final=True)


def _finish(found: dict[str, Any], holder: str | None, failed: bool, final: bool) -> None:
    """Release what the run held; failures here are logged, never the run's outcome."""
    try:
        if holder is not None:
            store.transaction(_release, found["l"][0], holder)
        if "u" in found:
            store.transaction(_unique_end, found["u"], final)
        if "d" in found:
            store.transaction(_debounce_end, found["d"], failed and not final)
    except Exception:
        log.exception("could not release the controls of a run; its leases end on their own")


def _release_lease(found: dict[str, Any], holder: str | None) -> None:
    """Give back a lease taken for a run that will not run now."""
    if holder is not None:
        try:
            store.transaction(_release, found["l"][0], holder)
        except Exception:
            log.exception("could not release a lease; it ends on its own")


def _is_final(error: BaseException, found: dict[str, Any], retry_count: int) -> bool:
    """True when the queue will not run this task again."""
    if isinstance(error, (PermanentTaskFailure, DeferredPermanentTaskFailure)):
        return True
    limit = found.get("rl")
    return limit is not None and retry_count >= int(limit)


# -- unique -------------------------------------------------------------------------------


def _unique_start(unique: list[Any]) -> bool:
    name, token, lease = unique
    marker = store.State(store.UNIQUE_KIND, name)
    state = marker.read()
    if state.get("h") != token:
        return False
    state["until"] = max(state.get("until", 0), store.now() + lease)  # held while it may run
    marker.write()
    return True


def _unique_end(unique: list[Any], final: bool) -> None:
    name, token, lease = unique
    marker = store.State(store.UNIQUE_KIND, name)
    state = marker.read()
    if state.get("h") != token:
        return
    if final:
        marker.delete()
    else:  # it will be retried: the key stays held for the retry
        state["until"] = store.now() + RETRY_GRACE + lease
        marker.write()


# -- debounce -----------------------------------------------------------------------------


def _debounce_start(debounce: list[Any]) -> str | bool | None:
    """The sealed call to run; False when another run of the key is still running; None when this one is stale."""
    name, token, lease = debounce
    entity = store.State(store.DEBOUNCE_KIND, name)
    state = entity.read()
    now = store.now()
    if state.get("p") != token:
        return None
    running = state.get("r")
    if running is not None and running != token and state.get("ru", 0) > now:
        return False
    state["r"], state["ru"], state["p"] = token, now + lease, None
    entity.write()
    return str(state["c"])


def _debounce_end(debounce: list[Any], retry: bool) -> None:
    name, token, _ = debounce
    entity = store.State(store.DEBOUNCE_KIND, name)
    state = entity.read()
    if state.get("r") == token:
        state["r"] = None
        if retry and not state.get("p"):  # its retry is the run its calls wait for
            state["p"], state["pu"] = token, store.now() + RETRY_GRACE + spec.DEFAULT_DEADLINE
    if not state.get("p") and not state.get("r"):
        entity.delete()
    elif entity.exists:
        entity.write()


# -- exclusive / concurrency --------------------------------------------------------------


def _acquire(name: str, limit: int, lease: float, readable: str, holder: str, task_name: str) -> bool:
    entity = store.State(store.LEASE_KIND, name)
    state = entity.read()
    now = store.now()
    holders = {h: v for h, v in state.get("h", {}).items() if v[0] > now}
    if len(holders) >= limit:
        if len(holders) != len(state.get("h", {})):
            state["h"] = holders
            entity.write()
        return False
    holders[holder] = [now + lease, task_name, now]
    entity.state = {"h": holders, "n": limit}
    entity.write(readable)
    return True


def _release(name: str, holder: str) -> None:
    entity = store.State(store.LEASE_KIND, name)
    state = entity.read()
    holders = state.get("h", {})
    if holder not in holders:
        return
    del holders[holder]
    now = store.now()
    if not any(v[0] > now for v in holders.values()):
        entity.delete()
    else:
        entity.write()


def holders() -> list[dict[str, Any]]:
    """Every lease held now: key, holder task, since and until (epoch seconds), for the console."""
    now = store.now()
    found = []
    for _, readable, state in store.all_of(store.LEASE_KIND):
        for until, task_name, since in state.get("h", {}).values():
            if until > now:
                found.append(
                    {"key": readable, "task": task_name, "since": since, "until": until, "limit": state.get("n")}
                )
    return sorted(found, key=lambda h: (str(h["key"]), h["since"]))


# -- rate ---------------------------------------------------------------------------------


def _take_rate_token(environ: dict[str, Any], info: TaskInfo, body: bytes, found: dict[str, Any]) -> None:
    """Start now if the bucket has a token (or this run holds a reserved slot); else reserve one and put back."""
    name, n, period = found["r"]
    if "s" in found:
        if store.now() <= float(found["s"]) + float(period) / int(n):
            return  # its start was reserved and counted when it was put back
        del found["s"]  # the queue brought it more than a token late: it takes a new one, so starts never bunch up
    try:
        slot = store.transaction(_reserve, name, int(n), float(period))
    except store.contended():
        _put_back(environ, info, body, found, "its rate key is contended")
    if slot is not None:
        found["s"] = slot
        _put_back(environ, info, body, found, f"rate {n} per {period:g} s spent", delay=slot - store.now())


def _reserve(name: str, n: int, period: float) -> float | None:
    """A token bucket of one token refilled every period/n seconds, as a generic cell rate algorithm:
    None when the token is there now, else the start time reserved for this run.

    With no burst, no window of one period ever sees more than n starts.
    """
    entity = store.State(store.RATE_KIND, name)
    state = entity.read()
    now = store.now()
    tat = max(float(state.get("t", 0.0)), now)  # when the next token is there
    entity.state = {"t": tat + period / n}
    entity.write()
    return None if tat <= now else tat


# -- putting a run back -------------------------------------------------------------------


def _put_back(
    environ: dict[str, Any], info: TaskInfo, body: bytes, found: dict[str, Any], why: str, delay: float | None = None
) -> NoReturn:
    """Add the run again, for later, with the same payload and headers; then RunPutBack."""
    times = int(found.get("p", 0))
    if delay is None:
        delay = min(MAX_DELAY, FIRST_DELAY * GROWTH**times) * random.uniform(0.8, 1.2)
    found = {**found, "p": times + 1}
    headers = {
        _header_name(name): value
        for name, value in environ.items()
        if name.startswith("HTTP_")
        and name not in _NOT_COPIED
        and name != spec.ENVIRON_KEY
        and not name.startswith(_NOT_COPIED_PREFIXES)
    }
    headers["Content-Type"] = environ.get("CONTENT_TYPE") or "application/octet-stream"
    headers[spec.HEADER] = spec.dumps(found)
    kept = found.get("q", {})
    kwargs: dict[str, Any] = {}
    if "retry" in kept:
        kwargs["retry_options"] = taskqueue.TaskRetryOptions(**kept["retry"])
    if "target" in kept:
        kwargs["target"] = kept["target"]
    if "deadline" in kept:
        kwargs["dispatch_deadline_usec"] = kept["deadline"]
    url = environ.get("PATH_INFO", "")
    if environ.get("QUERY_STRING"):
        url += "?" + environ["QUERY_STRING"]
    queue = info.queue_name or "default"
    backends.queue(queue).add_task(  # the backend in use: the taskqueue SDK's queue, or Cloud Tasks'
        taskqueue.Task(payload=body, url=url, headers=headers, countdown=max(0.0, delay), **kwargs)
    )
    raise RunPutBack(f"put back for {max(0.0, delay):.2f} s: {why}")


def _header_name(environ_key: str) -> str:
    return "-".join(part.capitalize() for part in environ_key[5:].split("_"))
