"""Every exception taskutils raises or honours, in one place."""

from __future__ import annotations


class TaskError(Exception):
    """Raised when taskutils cannot do what was asked; the base of its own errors."""


class PermanentTaskFailure(TaskError):
    """Raised by a task to drop it for good: the queue will not retry it."""


class RetryTaskException(TaskError):
    """Raised by a task to have the queue retry it, without a traceback in the log."""


class TaskOptionError(TaskError, TypeError, ValueError):
    """Raised when decorating with a task option that is unknown, of the wrong type or out of range."""


class NoApiProxyError(TaskError, RuntimeError):
    """Raised when a task is added where no App Engine API is available (not on App Engine, serve or the testbed)."""


class QueueUnavailableError(TaskError, RuntimeError):
    """Raised when the cloud backend cannot reach Cloud Tasks (or its emulator) to add a task: nothing was added."""


class PayloadError(TaskError):
    """Raised when a task's payload cannot be built at the call site."""


class UnpicklableArgumentError(PayloadError, TypeError):
    """Raised when a task's callable or one of its arguments cannot be pickled."""


class PayloadTooLargeError(PayloadError, ValueError):
    """Raised when a task's payload is larger than taskutils can carry."""


class SignatureError(TaskError):
    """Raised when a request's payload is unsigned, forged, tampered or for another URL."""


class CorruptPayloadError(TaskError):
    """Raised when a verified payload cannot be decoded: the task is dropped."""


class MissingTaskCodeError(TaskError):
    """Raised when a task's code cannot be imported, e.g. while a deploy is in flight."""


class SpilledPayloadMissingError(TaskError):
    """Raised when a spilled payload's Datastore entities are gone."""


class TaskFailedError(TaskError):
    """Raised by the test helpers when a drained task answered with a failure."""


class StorageInUseError(TaskError):
    """Raised when a local server's storage folder is already used by another running server."""


class ResultError(PermanentTaskFailure):
    """Raised when a submitted task's return value cannot be pickled or kept: the run fails for good."""


class TaskCancelledError(TaskError):
    """Raised by ``result()`` of a handle or group that was cancelled."""


class TaskRunError(TaskError):
    """Raised by ``result()`` in place of a task's own exception when that cannot be unpickled."""


class MapQueryError(PermanentTaskFailure):
    """Raised by a ``map_query`` group's results when its function failed for good on an entity (named by key)."""


class BackendError(TaskError, NotImplementedError):
    """Raised when a feature is called on a backend that does not have it."""


class ControlKeyError(TaskError, TypeError):
    """Raised when a controlled call's key cannot be made: an argument with no stable key, or not a string."""


class RunPutBack(TaskError):
    """Raised when a controlled run cannot start now (key held, rate spent) and was put back in its queue."""


class EmulatorMissingError(TaskError, RuntimeError):
    """Raised when an emulator the cloud backend needs locally is not installed; the message names what to install."""


class UntrustedRequestError(TaskError):
    """Raised when a task request's OIDC token is missing or does not prove an allowed sender: answered 403."""


class CertsUnavailableError(TaskError):
    """Raised when the keys that verify OIDC tokens cannot be fetched or read: answered 500, so the task is retried."""
