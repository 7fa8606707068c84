"""The payload codec: pickle a call, frame it, sign it, and undo all three.

A body is one header byte (version in the high nibble, flags in the low one),
then, when signed, a key id and an HMAC-SHA256 over the header, the task's URL
path and the data, then the data: a pickle, or a pointer to a spilled pickle.
Nothing is unpickled before the signature has been checked.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle

from .config import KEY_ID_SIZE, KeyRing
from .exc import CorruptPayloadError, PayloadTooLargeError, SignatureError, UnpicklableArgumentError

log = logging.getLogger("taskutils")

VERSION = 1
POINTER = 0x1  # the data is a pointer to a payload spilled to Datastore
SIGNED = 0x2  # a key id and a MAC follow the header byte
BY_URL = 0x4  # the callable is named by the URL; the pickle holds (args, kwargs)
HEADERS = 0x8  # the callable takes the request's headers as ``headers=``

MAC_SIZE = hashlib.sha256().digest_size
SIGNED_PREFIX = 1 + KEY_ID_SIZE + MAC_SIZE

MAX_PAYLOAD = 64 * 1024 * 1024  # the largest pickled call taskutils carries (spilled to Datastore)
MAX_TRANSACTIONAL_PAYLOAD = 9 * 1024 * 1024  # Datastore commits at most 10 MiB per transaction

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_checked_unsigned = False  # whether this process has looked for App Engine to warn about unsigned payloads


# Values that pickle as themselves: a pickle of nothing else names no module at all.
_ATOMS = frozenset((bytes, str, int, float, bool, type(None)))
_FLAT_LIMIT = 32  # look at this many arguments at most before handing over to _MainDetector


class _NeedsCloudpickle(Exception):
    """Raised inside _MainDetector when the pickle would name something in ``__main__``."""


class _MainDetector(pickle.Pickler):
    """The standard pickler, stopped at the first object it would name in ``__main__``.

    ``reducer_override`` sees every object except None, booleans and exact
    int, float, bytes, str, dict, set, frozenset, list and tuple, so it sees
    each function, class and instance that a pickle could name by module.
    """

    def reducer_override(self, obj: Any) -> Any:
        if getattr(obj, "__module__", None) == "__main__":
            raise _NeedsCloudpickle
        return NotImplemented


def _flat(obj: object) -> bool:
    """True when obj is a call named by its URL, ``(args, kwargs)``, whose arguments are all atoms."""
    if type(obj) is not tuple or len(obj) != 2:
        return False  # a call that carries its callable goes through _MainDetector
    args, kwargs = obj
    if type(args) is not tuple or type(kwargs) is not dict or len(args) + len(kwargs) > _FLAT_LIMIT:
        return False
    for value in args:
        if type(value) not in _ATOMS:
            return False
    for value in kwargs.values():
        if type(value) not in _ATOMS:
            return False
    return True


def dumps(obj: object) -> bytes:
    """Pickle obj with the standard pickler when it can, cloudpickle when it must.

    The standard pickler is faster and names importable functions by
    reference; cloudpickle is needed for nested functions, lambdas and
    anything defined in ``__main__``, which a worker could not import. A call
    with plain arguments is pickled at once; anything else goes through
    _MainDetector, which notices ``__main__`` while pickling, at no cost per
    byte of data.
    """
    if _flat(obj):
        try:
            return pickle.dumps(obj, _PROTOCOL)
        except Exception:
            return cloudpickle.dumps(obj, _PROTOCOL)
    buffer = io.BytesIO()
    try:
        _MainDetector(buffer, _PROTOCOL).dump(obj)
    except Exception:  # _NeedsCloudpickle, or what the standard pickler cannot do (closures, lambdas)
        return cloudpickle.dumps(obj, _PROTOCOL)
    return buffer.getvalue()


def dumps_call(
    task_name: str,
    func: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    transactional: bool = False,
) -> bytes:
    """Pickle a call; ``func=None`` leaves the callable out (it is named by the URL).

    Raises UnpicklableArgumentError, or PayloadTooLargeError when the pickle is
    over what taskutils carries (less inside a transaction), naming the task
    and the offending argument.
    """
    call = (args, kwargs) if func is None else (func, args, kwargs)
    try:
        data = dumps(call)
    except Exception as e:
        raise _unpicklable(task_name, func, args, kwargs, e) from e
    limit = MAX_TRANSACTIONAL_PAYLOAD if transactional else MAX_PAYLOAD
    if len(data) > limit:
        raise _too_large(task_name, func, args, kwargs, len(data), limit, transactional)
    return data


def _suspects(
    func: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> list[tuple[str, object]]:
    suspects: list[tuple[str, object]] = [(f"argument {i}", a) for i, a in enumerate(args)]
    suspects += [(f"argument {name!r}", v) for name, v in kwargs.items()]
    if func is not None:
        suspects.insert(0, ("the callable itself", func))
    return suspects


def _unpicklable(
    task_name: str,
    func: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    error: Exception,
) -> UnpicklableArgumentError:
    for where, value in _suspects(func, args, kwargs):
        try:
            cloudpickle.dumps(value, _PROTOCOL)
        except Exception as e:
            return UnpicklableArgumentError(
                f"task {task_name}: {where} ({type(value).__name__}) cannot be pickled: {e}"
            )
    return UnpicklableArgumentError(f"task {task_name}: the call cannot be pickled: {error}")


def _too_large(
    task_name: str,
    func: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    size: int,
    limit: int,
    transactional: bool,
) -> PayloadTooLargeError:
    where = " inside a transaction" if transactional else ""
    message = f"task {task_name}: payload of {size} bytes is over the {limit} bytes taskutils carries{where}"
    sizes = [(len(dumps(value)), where, value) for where, value in _suspects(func, args, kwargs)]
    if sizes:
        biggest, name, value = max(sizes, key=lambda s: s[0])
        message += f"; the largest part is {name} ({type(value).__name__}, {biggest} bytes pickled)"
    return PayloadTooLargeError(message)


def loads(data: bytes) -> Any:
    """Unpickle data; only ever called on data whose origin was verified."""
    return pickle.loads(data)


def _mac(secret: bytes, header: int, path: str, data: bytes) -> bytes:
    # The path is length-prefixed so that no (path, data) pair can pass for another.
    raw_path = path.encode("utf-8", "surrogatepass")
    mac = hmac.new(secret, bytes((header,)), hashlib.sha256)
    mac.update(len(raw_path).to_bytes(4, "big"))
    mac.update(raw_path)
    mac.update(data)
    return mac.digest()


def warn_if_unsigned_in_production() -> None:
    """Warn once per process when tasks run unsigned on App Engine or ``dev_appserver.py`` (looked up once)."""
    global _checked_unsigned
    if _checked_unsigned:
        return
    _checked_unsigned = True
    where = os.environ.get("GAE_ENV")
    if where == "standard":
        log.warning(
            "taskutils has no signing keys: task payloads are unsigned, and the task handler "
            "trusts anyone who can send X-AppEngine-* headers, which includes every project "
            "member. Configure a key ring: see 'Trust and signing keys' in the taskutils docs (docs/trust.md)."
        )
    elif where == "localdev":
        log.warning(
            "taskutils has no signing keys: under dev_appserver.py task payloads are unsigned, and "
            "the task handler runs any pickle posted with X-AppEngine-* headers by whoever can reach "
            "the server. Configure a key ring (see 'Trust and signing keys' in the taskutils docs, "
            "docs/trust.md), or run `python -m taskutils serve`, which always signs."
        )


def frame(path: str, data: bytes, flags: int, keyring: KeyRing) -> bytes:
    """Wrap data for the task at URL path: a header byte, then a signature if keys are set."""
    key = keyring.signing_key
    if key is None:
        if not _checked_unsigned:
            warn_if_unsigned_in_production()
        return bytes(((VERSION << 4) | flags,)) + data
    header = (VERSION << 4) | flags | SIGNED
    return b"".join((bytes((header,)), key.key_id, _mac(key.secret, header, path, data), data))


def unframe(path: str, body: bytes, keyring: KeyRing) -> tuple[int, bytes]:
    """Check a body posted to URL path and return its flags and data.

    With keys configured, a body must be signed by one of them for this very
    path; the signature is checked in constant time before anything else.
    Raises SignatureError, or CorruptPayloadError for a malformed body when
    signing is off.
    """
    if not keyring:
        if not _checked_unsigned:
            warn_if_unsigned_in_production()
        if not body:
            raise CorruptPayloadError("empty body")
        header = body[0]
        if header >> 4 != VERSION:
            raise CorruptPayloadError(f"unknown payload version {header >> 4}")
        return header & 0xF, body[SIGNED_PREFIX if header & SIGNED else 1 :]
    if not body:
        raise SignatureError("empty body")
    header = body[0]
    if header >> 4 != VERSION:
        raise SignatureError(f"unknown payload version {header >> 4}")
    if not header & SIGNED:
        raise SignatureError("payload is not signed")
    if len(body) < SIGNED_PREFIX:
        raise SignatureError("payload is truncated")
    key_id = body[1 : 1 + KEY_ID_SIZE]
    keys = keyring.find(key_id)
    if not keys:
        raise SignatureError(f"payload is signed with key id {key_id.hex()}, which is not in the key ring")
    data = body[SIGNED_PREFIX:]
    mac = body[1 + KEY_ID_SIZE : SIGNED_PREFIX]
    for key in keys:  # more than one only when two secrets' ids collide
        if hmac.compare_digest(mac, _mac(key.secret, header, path, data)):
            return header & 0xF, data
    raise SignatureError(f"bad signature (key id {key_id.hex()})")


def key_id_of(body: bytes) -> str:
    """The key id a body claims, as hex, for the log; '' when unsigned or malformed."""
    if len(body) > KEY_ID_SIZE and body[0] & SIGNED:
        return body[1 : 1 + KEY_ID_SIZE].hex()
    return ""
