"""Keys of controlled runs: the task's URL and its arguments, the same in every process.

A key is never made from pickled bytes (cloudpickle's output differs between
processes and versions): arguments are encoded by a canonical, typed encoding of
str, int, float, bool, None, bytes and tuples, lists and dicts of them. Any
other argument needs a key function (``unique=key_fn``, ``key=key_fn``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from ..exc import ControlKeyError

MAX_READABLE = 300  # characters of a key kept readable in Datastore, for the console


def _encode(value: Any, out: list[bytes]) -> None:
    # bool before int: True is an int too
    if value is None:
        out.append(b"N")
    elif value is True or value is False:
        out.append(b"T" if value else b"F")
    elif type(value) is int:
        out.append(b"i%d;" % value)
    elif type(value) is float:
        out.append(b"f" + repr(value).encode() + b";")
    elif type(value) is str:
        data = value.encode("utf-8", "surrogatepass")
        out.append(b"s%d:" % len(data) + data)
    elif type(value) in (bytes, bytearray):
        out.append(b"b%d:" % len(value) + bytes(value))
    elif type(value) in (tuple, list):
        out.append(b"l%d[" % len(value))
        for item in value:
            _encode(item, out)
        out.append(b"]")
    elif type(value) is dict:
        items = []
        for k, v in value.items():
            encoded: list[bytes] = []
            _encode(k, encoded)
            _encode(v, encoded)
            items.append(b"".join(encoded))
        out.append(b"d%d{" % len(items) + b"".join(sorted(items)) + b"}")
    else:
        raise ControlKeyError(
            f"an argument of type {type(value).__qualname__} has no key that is the same in every process: "
            "give a key function (unique=key_fn or key=key_fn) returning a string"
        )


def canonical(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> bytes:
    """The arguments as bytes that are equal in every process exactly when the arguments are equal."""
    out: list[bytes] = []
    _encode(list(args), out)
    _encode(dict(kwargs), out)
    return b"".join(out)


def digest(text: str | bytes) -> str:
    """A short, fixed-length name for a key: Datastore key names and task names stay small."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:40]


def key_of(
    kind: str,
    url_path: str,
    key_fn: Callable[..., Any] | bool | None,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    with_args: bool = True,
) -> tuple[str, str]:
    """(key name, readable key) of one call for a control kind.

    With a key function, its string is the whole key, shared by every task that gives
    it (a lock across tasks); else the task's URL path and, with ``with_args``, its arguments.
    """
    if callable(key_fn):
        found = key_fn(*args, **kwargs)
        if not isinstance(found, str):
            raise ControlKeyError(f"the key function of {url_path} returned {found!r}, not a string")
        return f"{kind}:{digest('k' + found)}", found[:MAX_READABLE]
    if not with_args:
        return f"{kind}:{digest('u' + url_path)}", url_path
    data = canonical(args, kwargs)
    name = digest(b"a" + url_path.encode() + b"\x00" + data)
    readable = url_path + data[:MAX_READABLE].decode("utf-8", "replace")
    return f"{kind}:{name}", readable[:MAX_READABLE]
