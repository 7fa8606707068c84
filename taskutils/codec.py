"""The payload codec: pickle a call, frame it, sign it, and undo all three.

A body is one header byte (version in the high nibble, flags in the low one),
then, when signed, a key id and an HMAC-SHA256 over the header, the task's URL
path and the data, then the data: a pickle, or a pointer to a spilled pickle.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle

from .config import KEY_ID_SIZE, KeyRing
from .exc import CorruptPayloadError, SignatureError, UnpicklableArgumentError

VERSION = 1
POINTER = 0x1  # the data is a pointer to a payload spilled to Datastore
SIGNED = 0x2  # a key id and a MAC follow the header byte
BY_URL = 0x4  # the callable is named by the URL; the pickle holds (args, kwargs)
HEADERS = 0x8  # the callable takes the request's headers as ``headers=``

MAC_SIZE = hashlib.sha256().digest_size
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj: object) -> bytes:
    """Pickle obj with the standard pickler when it can, cloudpickle when it must.

    The standard pickler is faster and names importable functions by
    reference; cloudpickle is needed for nested functions, lambdas and
    anything defined in ``__main__``, which a worker could not import.
    """
    try:
        data = pickle.dumps(obj, _PROTOCOL)
    except Exception:
        return cloudpickle.dumps(obj, _PROTOCOL)
    if b"__main__" in data:
        return cloudpickle.dumps(obj, _PROTOCOL)
    return data


def dumps_call(
    task_name: str, func: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> bytes:
    """Pickle a call; ``func=None`` leaves the callable out (it is named by the URL).

    Raises UnpicklableArgumentError naming the task and the offending argument.
    """
    call = (args, kwargs) if func is None else (func, args, kwargs)
    try:
        return dumps(call)
    except Exception as e:
        raise _unpicklable(task_name, func, args, kwargs, e) from e


def _unpicklable(
    task_name: str,
    func: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    error: Exception,
) -> UnpicklableArgumentError:
    suspects: list[tuple[str, object]] = [(f"argument {i}", a) for i, a in enumerate(args)]
    suspects += [(f"argument {name!r}", v) for name, v in kwargs.items()]
    if func is not None:
        suspects.insert(0, ("the callable itself", func))
    for where, value in suspects:
        try:
            cloudpickle.dumps(value, _PROTOCOL)
        except Exception as e:
            return UnpicklableArgumentError(
                f"task {task_name}: {where} ({type(value).__name__}) cannot be pickled: {e}"
            )
    return UnpicklableArgumentError(f"task {task_name}: the call cannot be pickled: {error}")


def loads(data: bytes) -> Any:
    """Unpickle data; only ever called on data whose origin was verified."""
    return pickle.loads(data)


def _mac(secret: bytes, header: int, path: str, data: bytes) -> bytes:
    mac = hmac.new(secret, bytes((header,)), hashlib.sha256)
    mac.update(path.encode("utf-8"))
    mac.update(b"\0")
    mac.update(data)
    return mac.digest()


def frame(path: str, data: bytes, flags: int, keyring: KeyRing) -> bytes:
    """Wrap data for the task at URL path: a header byte, then a signature if keys are set."""
    key = keyring.signing_key
    if key is None:
        return bytes(((VERSION << 4) | flags,)) + data
    header = (VERSION << 4) | flags | SIGNED
    return b"".join((bytes((header,)), key.key_id, _mac(key.secret, header, path, data), data))


def unframe(path: str, body: bytes, keyring: KeyRing) -> tuple[int, bytes]:
    """Check a body posted to URL path and return its flags and data.

    With keys configured, a body must be signed by one of them for this very
    path; the signature is checked in constant time before anything else.
    Raises SignatureError, or CorruptPayloadError for a malformed body.
    """
    if not body:
        raise SignatureError("empty body") if keyring else CorruptPayloadError("empty body")
    header = body[0]
    flags = header & 0xF
    if header >> 4 != VERSION:
        if keyring:
            raise SignatureError(f"unknown payload version {header >> 4}")
        raise CorruptPayloadError(f"unknown payload version {header >> 4}")
    if not keyring:
        if flags & SIGNED:
            return flags, body[1 + KEY_ID_SIZE + MAC_SIZE :]
        return flags, body[1:]
    if not flags & SIGNED:
        raise SignatureError("payload is not signed")
    start = 1 + KEY_ID_SIZE + MAC_SIZE
    if len(body) < start:
        raise SignatureError("payload is truncated")
    key_id = body[1 : 1 + KEY_ID_SIZE]
    key = keyring.find(key_id)
    if key is None:
        raise SignatureError(f"payload is signed with unknown key id {key_id.hex()}")
    data = body[start:]
    if not hmac.compare_digest(body[1 + KEY_ID_SIZE : start], _mac(key.secret, header, path, data)):
        raise SignatureError(f"bad signature (key id {key_id.hex()})")
    return flags, data


def key_id_of(body: bytes) -> str:
    """The key id a body claims, as hex, for the log; '' when unsigned or malformed."""
    if len(body) > KEY_ID_SIZE and body[0] & SIGNED:
        return body[1 : 1 + KEY_ID_SIZE].hex()
    return ""
