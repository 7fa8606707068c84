"""Handle ids: made at ``submit`` time, carrying what a reader needs before the task has run.

A handle's record is written when its task first runs, so the id itself says that the
app issued it. Forms (ASCII only, lowercase hex, no leading zeros in decimals):

- ``t<due:11><random:24><tag:16>``: a submitted run or a ``then`` callback.
- ``g<due:11><random:24>-<total>-<leaves>-<tag:16>``: a ``submit_map`` group, with its shape.
- ``<group id>.<index>``: a group's child, ``0 <= index < total``.
- 32 hex digits (and ``<that>.<index>``): ids issued by taskutils 0.2, known by their records only.

``due`` is the Unix time (milliseconds, hex) the run was due when it was submitted. ``tag``
is an HMAC-SHA256 of the rest under the first key of the key ring (any key of the ring
verifies, so keys rotate as payload keys do). Without keys it is a plain SHA-256: it tells
a mistyped id from an issued one, but anyone can compute it, so whoever can make the app
look up an id can make it read as "pending".

A submitted task's payload is signed for ``scope(path, handle id, retry limit)``
rather than for its URL alone, so with keys the ``X-Taskutils-Handle`` and
``X-Taskutils-Retry-Limit`` headers cannot be changed on a replayed payload.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import KeyRing, get_keyring
from .exc import SignatureError

HANDLE_KEY = "HTTP_X_TASKUTILS_HANDLE"  # the WSGI key of a submitted task's X-Taskutils-Handle header
LIMIT_KEY = "HTTP_X_TASKUTILS_RETRY_LIMIT"  # its X-Taskutils-Retry-Limit, signed with it
HANDLE_HEADER = "X-Taskutils-Handle"
LIMIT_HEADER = "X-Taskutils-Retry-Limit"
TAG_HEX = 16
_DOMAIN = b"taskutils-handle-id\0"
_DECIMAL = r"(?:0|[1-9][0-9]{0,9})"  # ASCII digits only: "٣" and "²" are not indexes
_TOP = re.compile(r"t([0-9a-f]{11})[0-9a-f]{24}([0-9a-f]{16})", re.ASCII)
_GROUP = re.compile(rf"g([0-9a-f]{{11}})[0-9a-f]{{24}}-({_DECIMAL})-({_DECIMAL})-([0-9a-f]{{16}})", re.ASCII)
_LEGACY = re.compile(r"[0-9a-f]{32}", re.ASCII)
_INDEX = re.compile(_DECIMAL, re.ASCII)


@dataclass(frozen=True)
class HandleId:
    """A parsed handle or group id. ``group`` is set for a child; ``total``/``leaves`` for a new-form group."""

    text: str
    body: str  # what the tag covers
    tag: str  # "" for a 0.2 id
    due: int | None = None  # Unix time in milliseconds; None for a 0.2 id
    group: str | None = None  # a child's group id
    index: int = 0
    total: int | None = None  # None when only the group entity knows (a 0.2 id)
    leaves: int | None = None

    @property
    def legacy(self) -> bool:
        """True for an id taskutils 0.2 issued: no tag, no shape; only its records say it exists."""
        return not self.tag


def _tag(keyring: KeyRing, body: str) -> str:
    key = keyring.signing_key
    data = _DOMAIN + body.encode("ascii")
    if key is None:
        return hashlib.sha256(data).hexdigest()[:TAG_HEX]
    return hmac.new(key.secret, data, hashlib.sha256).hexdigest()[:TAG_HEX]


def _millis(due: float) -> str:
    return f"{min(max(int(due * 1000), 0), 16**11 - 1):011x}"


def _random() -> str:
    return os.urandom(12).hex()


def new_handle_id(due: float) -> str:
    """A new id for a submitted run or a callback due at Unix time ``due``."""
    body = f"t{_millis(due)}{_random()}"
    return body + _tag(get_keyring(), body)


def new_group_id(due: float, total: int, leaves: int) -> str:
    """A new id for a group of ``total`` children over ``leaves`` leaves, due at Unix time ``due``."""
    body = f"g{_millis(due)}{_random()}-{total}-{leaves}-"
    return body + _tag(get_keyring(), body)


def parse(text: object) -> HandleId:
    """The parts of a handle, child or group id; TypeError when not a str, ValueError when malformed."""
    if not isinstance(text, str):
        raise TypeError(f"a handle id is a str, not {type(text).__name__}")
    head, dot, index_text = text.partition(".")
    if dot and not _INDEX.fullmatch(index_text):
        raise ValueError(f"malformed task handle id {text[:80]!r}: a child index is ASCII decimal digits")
    index = int(index_text) if dot else 0
    found = _TOP.fullmatch(head)
    if found is not None:
        if dot:
            raise ValueError(f"malformed task handle id {text[:80]!r}: {head[:80]!r} is not a group id")
        return HandleId(text, head[:-TAG_HEX], found.group(2), int(found.group(1), 16))
    found = _GROUP.fullmatch(head)
    if found is not None:
        total, leaves = int(found.group(2)), int(found.group(3))
        if leaves > total or (leaves == 0) != (total == 0):
            raise ValueError(f"malformed task group id {head[:80]!r}: {leaves} leaves for {total} children")
        if dot and index >= total:
            raise ValueError(f"malformed task handle id {text[:80]!r}: the group has {total} children")
        due = int(found.group(1), 16)
        return HandleId(text, head[:-TAG_HEX], found.group(4), due, head if dot else None, index, total, leaves)
    if _LEGACY.fullmatch(head):
        return HandleId(text, head, "", None, head if dot else None, index)
    raise ValueError(f"malformed task handle id {text[:80]!r}")


def issued(found: HandleId, keyring: KeyRing | None = None) -> bool:
    """True when this app's key ring (or, without keys, the checksum) vouches for the id; True for a 0.2 id."""
    if found.legacy:
        return True
    keyring = get_keyring() if keyring is None else keyring
    data = _DOMAIN + found.body.encode("ascii")
    if not keyring:
        return hmac.compare_digest(found.tag, hashlib.sha256(data).hexdigest()[:TAG_HEX])
    return any(
        hmac.compare_digest(found.tag, hmac.new(key.secret, data, hashlib.sha256).hexdigest()[:TAG_HEX])
        for key in keyring.keys
    )


def scope(path: str, handle_id: str, limit: str | None) -> str:
    """What a submitted task's payload is signed for: its URL path, its handle id and its retry limit.

    A task URL starts with "/", a scope never does, so no payload signed for one passes
    for the other. A 0.2 id's payload was signed for its path alone.
    """
    if _LEGACY.fullmatch(handle_id.partition(".")[0]):
        return path
    return f"handle {handle_id} {limit if limit is not None else '-'} {path}"


def checked_scope(path: str, handle_id: str, limit: str | None) -> str:
    """``scope`` for a request; ValueError when the id is malformed, SignatureError when the app never issued it."""
    found = parse(handle_id)
    if not issued(found):
        raise SignatureError(f"X-Taskutils-Handle {handle_id[:80]!r} is not an id this app issued")
    return path if found.legacy else f"handle {handle_id} {limit if limit is not None else '-'} {path}"


def due(options: Mapping[str, Any]) -> float:
    """When a task added now with these task options is due, as a Unix time (what a new id carries)."""
    eta, now = options.get("eta"), time.time()
    if eta is not None:
        if eta.tzinfo is None:
            eta = eta.replace(tzinfo=datetime.timezone.utc)
        return max(now, eta.timestamp())
    return now + float(options.get("countdown") or 0)


def headers_for(options: Mapping[str, Any], handle_id: str) -> dict[str, str]:
    """The headers a handle's task carries, for a task function with these options."""
    headers = {HANDLE_HEADER: handle_id}
    limit = getattr(options.get("retry_options"), "task_retry_limit", None)
    if limit is not None:
        headers[LIMIT_HEADER] = str(limit)
    return headers


def scope_for(headers: Mapping[str, str]) -> Callable[[str], str]:
    """What a handle's task is signed for, given its headers and then its URL path."""
    handle_id, limit = headers[HANDLE_HEADER], headers.get(LIMIT_HEADER)
    return lambda path: scope(path, handle_id, limit)
