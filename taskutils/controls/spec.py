"""What a controlled task carries in its ``X-Taskutils-Controls`` header, and how long a lease lasts.

The call side writes it (``controls.call``), the run side reads it (``controls.run``).
It is JSON: ``u`` / ``d``: a unique / debounce key and the run's token; ``l``: a lease
key, how many may hold it and for how long; ``r``: a rate key, N and the period;
``s``: a start slot the rate bucket reserved; ``p``: how many times the run was put
back; ``q``: what a put-back task must keep (retry options, target, deadline). With
keys, the payload is signed for what the header holds at the call (``scope``): changing
or removing those fields fails the signature. ``s`` and ``p``, which change when a run
is put back, are not covered: whoever can post tasks can change only when a run starts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

HEADER = "X-Taskutils-Controls"
ENVIRON_KEY = "HTTP_X_TASKUTILS_CONTROLS"
CRON_PATH = "/cron/taskutils-periodic"  # the route mount() serves for taskutils.periodic's jobs

DEFAULT_DEADLINE = 600.0  # seconds: App Engine's request deadline for a push task (automatic scaling)
MAX_MARGIN = 60.0
MIN_MARGIN = 5.0


def margin_for(deadline: float) -> float:
    """A lease's margin beyond the run's deadline: a tenth of it, between 5 seconds and a minute."""
    return min(MAX_MARGIN, max(MIN_MARGIN, deadline / 10))


def lease_for(options: Mapping[str, Any]) -> float:
    """Seconds a lease lasts: the task's deadline (``dispatch_deadline_usec``, else 10 minutes) plus its margin.

    App Engine ends a task request at its deadline, so a live run never outlives its lease.
    """
    usec = options.get("dispatch_deadline_usec")
    deadline = usec / 1e6 if usec else DEFAULT_DEADLINE
    return deadline + margin_for(deadline)


def queue_kwargs(options: Mapping[str, Any]) -> dict[str, Any]:
    """The task options a run put back must keep: retry options, target and deadline, as JSON-able values."""
    kept: dict[str, Any] = {}
    retry = options.get("retry_options")
    if retry is not None:
        fields = ("task_retry_limit", "task_age_limit", "min_backoff_seconds", "max_backoff_seconds", "max_doublings")
        kept["retry"] = {f: getattr(retry, f) for f in fields if getattr(retry, f, None) is not None}
    if options.get("target"):
        kept["target"] = options["target"]
    if options.get("dispatch_deadline_usec"):
        kept["deadline"] = options["dispatch_deadline_usec"]
    return kept


def dumps(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, separators=(",", ":"), ensure_ascii=True)


_MUTABLE = ("p", "s")  # changed when a run is put back


def scope(text: str, signed_for: str) -> str:
    """What a controlled task's payload is signed for: ``signed_for`` (its URL path, or its handle's
    scope) bound to the fields of its header ``text`` that the call fixed; ValueError when malformed."""
    fixed = {name: value for name, value in loads(text).items() if name not in _MUTABLE}
    digest = hashlib.sha256(dumps(dict(sorted(fixed.items()))).encode("ascii")).hexdigest()[:32]
    return f"controls {digest} {signed_for}"


def loads(text: str) -> dict[str, Any]:
    spec = json.loads(text)
    if not isinstance(spec, dict):
        raise ValueError("not a JSON object")
    return spec
