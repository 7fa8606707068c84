"""A queued task's call, readable: the function and a truncated repr of its arguments.

The body is checked against the server's key ring, exactly as the handler
checks it; a body that fails the check is described, never read. Even a body
that passes is read inertly (:mod:`.inert`): viewing a task never imports,
calls or constructs anything its pickle names, so it runs none of the task's
code. Keys and signatures are never part of what is shown.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass

from .. import codec
from ..config import get_keyring, settings
from ..exc import TaskError
from . import inert

MAX_REPR = 2000

_repr = reprlib.Repr()
_repr.maxstring = 200
_repr.maxother = 200
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 20
_repr.maxlevel = 4


@dataclass(frozen=True)
class Call:
    """What a task will run, or why that cannot be shown."""

    function: str
    arguments: str = ""
    signed: bool = False
    spilled: bool = False
    problem: str = ""


def function_of(url: str) -> str:
    """The function a task URL names, e.g. ``mymodule.somefunction`` for ``/_ah/task/mymodule/somefunction``."""
    path = url.split("?", 1)[0]
    route = settings.route
    if path.startswith(route + "/"):
        module, _, rest = path[len(route) + 1 :].partition("/")
        return f"{module}.{rest.replace('/', '.')}" if rest else module
    return path


def _arguments(args: tuple[object, ...], kwargs: dict[str, object]) -> str:
    parts = [_repr.repr(a) for a in args] + [f"{k}={_repr.repr(v)}" for k, v in kwargs.items()]
    text = "(" + ", ".join(parts) + ")"
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 1] + "…"


def decode(url: str, body: bytes) -> Call:
    """Verify and unpickle a task's body; describe the call, or why it cannot be read."""
    path = url.split("?", 1)[0]
    named = function_of(url)
    try:
        flags, data = codec.unframe(path, body, get_keyring())
    except TaskError as e:
        return Call(named, problem=f"not shown: {e}")
    signed = bool(body and body[0] & codec.SIGNED)
    spilled = bool(flags & codec.POINTER)
    try:
        if spilled:
            from .. import spill

            data = spill.load(data, signed=signed)
    except Exception as e:  # noqa: BLE001 - any failure to read is shown, never raised
        return Call(named, signed=signed, spilled=spilled, problem=f"cannot decode: {type(e).__name__}: {e}")
    try:
        call = inert.read(data)
        if flags & codec.BY_URL:
            args, kwargs = call
            function = named
        else:
            func, args, kwargs = call
            function = inert.name_of(func)
        if not isinstance(args, tuple) or not isinstance(kwargs, dict):
            raise TypeError("not a call")
    except Exception as e:  # noqa: BLE001 - any failure to read is shown, never raised
        names = ", ".join(inert.globals_named(data))
        problem = f"arguments not shown ({type(e).__name__}: {e})" + (f"; the pickle names {names}" if names else "")
        return Call(named, signed=signed, spilled=spilled, problem=problem)
    if flags & codec.HEADERS:
        kwargs = {**kwargs, "headers": "<the request's headers>"}
    return Call(function, _arguments(tuple(args), dict(kwargs)), signed=signed, spilled=spilled)
