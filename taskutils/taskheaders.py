"""What App Engine sends beside a task's own headers, for ``serve`` and the test drain to send too.

App Engine's push queues add, to every task request, ``User-Agent:
AppEngine-Google; (+http://code.google.com/appengine)`` (after the task's own
User-Agent, when it set one) and, on a retry, ``X-AppEngine-TaskRetryReason``
(why the last attempt failed) beside ``X-AppEngine-TaskPreviousResponse``. A
task's own ``X-AppEngine-FailFast`` header is passed on as it was set.
"""

from __future__ import annotations

USER_AGENT = "AppEngine-Google; (+http://code.google.com/appengine)"
RETRY_REASON = "X-AppEngine-TaskRetryReason"
FAIL_FAST = "X-AppEngine-FailFast"


def user_agent(own: str | None = None) -> str:
    """The User-Agent of a task request: the task's own, if it set one, then App Engine's."""
    return f"{own} {USER_AGENT}" if own else USER_AGENT


def answered(status: int) -> str:
    """The retry reason after an attempt the app answered with a status other than 2xx."""
    return f"HTTP {status}"


def deadline_exceeded(seconds: float) -> str:
    """The retry reason after an attempt that had no answer within its deadline."""
    return f"deadline exceeded: no answer within {seconds:g} s"


def unreachable(error: BaseException) -> str:
    """The retry reason after an attempt that could not reach the app."""
    return f"no answer: {type(error).__name__}"
